-- Field coverage per route on real events (see src/coverage.rs): kept so a restart keeps it.
CREATE TABLE field_coverage (
    route         TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    present       INTEGER NOT NULL,
    empty         INTEGER NOT NULL,
    absent        INTEGER NOT NULL,
    absent_streak INTEGER NOT NULL,
    PRIMARY KEY (route, path)
);
