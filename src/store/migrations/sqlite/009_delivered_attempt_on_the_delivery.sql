-- One row update at settle (#24): the attempt that delivers is recorded on its delivery's row
-- (when it started, how long it took, its request/answer detail; its status and error are the
-- row's last_status and last_error) instead of as a row of its own in attempts, with two index
-- entries. The attempts table keeps every other attempt: retries, failures, lost leases, and a
-- delivered attempt moved there when its delivery is sent again (a replay). Stores written before
-- this version keep their delivered attempts where they are: nothing is rewritten by the upgrade.
ALTER TABLE deliveries ADD COLUMN ok_started_at INTEGER;
ALTER TABLE deliveries ADD COLUMN ok_duration_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN ok_detail TEXT;
-- The console's windows (route health, time series, alerts) count delivered attempts by start.
CREATE INDEX deliveries_ok_started ON deliveries(ok_started_at) WHERE ok_started_at IS NOT NULL;
-- Every attempt, wherever it is kept: what the console's event detail reads.
CREATE VIEW attempt_log (id, delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail) AS
    SELECT id, delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail FROM attempts
    UNION ALL
    SELECT NULL, id, attempts, ok_started_at, ok_duration_ms, last_status, last_error, 'delivered', ok_detail
    FROM deliveries WHERE ok_started_at IS NOT NULL;
