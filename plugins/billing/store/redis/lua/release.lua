-- release: give the whole hold back and append the log row with a charge of 0.
-- requires: roll
-- requires: logid
-- requires: settle
return settle('released', 'release', 0, false, nil)
