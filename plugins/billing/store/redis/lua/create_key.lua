-- create_key: record a key (by hash) for an existing user; a limited key starts with a
-- `credit` of its quota on its own ledger account.
-- KEYS: 1 user, 2 api key, 3 user's key list, 4 ledger.
-- ARGV: 1 key id, 2 quota ('' = unlimited), 3 now, 4.. static field/value pairs.
-- Returns the key hash.
-- requires: ledger
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('unknown user') end
if redis.call('EXISTS', KEYS[2]) == 1 then return fail('key exists: ' .. ARGV[1]) end
local quota = ARGV[2]
local balance = 0
if quota ~= '' then balance = tonumber(quota) end
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'quota', quota, 'balance', int(balance),
  'reserved', 0, 'used', 0, 'request_count', 0, unpack(ARGV, 4))
if quota ~= '' then
  ledger(KEYS[4], 'key:' .. ARGV[1], 'credit', balance, 0, ARGV[3], '', {note = 'key quota'})
end
redis.call('RPUSH', KEYS[3], ARGV[1])
return redis.call('HGETALL', KEYS[2])
