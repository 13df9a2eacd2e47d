-- task_open: write a task and hand its hold to the task, in one atomic step.
-- KEYS: 1 the hold (request id = task id), 2 the task hash, 3 the user's task index.
-- ARGV: 1 task id, 2 created_at (the index score), 3 the task owner ('@task'), 4.. the task's
--       fields as flat pairs.
-- Returns 1, or 0 (nothing written) when the task exists or the hold is not open.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'instance_id', ARGV[3])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
