-- forget: the orphan resolver has just removed the user from the global open-users set;
-- decide whether that was right. A hold may be between its caller's mark and its script,
-- so an empty open-hold set also raises a flag that the next hold script clears and
-- reports, telling its caller to mark the user again.
-- KEYS: 1 user's open-hold set, 2 the user's "open mark dropped" flag.
-- Returns 1 when the user has open holds (the caller must put the mark back), else 0.
if redis.call('SCARD', KEYS[1]) > 0 then return 1 end
redis.call('SET', KEYS[2], '1')
return 0
