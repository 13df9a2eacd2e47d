-- hold: check the key and the funding source and reserve, in one atomic step.
-- KEYS: 1 user, 2 hold, 3 api key, 4 user's open-hold set, 5 ledger,
--       6 the user's "open mark dropped" flag (set by `forget`),
--       7 the user's subscription terms (id -> meta JSON; entries are only ever added),
--       with ARGV[11] == '1': 8 the global request index, 9 the global open-users set;
--       then the usable subscriptions (active, model allowed), ordered by (end, id)
-- ARGV: 1 request_id, 2 key_id, 3 amount, 4 preference ('' = the user's own),
--       5 price_version, 6 now, 7 expires_at, 8 instance_id, 9 model,
--       10 how many subscriptions the caller chose the subscription keys from,
--       11 '1' when this script claims the request id in the index and marks the user
--          itself (one server: every key is reachable), '0' when the caller did both
--          first (a Cluster: those indexes live in slots of their own),
--       12.. each subscription's current period start (same order as their keys)
-- Returns {'new', source, subscription id, key amount, remark (1|0)} for a hold made now
-- (the caller knows every other field: it passed them), {'hold', <hold hash as flat
-- pairs>} for one that existed, {'refused', reason, available, needed}, {'stale'}
-- (nothing written) when the user has subscriptions the caller did not know of: it must
-- read the terms and call again, or, when claiming, {'claimed', owner} (no hold made)
-- when another user's request already has this id. `remark` is 1 when a resolver dropped
-- the user's open mark since the caller set it: mark again (never when claiming).
-- requires: roll
local uk, hk, kk, ok, lk = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid, key_id, amount, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[6]

if redis.call('EXISTS', hk) == 1 then
  return {'hold', redis.call('HGETALL', hk)}
end
-- Terms are only added, never changed or removed: the same count means the same set.
-- (Most users have none: that case needs no number conversion.)
local terms = redis.call('HLEN', KEYS[7])
if not (terms == 0 and ARGV[10] == '0') and terms ~= tonumber(ARGV[10]) then
  return {'stale'}
end

-- Each hash is read once, and only the fields this hold needs.
local pref, u = ARGV[4], nil
if pref == '' then
  u = redis.call('HMGET', uk, 'name', 'balance', 'reserved', 'preference')
  pref = u[4]
else
  u = redis.call('HMGET', uk, 'name', 'balance', 'reserved')
end
local kh = redis.call('HMGET', kk, 'user', 'status', 'expires_at', 'quota')
local user, kuser = u[1], kh[1]
if not user or not kuser or kuser ~= user then return {'refused', 'unknown_key', '0', int(amount)} end
if kh[2] ~= 'active' then return {'refused', 'key_disabled', '0', int(amount)} end
local kexp = kh[3]
if kexp and kexp ~= '' and tonumber(kexp) <= tonumber(now) then return {'refused', 'key_expired', '0', int(amount)} end

local limited = (kh[4] or '') ~= ''
if limited then
  local kb = redis.call('HMGET', kk, 'balance', 'reserved')
  local kav = num(kb[1]) - num(kb[2])
  if not (kav > 0 and kav >= amount) then return {'refused', 'insufficient_key_quota', int(kav), int(amount)} end
end

-- Subscriptions come to their current period first; the first that affords the hold
-- (in KEYS order) is the one a subscription pays from, `best` the most any has left.
local sub_pick, pick_id, best = nil, nil, nil
local claim = ARGV[11] == '1'
local first = 8
if claim then first = 10 end
local now_n = tonumber(now)
for i = first, #KEYS do
  local target = ARGV[i - first + 12]
  local s = redis.call('HMGET', KEYS[i], 'period_start', 'balance', 'quota', 'id', 'reserved', 'end')
  -- The caller chose by the terms it remembers; a subscription cancelled since then has
  -- ended by its own `end`, and cannot pay.
  if s[6] and tonumber(s[6]) > now_n then
    local bal, rolled = num(s[2]), {}
    if roll(s, target, now, rolled) then
      local b = int(num(s[3]))
      redis.call('RPUSH', lk, unpack(rolled))
      redis.call('HSET', KEYS[i], 'balance', b, 'period_start', target)
      bal = num(b)
    end
    local av = bal - num(s[5])
    if not sub_pick and av > 0 and av >= amount then sub_pick, pick_id = i, s[4] end
    if best == nil or av > best then best = av end
  end
end

-- The funding source, by preference: subscription_first and wallet_first try both,
-- subscription_only and wallet_only one; a refusal names the first source tried.
local wallet = false
if pref == 'subscription_first' or pref == 'subscription_only' then
  if not sub_pick then
    if pref == 'subscription_first' then
      local wallet_av = num(u[2]) - num(u[3])
      if wallet_av > 0 and wallet_av >= amount then wallet = true
      elseif not best then return {'refused', 'insufficient_wallet', int(wallet_av), int(amount)} end
    end
    if not wallet then return {'refused', 'insufficient_subscription', int(best or 0), int(amount)} end
  end
elseif pref == 'wallet_first' or pref == 'wallet_only' then
  local wallet_av = num(u[2]) - num(u[3])
  if wallet_av > 0 and wallet_av >= amount then wallet = true
  elseif pref == 'wallet_only' or not sub_pick then return {'refused', 'insufficient_wallet', int(wallet_av), int(amount)} end
else
  return fail('unknown preference ' .. tostring(pref))
end

-- The request id names this user in the global index from now on (readers find the hold
-- by it), unless another user's request has it.
if claim and redis.call('HSETNX', KEYS[8], rid, user) == 0 then
  local owner = redis.call('HGET', KEYS[8], rid)
  if owner ~= user then return {'claimed', owner} end
end
local a = int(amount)
local src, sub_id, account = 'wallet', '', 'wallet:' .. user
if wallet then
  redis.call('HINCRBY', uk, 'reserved', a)
else
  src, sub_id = 'subscription', pick_id
  account = 'sub:' .. sub_id
  redis.call('HINCRBY', KEYS[sub_pick], 'reserved', a)
end
-- Ledger entries: JSON objects of strings, built by concatenation (cheaper than a table
-- for cjson) with every string that does not come from this script escaped by cjson.
local tail = ',"k":"hold","b":"0","r":"' .. a .. '","t":' .. encode(now) .. ',"ref":' .. encode(rid) .. '}'
local entry = '{"a":' .. encode(account) .. tail
local key_amount = '0'
if limited then
  key_amount = a
  redis.call('HINCRBY', kk, 'reserved', a)
  redis.call('RPUSH', lk, entry, '{"a":' .. encode('key:' .. key_id) .. tail)
else
  redis.call('RPUSH', lk, entry)
end
redis.call('HSET', hk,
  'request_id', rid, 'user', user, 'key_id', key_id, 'source', src,
  'subscription_id', sub_id, 'amount', a, 'key_amount', key_amount,
  'price_version', ARGV[5], 'instance_id', ARGV[8], 'created_at', now,
  'expires_at', ARGV[7], 'state', 'open', 'model', ARGV[9])
redis.call('SADD', ok, rid)
if claim then
  -- Marked in the same step as the hold: no resolver can drop the mark in between, and
  -- a flag a resolver left from earlier means nothing any more.
  redis.call('SADD', KEYS[9], user)
  redis.call('DEL', KEYS[6])
  return {'new', src, sub_id, key_amount, 0}
end
return {'new', src, sub_id, key_amount, redis.call('DEL', KEYS[6])}
