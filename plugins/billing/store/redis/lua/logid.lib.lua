-- Take the next consume-log id from the global counter `seq` and enter it in the global
-- log index `index` as "id:user" (query_logs pages every user's rows together by it).
-- Returns the id, and as a second value the same as a '%d' string.
local function next_log_id(seq, index, user)
  local id = redis.call('INCR', seq)
  local s = int(id)
  redis.call('ZADD', index, s, s .. ':' .. user)
  return id, s
end
