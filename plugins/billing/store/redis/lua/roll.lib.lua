-- Roll a subscription over to the period starting at `target` (computed by the caller
-- from the subscription's immutable start and period). The write-off and the new quota
-- are two `credit` entries, so balance == sum(entries) holds across periods. Period
-- boundaries are exact (`ledger_rules.period_start` adds whole days to the start, and
-- times travel as strings that give back the same float), so the comparison is exact too.
-- `s` is the subscription's {period_start, balance, quota, id} as read (HMGET, in this
-- order). The entries (JSON) go to `out`; the caller writes the rest: balance =
-- int(quota) and period_start = target. True if the subscription rolled over.
-- `skey` (the subscription's key) guards against a stale target: a period that starts
-- at or after the subscription's own `end` never begins (a cancellation moves `end`
-- earlier than the terms a caller may remember). Read only when a period would begin.
local function roll(s, target, ts, out, skey)
  if target == nil or target == '' then return false end
  local t = tonumber(target)
  local ps = tonumber(s[1])
  if ps == nil or t <= ps then return false end
  if skey then
    local ends = redis.call('HGET', skey, 'end')
    if ends and ends ~= '' and t >= tonumber(ends) then return false end
  end
  local bal = num(s[2])
  local quota = num(s[3])
  local acct = 'sub:' .. s[4]
  if bal ~= 0 then
    out[#out + 1] = encode({a = acct, k = 'credit', b = int(-bal), r = '0', t = ts, ref = '',
      note = 'period ended: write-off'})
  end
  out[#out + 1] = encode({a = acct, k = 'credit', b = int(quota), r = '0', t = ts, ref = '', note = 'period quota'})
  return true
end
