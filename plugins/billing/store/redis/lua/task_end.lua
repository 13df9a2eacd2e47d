-- task_end: end an open task once. Settle its hold (the settlement every capture and
-- release runs) and mark the task ended, in one atomic step: the compare-and-set that
-- makes a poller and a client's read racing to the end bill the task once.
-- KEYS: 1..10 as settle.lib.lua (KEYS[2] is the task's hold), 11 and 12 the global log id
--       counter and index when ARGV[3] == '' (one server), then, last, the task hash.
-- ARGV: 1..9 as settle.lib.lua (ARGV[6]: the charge), 10 'capture' or 'release',
--       11 the task's final status, 12 why it ended, 13 a note.
-- Returns {'won', hold state, charged, overage, first (1|0)} when this call ended the task
-- (first is 0 when its hold had been resolved some other way); {'ended', hold state,
-- charged, overage} when it had ended already (nothing written); {'unknown'} for no such
-- task; {'stale'} when the hold is not the one the caller described (nothing written).
-- requires: roll
-- requires: logid
-- requires: settle
local tk = KEYS[#KEYS]
local st = redis.call('HGET', tk, 'state')
if not st then return {'unknown'} end
if st ~= 'open' then
  local h = redis.call('HMGET', KEYS[2], 'state', 'charged', 'overage')
  return {'ended', h[1] or '', int(num(h[2])), int(num(h[3]))}
end
local r
if ARGV[10] == 'capture' then
  r = settle('captured', 'capture', tonumber(ARGV[6]), true, nil)
else
  r = settle('released', 'release', 0, false, nil)
end
if r[1] == 'stale' then return r end
redis.call('HSET', tk, 'state', 'ended', 'status', ARGV[11], 'end_reason', ARGV[12], 'charge', r[2],
  'note', ARGV[13], 'ended_at', ARGV[1])
return {'won', r[1], r[2], r[3], r[4]}
