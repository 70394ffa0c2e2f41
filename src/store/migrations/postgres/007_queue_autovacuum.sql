-- `deliveries` is the queue: each row is rewritten as it is leased and settled, so the table
-- collects dead row versions much faster than it grows. PostgreSQL's default vacuums a table once
-- a fifth of it is dead: on a store keeping millions of delivered rows (retention), claims would
-- walk past hundreds of thousands of dead index entries first. Vacuum it once 1 % (+ 1,000 rows)
-- is dead, and refresh its statistics once 2 % changed.
ALTER TABLE deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02
);
