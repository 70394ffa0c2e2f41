-- Fewer writes per event (#24): an event's dedup key lives on its own row (`dedup_until`, found
-- through the key index, which now covers it) instead of a row of its own in dedup_keys. The
-- dedup_keys table keeps only the keys that outlive their event (its event purged or erased while
-- the key is still live), so a key is honoured for its whole window whatever happens to the event.
ALTER TABLE events ADD COLUMN dedup_until INTEGER;
UPDATE events SET dedup_until = (
    SELECT k.expires_at FROM dedup_keys k
    WHERE k.source = events.source AND k.event_key = events.event_key AND k.event_id = events.id);
DELETE FROM dedup_keys WHERE event_id IN (SELECT id FROM events WHERE dedup_until IS NOT NULL);
DROP INDEX events_key;
CREATE INDEX events_key ON events(event_key, source, dedup_until);
