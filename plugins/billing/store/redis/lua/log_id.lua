-- log_id: reserve a consume-log id and enter it in the global index before the
-- settlement writes the row, so a crash can leave a gap (skipped on read) but never
-- a row missing from the index.
-- KEYS: 1 log id counter, 2 global log index. ARGV: 1 user. Returns the id.
-- requires: logid
return (next_log_id(KEYS[1], KEYS[2], ARGV[1]))
