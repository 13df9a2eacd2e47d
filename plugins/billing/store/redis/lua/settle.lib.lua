-- The settlement shared by capture, release and expire (prepended to those scripts,
-- after the roll and logid libraries it uses).
-- KEYS: 1 user, 2 hold, 3 api key, 4 subscription (a never-written key when the hold is
--       wallet-funded), 5 user's open-hold set, 6 ledger, 7 log rows, 8 user's log index,
--       9 per-user upstream used, 10 per-user upstream request counts
-- ARGV: 1 now, 2 the subscription's current period start ('' if none), 3 log id, or ''
--       for the script to take one itself (see below), 4 log details: their JSON, as a
--       JSON string literal (the caller escapes it; the row embeds it as it is),
--       5 upstream name, 6 actual charge (capture only), 7 the hold's key id and 8 its
--       subscription id, as the caller believes them, 9 a note for the funding source's
--       ledger entry ('' or absent for none: only hand resolutions have one)
-- KEYS 11 and 12 (only with ARGV[3] == ''): the global log id counter and log index
-- Returns {state, charged, overage, first (1|0)}, or {'stale'} (nothing written) when there
-- is no such hold or its key or subscription is not the one passed: the caller built KEYS
-- from what it remembered of the hold, so it must look the hold up and call again.
--
-- Cost: each redis.call, each field read, each number converted (tonumber, '%d') and each
-- string or table made (the garbage collector pays per byte) costs; so the hold is read
-- once, counters move by HINCRBY (exact beyond 2^53, and no conversion in Lua), and the
-- '%d' strings of the amounts are made once and reused.

-- `neg(s)`: the '%d' string of minus the non-negative integer whose '%d' string is `s`.
local function neg(s)
  if s == '0' then return s end
  return '-' .. s
end

