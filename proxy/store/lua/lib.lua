-- Helpers shared by every Weir script. RedisStore prepends this file to each script
-- before loading it, because Redis scripts cannot `require` one another.
--
-- Numbers: Lua 5.1 numbers are doubles, exact for integers up to 2^53. Integers are
-- written with '%d' (tostring would switch to exponent notation above 1e14) and times
-- are stored as the exact strings the caller passed in ARGV, never reformatted.

local function int(x)
  return string.format('%d', x)
end

local function num(s)
  if s == false or s == nil or s == '' then return 0 end
  return tonumber(s)
end

local function fail(msg)
  return redis.error_reply('weir: ' .. msg)
end

-- Append one ledger entry. Every field is a string so cjson never rounds a number.
local function ledger(lkey, account, kind, d_balance, d_reserved, ts, ref, extra)
  local e = {a = account, k = kind, b = int(d_balance), r = int(d_reserved), t = ts, ref = ref or ''}
  if extra then
    for f, v in pairs(extra) do e[f] = v end
  end
  redis.call('RPUSH', lkey, cjson.encode(e))
end

-- Roll a subscription over to the period starting at `target` (computed by the caller
-- from the subscription's immutable start and period). The write-off and the new quota
-- are two `credit` entries, so balance == sum(entries) holds across periods. Period
-- boundaries are exact (`ledger_rules.period_start` adds whole days to the start, and
-- times travel as repr strings), so the comparison is exact too, as in SQLiteStore.
local function rollover(skey, lkey, target, ts)
  if target == nil or target == '' then return end
  local t = tonumber(target)
  local ps = tonumber(redis.call('HGET', skey, 'period_start'))
  if ps == nil or t <= ps then return end
  local bal = num(redis.call('HGET', skey, 'balance'))
  local quota = num(redis.call('HGET', skey, 'quota'))
  local acct = 'sub:' .. redis.call('HGET', skey, 'id')
  if bal ~= 0 then
    ledger(lkey, acct, 'credit', -bal, 0, ts, '', {note = 'period ended: write-off'})
  end
  ledger(lkey, acct, 'credit', quota, 0, ts, '', {note = 'period quota'})
  redis.call('HSET', skey, 'balance', int(quota), 'period_start', target)
end

local function affords(available, amount)
  return available > 0 and available >= amount
end


-- Take the next consume-log id from the global counter `seq` and enter it in the global
-- log index `index` as "id:user" (query_logs pages every user's rows together by it).
local function next_log_id(seq, index, user)
  local id = redis.call('INCR', seq)
  redis.call('ZADD', index, id, id .. ':' .. user)
  return id
end
