-- expire: resolve an orphaned hold. Capture its last checkpoint (even above the hold,
-- since that much was delivered) and release the rest; with no checkpoint release it all.
-- requires: roll
-- requires: logid
-- requires: settle
local cp = redis.call('HGET', KEYS[2], 'checkpoint')
if cp and cp ~= '' then
  return settle('expired', 'expire', tonumber(cp), true, 'partial')
end
return settle('expired', 'expire', 0, false, 'none')
