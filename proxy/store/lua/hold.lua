-- hold: check the key and the funding source and reserve, in one atomic step.
-- KEYS: 1 user, 2 hold, 3 api key, 4 user's open-hold set, 5 ledger,
--       6 the user's "open mark dropped" flag (set by `forget`),
--       7 the user's subscription terms (id -> meta JSON; entries are only ever added),
--       8.. usable subscriptions (active, model allowed), ordered by (end, id)
-- ARGV: 1 request_id, 2 key_id, 3 amount, 4 preference ('' = the user's own),
--       5 price_version, 6 now, 7 expires_at, 8 instance_id, 9 model,
--       10 how many subscriptions the caller chose KEYS 8.. from,
--       11.. each subscription's current period start (same order as KEYS 8..)
-- Returns {'new', source, subscription id, key amount, remark (1|0)} for a hold made now
-- (the caller knows every other field: it passed them), {'hold', <hold hash as flat
-- pairs>} for one that existed, {'refused', reason, available, needed}, or {'stale'}
-- (nothing written) when the user has subscriptions the caller did not know of: it must
-- read the terms and call again. `remark` is 1 when a resolver dropped the user's open
-- mark since the caller set it: mark again.
local uk, hk, kk, ok, lk = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid, key_id, amount, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[6]

if redis.call('EXISTS', hk) == 1 then
  return {'hold', redis.call('HGETALL', hk)}
end
-- Terms are only added, never changed or removed: the same count means the same set.
if redis.call('HLEN', KEYS[7]) ~= tonumber(ARGV[10]) then
  return {'stale'}
end

local function refuse(reason, available)
  return {'refused', reason, int(available), int(amount)}
end

local user = redis.call('HGET', uk, 'name')
local kuser = redis.call('HGET', kk, 'user')
if not user or not kuser or kuser ~= user then return refuse('unknown_key', 0) end
if redis.call('HGET', kk, 'status') ~= 'active' then return refuse('key_disabled', 0) end
local kexp = redis.call('HGET', kk, 'expires_at')
if kexp and kexp ~= '' and tonumber(kexp) <= tonumber(now) then return refuse('key_expired', 0) end

local limited = (redis.call('HGET', kk, 'quota') or '') ~= ''
if limited then
  local kav = num(redis.call('HGET', kk, 'balance')) - num(redis.call('HGET', kk, 'reserved'))
  if not affords(kav, amount) then return refuse('insufficient_key_quota', kav) end
end

local offers = {}
for i = 8, #KEYS do
  rollover(KEYS[i], lk, ARGV[i + 3], now)
  local av = num(redis.call('HGET', KEYS[i], 'balance')) - num(redis.call('HGET', KEYS[i], 'reserved'))
  offers[#offers + 1] = {key = KEYS[i], av = av}
end

local pref = ARGV[4]
if pref == '' then pref = redis.call('HGET', uk, 'preference') end
local orders = {
  subscription_first = {'subscription', 'wallet'}, wallet_first = {'wallet', 'subscription'},
  subscription_only = {'subscription'}, wallet_only = {'wallet'},
}
local order = orders[pref]
if not order then return fail('unknown preference ' .. tostring(pref)) end

local wallet_av = num(redis.call('HGET', uk, 'balance')) - num(redis.call('HGET', uk, 'reserved'))
local chosen, refusal = nil, nil
for _, src in ipairs(order) do
  if src == 'wallet' then
    if affords(wallet_av, amount) then chosen = {src = 'wallet'}; break end
    refusal = refusal or {'insufficient_wallet', wallet_av}
  else
    for _, o in ipairs(offers) do
      if affords(o.av, amount) then chosen = {src = 'subscription', key = o.key}; break end
    end
    if chosen then break end
    if #offers > 0 then
      local best = offers[1].av
      for _, o in ipairs(offers) do if o.av > best then best = o.av end end
      refusal = refusal or {'insufficient_subscription', best}
    end
  end
end
if not chosen then
  refusal = refusal or {'insufficient_subscription', 0}
  return refuse(refusal[1], refusal[2])
end

local sub_id, account = '', 'wallet:' .. user
if chosen.src == 'subscription' then
  sub_id = redis.call('HGET', chosen.key, 'id')
  account = 'sub:' .. sub_id
  redis.call('HINCRBY', chosen.key, 'reserved', int(amount))
else
  redis.call('HINCRBY', uk, 'reserved', int(amount))
end
ledger(lk, account, 'hold', 0, amount, now, rid)
local key_amount = 0
if limited then
  key_amount = amount
  redis.call('HINCRBY', kk, 'reserved', int(amount))
  ledger(lk, 'key:' .. key_id, 'hold', 0, amount, now, rid)
end
redis.call('HSET', hk,
  'request_id', rid, 'user', user, 'key_id', key_id, 'source', chosen.src,
  'subscription_id', sub_id, 'amount', int(amount), 'key_amount', int(key_amount),
  'price_version', ARGV[5], 'instance_id', ARGV[8], 'created_at', now,
  'expires_at', ARGV[7], 'state', 'open', 'model', ARGV[9])
redis.call('SADD', ok, rid)
return {'new', chosen.src, sub_id, int(key_amount), redis.call('DEL', KEYS[6])}
