-- log_id: reserve a consume-log id and enter it in the global index before the
-- settlement writes the row, so a crash can leave a gap (skipped on read) but never
-- a row missing from the index.
-- KEYS: 1 log id counter, 2 global log index. ARGV: 1 user. Returns the id.
local id = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], id, id .. ':' .. ARGV[1])
return id
