-- cancel: end a subscription now (see Store.cancel_subscription).
-- KEYS: 1 subscription, 2 ledger, 3 the user's subscription terms.
-- ARGV: 1 now, 2 the start of its current period ('' if not active), 3 its id,
--       4 its terms with the new end (JSON), 5 the new end (now, or its start if later).
-- It first comes to its current period (as a hold would), then ends. Returns its hash.
-- requires: roll
local sk = KEYS[1]
local s = redis.call('HMGET', sk, 'period_start', 'balance', 'quota', 'id', 'end', 'cancelled_at')
if not s[4] then return fail('unknown subscription ' .. ARGV[3]) end
if s[6] and s[6] ~= '' then return fail('subscription ' .. ARGV[3] .. ' is cancelled already') end
if tonumber(s[5]) <= tonumber(ARGV[1]) then return fail('subscription ' .. ARGV[3] .. ' has ended already') end
local rolled = {}
if roll(s, ARGV[2], ARGV[1], rolled, sk) then
  redis.call('RPUSH', KEYS[2], unpack(rolled))
  redis.call('HSET', sk, 'balance', int(num(s[3])), 'period_start', ARGV[2])
end
redis.call('HSET', sk, 'end', ARGV[5], 'cancelled_at', ARGV[1])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
return redis.call('HGETALL', sk)
