-- set_user: change a user's group and/or preference.
-- KEYS: 1 user. ARGV: field/value pairs to set. Returns the user hash.
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('unknown user') end
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])
