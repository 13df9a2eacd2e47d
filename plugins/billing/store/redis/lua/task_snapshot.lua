-- task_snapshot: one user's tasks and holds, read atomically, for the audit.
-- KEYS: 1 the user's task index, 2 the user's open-hold set, then ARGV[1] task hashes,
--       then hold hashes.
-- Returns {task ids, open hold ids, {task hashes}, {hold hashes}}; the caller retries when
-- the id lists no longer match the KEYS it passed.
local nt = tonumber(ARGV[1])
local tasks, holds = {}, {}
for i = 3, 2 + nt do tasks[#tasks + 1] = redis.call('HGETALL', KEYS[i]) end
for i = 3 + nt, #KEYS do holds[#holds + 1] = redis.call('HGETALL', KEYS[i]) end
return {redis.call('ZRANGE', KEYS[1], 0, -1), redis.call('SMEMBERS', KEYS[2]), tasks, holds}
