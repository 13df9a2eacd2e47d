-- checkpoint: record the charge delivered so far on an open hold, stamp its touched_at
-- and move its expires_at to now plus the ttl it was taken with (expires_at minus its last
-- sign of life: touched_at, else created_at, so the ttl needs no field of its own).
-- KEYS: 1 hold. ARGV: 1 charge so far, 2 now. Returns 1 when recorded, 0 when the hold is
-- not open.
local h = redis.call('HMGET', KEYS[1], 'state', 'created_at', 'expires_at', 'touched_at')
if h[1] ~= 'open' then return 0 end
local last = h[4]
if not last or last == '' then last = h[2] end
local expires = tonumber(ARGV[2]) + (tonumber(h[3]) - tonumber(last))
-- '%.17g' round-trips a double, as the caller's repr does.
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[1], 'touched_at', ARGV[2], 'expires_at', string.format('%.17g', expires))
return 1
