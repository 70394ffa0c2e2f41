-- The quarantine's size, kept by triggers so a bounded insert costs O(1), not a COUNT(*).
CREATE TABLE quarantine_totals (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    items INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO quarantine_totals
    SELECT 1, COUNT(*), COALESCE(SUM(length(body) + length(CAST(headers AS BLOB))), 0) FROM quarantine;
CREATE TRIGGER quarantine_added AFTER INSERT ON quarantine BEGIN
    UPDATE quarantine_totals SET items = items + 1,
        bytes = bytes + length(NEW.body) + length(CAST(NEW.headers AS BLOB)) WHERE id = 1;
END;
CREATE TRIGGER quarantine_removed AFTER DELETE ON quarantine BEGIN
    UPDATE quarantine_totals SET items = items - 1,
        bytes = bytes - length(OLD.body) - length(CAST(OLD.headers AS BLOB)) WHERE id = 1;
END;
ALTER TABLE events ADD COLUMN email TEXT;
CREATE INDEX events_email ON events(email) WHERE email IS NOT NULL;
CREATE INDEX events_key ON events(event_key);
ALTER TABLE attempts ADD COLUMN detail TEXT;
CREATE TABLE heartbeat (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at    INTEGER NOT NULL,
    probe BLOB
);
CREATE TRIGGER quarantine_changed AFTER UPDATE OF body, headers ON quarantine BEGIN
    UPDATE quarantine_totals SET bytes = bytes - length(OLD.body) - length(CAST(OLD.headers AS BLOB))
        + length(NEW.body) + length(CAST(NEW.headers AS BLOB)) WHERE id = 1;
END;
