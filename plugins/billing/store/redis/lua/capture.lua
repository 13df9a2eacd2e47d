-- capture: charge ARGV[6], release the rest of the hold, bump counters, append the log row.
-- requires: roll
-- requires: logid
-- requires: settle
return settle('captured', 'capture', tonumber(ARGV[6]), true, nil)
