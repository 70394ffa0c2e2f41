-- Fewer index writes per delivery (#24). `deliveries_status` indexed every delivery by status, so
-- each one was written into it at ingest and again when it settled (a status change is never a
-- HOT update). Pending deliveries are found through `deliveries_due` and delivered ones through
-- the primary key; only failed ones need an index of their own, and it stays as small as the
-- dead letters.
DROP INDEX deliveries_status;
CREATE INDEX deliveries_failed ON deliveries(id) WHERE status = 'failed';
-- A claim only sets the lease columns, which no index covers: with room left on the row's page
-- PostgreSQL rewrites it in place (a HOT update) instead of adding an entry to every index.
ALTER TABLE deliveries SET (fillfactor = 80);
