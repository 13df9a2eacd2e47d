"""The shared Redis ledger (`RedisStore`): the RESP client, key layout, Lua scripts, audit."""
