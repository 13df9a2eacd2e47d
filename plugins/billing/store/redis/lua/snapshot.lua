-- snapshot: everything `audit` needs about one user, read atomically.
-- KEYS: 1 user, 2 ledger, 3 open-hold set, 4 key list, 5 subscription list, 6 log rows,
--       7 upstream used, 8 upstream counts, then ARGV[1] api keys, ARGV[2] subscriptions,
--       and the open holds.
-- Returns {user, ledger, open ids, key ids, subscription ids, {keys}, {subs}, {holds},
--          log row count, upstream used, upstream counts}; the caller retries when the id
-- lists no longer match the KEYS it passed.
local nk, ns = tonumber(ARGV[1]), tonumber(ARGV[2])
local function hashes(from, to)
  local out = {}
  for i = from, to do out[#out + 1] = redis.call('HGETALL', KEYS[i]) end
  return out
end
local first = 9
return {
  redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1),
  redis.call('SMEMBERS', KEYS[3]), redis.call('LRANGE', KEYS[4], 0, -1),
  redis.call('LRANGE', KEYS[5], 0, -1),
  hashes(first, first + nk - 1), hashes(first + nk, first + nk + ns - 1),
  hashes(first + nk + ns, #KEYS),
  redis.call('HLEN', KEYS[6]), redis.call('HGETALL', KEYS[7]), redis.call('HGETALL', KEYS[8]),
}
