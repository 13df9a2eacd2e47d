-- create_user: a new user with an empty wallet; fails if the name exists.
-- KEYS: 1 user. ARGV: 1 name, 2 group, 3 preference, 4 now. Returns the user hash.
if redis.call('EXISTS', KEYS[1]) == 1 then return fail('user exists: ' .. ARGV[1]) end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'group', ARGV[2], 'preference', ARGV[3],
  'balance', 0, 'reserved', 0, 'used', 0, 'request_count', 0, 'created_at', ARGV[4])
return redis.call('HGETALL', KEYS[1])
