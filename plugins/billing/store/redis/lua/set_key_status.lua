-- set_key_status: KEYS: 1 api key. ARGV: 1 status. Returns the key hash.
-- Revocation is final: a revoked key can only be "revoked" again.
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return fail('unknown key') end
if current == 'revoked' and ARGV[1] ~= 'revoked' then
  return fail('key ' .. redis.call('HGET', KEYS[1], 'id') .. ' is revoked')
end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
return redis.call('HGETALL', KEYS[1])
