-- Fewer index writes per delivery (#24), as PostgreSQL's schema 10 did. `deliveries_due` indexed
-- every delivery by (status, next_attempt_at): each one was written into it at ingest, and again
-- under its new status when it settled, so the index grew with every delivery ever made. The
-- queue needs only the pending ones: the index now holds those alone, and a settle removes its
-- entry instead of moving it. Delivered deliveries are found through the primary key; failed
-- ones (the dead letters) get an index of their own, as small as they are. Queries name the
-- status they want as a literal (`status = 'pending'`): SQLite uses a partial index only then.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_failed ON deliveries(id) WHERE status = 'failed';
