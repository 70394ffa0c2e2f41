-- Field coverage per route on real events (see src/coverage.rs): kept so a restart keeps it.
CREATE TABLE field_coverage (
    route         TEXT   NOT NULL,
    path          TEXT   NOT NULL,
    present       BIGINT NOT NULL,
    empty         BIGINT NOT NULL,
    absent        BIGINT NOT NULL,
    absent_streak BIGINT NOT NULL,
    PRIMARY KEY (route, path)
);
