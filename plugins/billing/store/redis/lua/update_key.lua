-- update_key: change an API key in one step (see Store.update_key).
-- KEYS: 1 api key, 2 ledger.
-- ARGV: 1 now, 2 who ('' for the system), 3 quota: '' keep, 'unlimited' drop it, else the
--       new remaining quota (a `credit` of the difference on the key's account),
--       4.. field/value pairs to set (name, status, models, ips, group, expires_at).
-- Returns the key hash. A revoked key cannot change; a key cannot drop its quota while
-- requests in flight hold some of it.
-- requires: ledger
local kk = KEYS[1]
local k = redis.call('HMGET', kk, 'id', 'status', 'quota', 'balance', 'reserved')
local id = k[1]
if not id then return fail('unknown key') end
if k[2] == 'revoked' then return fail('key ' .. id .. ' is revoked: it cannot be changed') end
local op = ARGV[3]
if op == 'unlimited' then
  if (k[3] or '') ~= '' then
    local reserved = num(k[5])
    if reserved ~= 0 then
      return fail('key ' .. id .. ' has ' .. int(reserved) .. ' of its quota held by requests in flight:'
        .. ' make it unlimited once they have ended')
    end
    redis.call('HSET', kk, 'quota', '')
  end
elseif op ~= '' then
  local quota = tonumber(op)
  local d = quota - num(k[4])
  redis.call('HSET', kk, 'quota', int(quota))
  if d ~= 0 then
    redis.call('HINCRBY', kk, 'balance', int(d))
    local extra = {note = 'key quota set to ' .. int(quota)}
    if ARGV[2] ~= '' then extra.by = ARGV[2] end
    ledger(KEYS[2], 'key:' .. id, 'credit', d, 0, ARGV[1], '', extra)
  end
end
if #ARGV > 3 then redis.call('HSET', kk, unpack(ARGV, 4)) end
return redis.call('HGETALL', kk)
