-- credit: add an amount (negative for an adjustment) to the wallet, with its ledger entry.
-- KEYS: 1 user, 2 ledger. ARGV: 1 amount, 2 now, 3 note, 4 who made it ('' or absent:
-- the system). Returns the user hash.
-- requires: ledger
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('unknown user') end
local amount = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'balance', int(amount))
local extra = {note = ARGV[3]}
if ARGV[4] and ARGV[4] ~= '' then extra.by = ARGV[4] end
ledger(KEYS[2], 'wallet:' .. redis.call('HGET', KEYS[1], 'name'), 'credit', amount, 0, ARGV[2], '', extra)
return redis.call('HGETALL', KEYS[1])