-- Resolve the open hold in KEYS[2] as `state` with ledger entries of `kind`: `charge` is
-- what the request cost. What this writes is the capture rule, `rules.settlement` in
-- plugins/billing/store/rules.py, encoded here because a script cannot call Python (the
-- shared cases of tests/plugins/billing/store/test_capture_rule.py hold the two together):
--   funding entry: a wallet pays the charge; a subscription pays what is left of its period
--     and the rest is an `overage` entry on the wallet, noted; either frees the whole hold;
--     a hand resolution's note (ARGV[9]) goes on it;
--   key entry: only for a key with a quota, the charge and the key's part of the hold;
--   counters: user and key used/requests only when `counts` (a resolution that does not
--     count charges 0, so skipping them writes what the rule does); subscription used by
--     what it paid; upstream counters for a capture naming an upstream.
-- `usage_source` overrides the caller's details in the log row when not nil (orphans only
-- know it here); the key's name fills in when the caller gave none.
local function settle(state, kind, charge, counts, usage_source)
  local uk, hk, kk, lk, now = KEYS[1], KEYS[2], KEYS[3], KEYS[6], ARGV[1]
  local h = redis.call('HMGET', hk, 'state', 'key_id', 'subscription_id', 'request_id', 'user',
    'source', 'amount', 'price_version')
  local st, key_id = h[1], h[2]
  if not st then return {'stale'} end
  if key_id ~= ARGV[7] or h[3] ~= ARGV[8] then return {'stale'} end
  if st ~= 'open' then
    local r = redis.call('HMGET', hk, 'charged', 'overage')
    return {st, int(num(r[1])), int(num(r[2])), 0}
  end
  local rid, user, source = h[4], h[5], h[6]
  -- The hold wrote amount (and key_amount) with '%d'; charge is an integer below 2^53.
  local held = h[7]
  local c = int(charge)
  local upstream = ''
  if state == 'captured' then upstream = ARGV[5] end
  local n = '0'
  if counts then n = '1' end

  -- Ledger entries are JSON objects whose values are all strings, built here by
  -- concatenation (cheaper than a table for cjson): every string that does not come from
  -- this script is escaped by cjson.encode, so they decode to what cjson would have written.
  local now_json, rid_json, key_json = encode(now), encode(rid or ''), encode(key_id)
  local nc, nh = neg(c), neg(held)
  local e1, e2, overage, o = nil, nil, 0, '0'
  if source == 'subscription' then
    local sk, ts = KEYS[4], ARGV[2]
    local s = redis.call('HMGET', sk, 'period_start', 'balance', 'quota', 'id')
    local bal = num(s[2])
    local rolled = {}
    if roll(s, ts, now, rolled, sk) then
      local q = int(num(s[3]))
      redis.call('HSET', sk, 'balance', q, 'period_start', ts)
      redis.call('RPUSH', lk, unpack(rolled))
      bal = num(q)
    end
    local paid = math.min(charge, math.max(bal, 0))
    overage = charge - paid
    local p = int(paid)
    redis.call('HINCRBY', sk, 'balance', neg(p))
    redis.call('HINCRBY', sk, 'reserved', nh)
    redis.call('HINCRBY', sk, 'used', p)
    e1 = '{"a":' .. encode('sub:' .. h[3]) .. ',"k":"' .. kind .. '","b":"' .. neg(p) .. '","r":"' .. nh
      .. '","t":' .. now_json .. ',"ref":' .. rid_json .. ',"c":"' .. c .. '","key":' .. key_json .. ',"n":"' .. n
      .. '","up":' .. encode(upstream) .. '}'
    if overage > 0 then
      o = int(overage)
      redis.call('HINCRBY', uk, 'balance', '-' .. o)
      e2 = '{"a":' .. encode('wallet:' .. user) .. ',"k":"overage","b":"-' .. o .. '","r":"0","t":' .. now_json .. ',"ref":'
        .. rid_json .. ',"note":' .. encode('subscription ' .. h[3] .. ' could not cover ' .. o) .. '}'
    end
  else
    redis.call('HINCRBY', uk, 'balance', nc)
    redis.call('HINCRBY', uk, 'reserved', nh)
    -- The funding source's entry carries what audit needs to recompute the counters:
    -- the charge, the key, whether the request counted, and the upstream it counted for.
    e1 = '{"a":' .. encode('wallet:' .. user) .. ',"k":"' .. kind .. '","b":"' .. nc .. '","r":"' .. nh
      .. '","t":' .. now_json .. ',"ref":' .. rid_json .. ',"c":"' .. c .. '","key":' .. key_json .. ',"n":"' .. n
      .. '","up":' .. encode(upstream) .. '}'
  end
  local note = ARGV[9]
  if note and note ~= '' then
    e1 = string.sub(e1, 1, -2) .. ',"note":' .. encode(note) .. '}'
  end
  if counts then
    redis.call('HINCRBY', uk, 'used', c)
    redis.call('HINCRBY', uk, 'request_count', '1')
  end

  -- The key: its own account when it has a quota, its counters when it exists (every
  -- key hash has a quota field, '' when unlimited).
  local k = redis.call('HMGET', kk, 'quota', 'name')
  local quota = k[1]
  if quota and quota ~= '' then
    local key_held = redis.call('HGET', hk, 'key_amount')
    redis.call('HINCRBY', kk, 'balance', nc)
    redis.call('HINCRBY', kk, 'reserved', neg(key_held))
    local e3 = '{"a":' .. encode('key:' .. key_id) .. ',"k":"' .. kind .. '","b":"' .. nc .. '","r":"'
      .. neg(key_held) .. '","t":' .. now_json .. ',"ref":' .. rid_json .. '}'
    if e2 then redis.call('RPUSH', lk, e1, e2, e3) else redis.call('RPUSH', lk, e1, e3) end
  elseif e2 then
    redis.call('RPUSH', lk, e1, e2)
  else
    redis.call('RPUSH', lk, e1)
  end
  if counts then
    if quota then
      redis.call('HINCRBY', kk, 'used', c)
      redis.call('HINCRBY', kk, 'request_count', '1')
    end
    if upstream ~= '' then
      redis.call('HINCRBY', KEYS[9], upstream, c)
      redis.call('HINCRBY', KEYS[10], upstream, '1')
    end
  end

  redis.call('HSET', hk, 'state', state, 'charged', c, 'overage', o, 'resolved_at', now)
  redis.call('SREM', KEYS[5], rid)
  -- The consume-log id. On a single server the caller passes the global counter and
  -- index as KEYS[11] and KEYS[12], and the id is taken here, in the same atomic step as
  -- the row. On a cluster those keys live in a slot of their own, so the caller reserved
  -- the id beforehand with the log_id script and passes it in ARGV[3].
  local log_id, id_json = ARGV[3], nil
  if log_id == '' then
    local _
    _, log_id = next_log_id(KEYS[11], KEYS[12], user)
    id_json = '"' .. log_id .. '"'
  else
    id_json = encode(log_id)
  end
  -- The row, built like the ledger entries: the same values cjson would have written.
  local src
  if source == 'wallet' then src = '"wallet"'
  elseif source == 'subscription' then src = '"subscription"'
  else src = encode(source) end
  local kname = k[2] or ''
  if kname == '' then kname = '""' else kname = encode(kname) end
  local us = ''
  if usage_source then us = ',"usage_source":"' .. usage_source .. '"' end
  redis.call('HSET', KEYS[7], log_id, '{"id":' .. id_json .. ',"ts":' .. now_json .. ',"request_id":' .. rid_json
    .. ',"user":' .. encode(user) .. ',"key_id":' .. key_json .. ',"source":' .. src .. ',"estimate":"' .. held
    .. '","charge":"' .. c .. '","overage":"' .. o .. '","price_version":' .. encode(h[8]) .. ',"details":'
    .. ARGV[4] .. us .. ',"key_name":' .. kname .. '}')
  redis.call('ZADD', KEYS[8], log_id, log_id)
  return {state, c, o, 1}
end
