-- The settlement shared by capture, release and expire (prepended to those scripts).
-- KEYS: 1 user, 2 hold, 3 api key, 4 subscription (a never-written key when the hold is
--       wallet-funded), 5 user's open-hold set, 6 ledger, 7 log rows, 8 user's log index,
--       9 per-user upstream used, 10 per-user upstream request counts
-- ARGV: 1 now, 2 the subscription's current period start ('' if none), 3 log id, or ''
--       for the script to take one itself (see take_log_id), 4 log details (JSON),
--       5 upstream name, 6 actual charge (capture only), 7 the hold's key id and 8 its
--       subscription id, as the caller believes them
-- KEYS 11 and 12 (only with ARGV[3] == ''): the global log id counter and log index
-- Returns {state, charged, overage, first (1|0)}, or {'stale'} (nothing written) when there
-- is no such hold or its key or subscription is not the one passed: the caller built KEYS
-- from what it remembered of the hold, so it must look the hold up and call again.

-- The consume-log id of this settlement. On a single server the caller passes the global
-- counter and index as KEYS[11] and KEYS[12], and the id is taken here, in the same atomic
-- step as the row. On a cluster those keys live in a slot of their own, so the caller
-- reserved the id beforehand with the log_id script and passes it in ARGV[3].
local function take_log_id(user)
  if ARGV[3] ~= '' then return ARGV[3] end
  return int(next_log_id(KEYS[11], KEYS[12], user))
end

local function resolved(hk)
  local h = redis.call('HMGET', hk, 'state', 'charged', 'overage')
  return {h[1], int(num(h[2])), int(num(h[3])), 0}
end

-- Move the money of one resolution: `kind` is the ledger entry kind and `charge` what
-- the request cost. A subscription pays what is left of its period; the wallet pays the rest.
local function move_money(kind, charge, counts, upstream, now, rid)
  local uk, hk, kk, sk, lk = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6]
  local h = redis.call('HMGET', hk, 'user', 'key_id', 'source', 'subscription_id', 'amount', 'key_amount')
  local user, key_id, source, sub_id = h[1], h[2], h[3], h[4]
  local held, key_held = num(h[5]), num(h[6])
  local overage = 0
  -- The funding source's entry carries what audit needs to recompute the counters:
  -- the charge, the key, whether the request counted, and the upstream it counted for.
  local extra = {c = int(charge), key = key_id, n = counts and '1' or '0', up = upstream}
  if source == 'subscription' then
    rollover(sk, lk, ARGV[2], now)
    local paid = math.min(charge, math.max(num(redis.call('HGET', sk, 'balance')), 0))
    overage = charge - paid
    redis.call('HINCRBY', sk, 'balance', int(-paid))
    redis.call('HINCRBY', sk, 'reserved', int(-held))
    redis.call('HINCRBY', sk, 'used', int(paid))
    ledger(lk, 'sub:' .. sub_id, kind, -paid, -held, now, rid, extra)
    if overage > 0 then
      redis.call('HINCRBY', uk, 'balance', int(-overage))
      ledger(lk, 'wallet:' .. user, 'overage', -overage, 0, now, rid)
    end
  else
    redis.call('HINCRBY', uk, 'balance', int(-charge))
    redis.call('HINCRBY', uk, 'reserved', int(-held))
    ledger(lk, 'wallet:' .. user, kind, -charge, -held, now, rid, extra)
  end
  if (redis.call('HGET', kk, 'quota') or '') ~= '' then
    redis.call('HINCRBY', kk, 'balance', int(-charge))
    redis.call('HINCRBY', kk, 'reserved', int(-key_held))
    ledger(lk, 'key:' .. key_id, kind, -charge, -key_held, now, rid)
  end
  return overage
end

local function bump_counters(charge, upstream)
  redis.call('HINCRBY', KEYS[1], 'used', int(charge))
  redis.call('HINCRBY', KEYS[1], 'request_count', 1)
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HINCRBY', KEYS[3], 'used', int(charge))
    redis.call('HINCRBY', KEYS[3], 'request_count', 1)
  end
  if upstream ~= '' then
    redis.call('HINCRBY', KEYS[9], upstream, int(charge))
    redis.call('HINCRBY', KEYS[10], upstream, 1)
  end
end

-- Resolve the open hold in KEYS[2] as `state` with ledger entries of `kind`.
-- `counts` says whether the request counters move (upstream counters: captures only);
-- `usage_source` overrides the caller's details in the log row when not nil (orphans
-- only know it here); the key's name fills in when the caller gave none.
local function settle(state, kind, charge, counts, usage_source)
  local hk, now, rid = KEYS[2], ARGV[1], nil
  local st = redis.call('HGET', hk, 'state')
  if not st then return {'stale'} end
  local ids = redis.call('HMGET', hk, 'key_id', 'subscription_id')
  if ids[1] ~= ARGV[7] or ids[2] ~= ARGV[8] then return {'stale'} end
  if st ~= 'open' then return resolved(hk) end
  rid = redis.call('HGET', hk, 'request_id')
  local upstream = ''
  if state == 'captured' then upstream = ARGV[5] end
  local overage = move_money(kind, charge, counts, upstream, now, rid)
  if counts then bump_counters(charge, upstream) end
  redis.call('HSET', hk, 'state', state, 'charged', int(charge), 'overage', int(overage), 'resolved_at', now)
  redis.call('SREM', KEYS[5], rid)
  local h = redis.call('HMGET', hk, 'user', 'key_id', 'source', 'amount', 'price_version')
  local log_id = take_log_id(h[1])
  local row = {
    id = log_id, ts = now, request_id = rid, user = h[1], key_id = h[2], source = h[3],
    estimate = h[4], charge = int(charge), overage = int(overage), price_version = h[5],
    details = ARGV[4], usage_source = usage_source,
    key_name = redis.call('HGET', KEYS[3], 'name') or '',
  }
  redis.call('HSET', KEYS[7], log_id, cjson.encode(row))
  redis.call('ZADD', KEYS[8], log_id, log_id)
  return {state, int(charge), int(overage), 1}
end

