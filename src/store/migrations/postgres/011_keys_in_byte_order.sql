-- Keys compared byte by byte (#24). Ids, event keys, sources, routes and addresses were compared
-- through the database's locale: every B-tree step of the ingest, the settle and a claim called
-- strcoll. On an en_US.UTF-8 database that took about a fifth of the server's CPU per event. They
-- are machine-made keys (UUIDs, Learnybox ids, route names from routes.toml) for which only
-- equality and a stable order matter; the "C" collation gives both without the locale, the
-- order SQLite gives them. The columns' type stays text: the upgrade rewrites no row, it rebuilds
-- the indexes on these columns (seconds for a store of a million deliveries).
DROP VIEW attempt_log;
ALTER TABLE events
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN event_key TYPE TEXT COLLATE "C",
    ALTER COLUMN email TYPE TEXT COLLATE "C";
ALTER TABLE dedup_keys
    ALTER COLUMN source TYPE TEXT COLLATE "C",
    ALTER COLUMN event_key TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN event_id TYPE TEXT COLLATE "C",
    ALTER COLUMN route TYPE TEXT COLLATE "C",
    ALTER COLUMN order_key TYPE TEXT COLLATE "C";
ALTER TABLE attempts ALTER COLUMN delivery_id TYPE TEXT COLLATE "C";
-- As migration 9 made it.
CREATE VIEW attempt_log (id, delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail) AS
    SELECT id, delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail FROM attempts
    UNION ALL
    SELECT NULL::bigint, id, attempts, ok_started_at, ok_duration_ms, last_status, last_error, 'delivered', ok_detail
    FROM deliveries WHERE ok_started_at IS NOT NULL;
