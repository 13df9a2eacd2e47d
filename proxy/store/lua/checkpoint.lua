-- checkpoint: record the charge delivered so far on an open hold.
-- KEYS: 1 hold. ARGV: 1 charge so far. Returns 1 when recorded, 0 when the hold is not open.
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[1])
return 1
