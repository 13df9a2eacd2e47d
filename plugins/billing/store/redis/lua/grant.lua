-- grant: give a user a subscription; its first period's quota is a `credit` entry.
-- KEYS: 1 user, 2 subscription, 3 user's subscription list, 4 ledger, 5 subscription meta.
-- ARGV: 1 id, 2 plan, 3 quota, 4 period, 5 start, 6 end, 7 models (JSON), 8 now,
--       9 meta (JSON: start, end, period, models) for holds to filter on (a cancellation
--         alone changes it later, moving its end earlier),
--       10 the start of the period current at grant time (the first one credited).
-- Returns the subscription hash.
-- requires: ledger
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('unknown user') end
if redis.call('EXISTS', KEYS[2]) == 1 then return fail('subscription exists: ' .. ARGV[1]) end
local user = redis.call('HGET', KEYS[1], 'name')
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'user', user, 'plan', ARGV[2], 'quota', ARGV[3],
  'period', ARGV[4], 'start', ARGV[5], 'end', ARGV[6], 'period_start', ARGV[10],
  'balance', ARGV[3], 'reserved', 0, 'used', 0, 'models', ARGV[7])
ledger(KEYS[4], 'sub:' .. ARGV[1], 'credit', tonumber(ARGV[3]), 0, ARGV[8], '',
  {note = 'plan ' .. ARGV[2] .. ': first period'})
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[9])
return redis.call('HGETALL', KEYS[2])
