-- task_claim: take the open tasks due for a poll, each for a lease: its score moves to the
-- lease's end, so no other instance takes it unless this one fails to poll it in time.
-- KEYS: 1 the due set. ARGV: 1 now, 2 the lease's end, 3 at most this many.
-- Returns the task ids taken, soonest due first.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
