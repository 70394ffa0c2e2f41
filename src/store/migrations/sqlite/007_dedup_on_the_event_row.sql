-- Fewer writes per event (#24): a new event's dedup key lives on its own row (`dedup_until`, found
-- through the key index, which now covers it) instead of a row of its own in dedup_keys. From now
-- on dedup_keys holds only keys without their event: those written before this version (left
-- where they are, so upgrading rewrites no event row; they expire and are purged as before) and
-- those whose event was purged or erased inside its window.
ALTER TABLE events ADD COLUMN dedup_until INTEGER;
DROP INDEX events_key;
CREATE INDEX events_key ON events(event_key, source, dedup_until);
