-- rollover: bring subscriptions to their current period and return them.
-- KEYS: 1 ledger, 2.. subscriptions. ARGV: 1 now, 2.. each one's current period start.
-- Returns one hash (flat pairs) per subscription, in KEYS order.
-- requires: roll
-- `roll` for a subscription not read yet, its entries and fields written at once.
local function rollover(skey, lkey, target, ts)
  if target == nil or target == '' then return end
  local s = redis.call('HMGET', skey, 'period_start', 'balance', 'quota', 'id')
  local out = {}
  if roll(s, target, ts, out, skey) then
    redis.call('RPUSH', lkey, unpack(out))
    redis.call('HSET', skey, 'balance', int(num(s[3])), 'period_start', target)
  end
end

local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    rollover(KEYS[i], KEYS[1], ARGV[i], ARGV[1])
  end
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
