-- rollover: bring subscriptions to their current period and return them.
-- KEYS: 1 ledger, 2.. subscriptions. ARGV: 1 now, 2.. each one's current period start.
-- Returns one hash (flat pairs) per subscription, in KEYS order.
-- requires: roll
local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    rollover(KEYS[i], KEYS[1], ARGV[i], ARGV[1])
  end
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
