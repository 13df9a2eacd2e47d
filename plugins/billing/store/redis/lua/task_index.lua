-- task_index: the global task indexes (one hash tag, so one script on a Cluster too).
-- KEYS: 1 task id -> user, 2 the due set (next poll), 3 every task by creation.
-- ARGV: 1 'add' (a new task: all three), 'due' (its next poll) or 'done' (no more polls),
--       2 task id, 3 user, 4 next poll, 5 created_at.
local op, id = ARGV[1], ARGV[2]
if op == 'add' then
  redis.call('HSET', KEYS[1], id, ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[5], id)
  redis.call('ZADD', KEYS[2], ARGV[4], id)
elseif op == 'due' then
  redis.call('ZADD', KEYS[2], ARGV[4], id)
else
  redis.call('ZREM', KEYS[2], id)
end
return 1
