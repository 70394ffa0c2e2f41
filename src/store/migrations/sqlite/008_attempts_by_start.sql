-- The console's route health, its time series and the alerts count the attempts of a time window
-- (the last 15 minutes, 24 hours, 7 days). Without an index on when an attempt started, every one
-- of those reads walked the whole attempts table (all of `retention`), and the reads were capped
-- at the newest 200,000 attempts, so a busy store's counts came out short without a word. Start
-- times only grow, so the index is appended to at its end: one page per group commit, not per event.
CREATE INDEX attempts_started ON attempts(started_at);
