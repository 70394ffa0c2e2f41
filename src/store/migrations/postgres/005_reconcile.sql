-- Reconciliation with Learnybox's API (see src/reconcile/): where an event came from, each API
-- item's latest verdict (the per-day proof), and each run with its cursor (a run resumes).
ALTER TABLE events ADD COLUMN origin TEXT;
CREATE TABLE reconcile_items (
    source     TEXT    NOT NULL,
    list       TEXT    NOT NULL,
    item_id    TEXT    NOT NULL,
    day        TEXT    NOT NULL,
    item_at    BIGINT  NOT NULL,
    outcome    TEXT    NOT NULL,
    reason     TEXT,
    event_id   TEXT,
    checked_at BIGINT  NOT NULL,
    PRIMARY KEY (source, list, item_id)
);
CREATE INDEX reconcile_items_day ON reconcile_items(day);
CREATE TABLE reconcile_runs (
    id          TEXT    PRIMARY KEY,
    source      TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    started_at  BIGINT  NOT NULL,
    heartbeat   BIGINT  NOT NULL,
    finished_at BIGINT,
    since       BIGINT  NOT NULL,
    until       BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    error       TEXT,
    listed      BIGINT  NOT NULL DEFAULT 0,
    received    BIGINT  NOT NULL DEFAULT 0,
    recovered   BIGINT  NOT NULL DEFAULT 0,
    missing     BIGINT  NOT NULL DEFAULT 0,
    cursor      TEXT
);
CREATE INDEX reconcile_runs_source ON reconcile_runs(source, started_at);
-- One run at a time per source, across processes and replicas.
CREATE UNIQUE INDEX reconcile_runs_one_active ON reconcile_runs(source) WHERE state IN ('running', 'interrupted');
