-- task_note: record a poll of an open task and when to poll it next.
-- KEYS: 1 the task hash. ARGV: 1 status, 2 progress, 3 misses, 4 failures, 5 next poll.
-- Returns 1, or 0 (nothing written) when the task is not open.
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'progress', ARGV[2], 'misses', ARGV[3], 'failures', ARGV[4],
  'next_poll_at', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'polls', 1)
return 1
