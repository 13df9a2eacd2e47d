-- ledger_head: a user's wallet balance and the length of their ledger, read together.
-- KEYS: 1 user, 2 ledger. Returns {balance, length}, or {false, 0} for an unknown user.
-- Ledger entries are only ever appended, so entries below that length never change.
return {redis.call('HGET', KEYS[1], 'balance'), redis.call('LLEN', KEYS[2])}
