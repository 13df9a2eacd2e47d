-- save_prices: append the next price version if the caller's base is the current head
-- (docs/billing-rules.md §9): a stale base changes nothing and reports the head instead.
-- KEYS: 1 head counter, 2 versions hash (number -> record JSON); both under {prices}.
-- ARGV: 1 base, 2 the record JSON of version base + 1 (written as given).
-- Returns {1, number} when saved, {0, head} when the base was stale.
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
if head ~= tonumber(ARGV[1]) then return {0, int(head)} end
local number = head + 1
redis.call('HSET', KEYS[2], int(number), ARGV[2])
redis.call('SET', KEYS[1], int(number))
return {1, int(number)}
