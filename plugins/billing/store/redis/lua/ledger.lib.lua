-- Append one ledger entry. Every field is a string so cjson never rounds a number.
local function ledger(lkey, account, kind, d_balance, d_reserved, ts, ref, extra)
  local e = {a = account, k = kind, b = int(d_balance), r = int(d_reserved), t = ts, ref = ref or ''}
  if extra then
    for f, v in pairs(extra) do e[f] = v end
  end
  redis.call('RPUSH', lkey, encode(e))
end
