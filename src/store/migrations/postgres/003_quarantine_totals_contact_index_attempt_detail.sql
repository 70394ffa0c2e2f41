-- The quarantine's size, kept by a trigger so a bounded insert costs O(1), not a COUNT(*).
CREATE TABLE quarantine_totals (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    items BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO quarantine_totals
    SELECT 1, COUNT(*), COALESCE(SUM(octet_length(body) + octet_length(headers)), 0) FROM quarantine;
CREATE FUNCTION lbx_quarantine_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE quarantine_totals SET items = items + 1,
            bytes = bytes + octet_length(NEW.body) + octet_length(NEW.headers) WHERE id = 1;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE quarantine_totals SET items = items - 1,
            bytes = bytes - octet_length(OLD.body) - octet_length(OLD.headers) WHERE id = 1;
    ELSE
        UPDATE quarantine_totals SET bytes = bytes - octet_length(OLD.body) - octet_length(OLD.headers)
            + octet_length(NEW.body) + octet_length(NEW.headers) WHERE id = 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER quarantine_totals AFTER INSERT OR DELETE OR UPDATE OF body, headers ON quarantine
    FOR EACH ROW EXECUTE FUNCTION lbx_quarantine_totals();
ALTER TABLE events ADD COLUMN email TEXT;
CREATE INDEX events_email ON events(email) WHERE email IS NOT NULL;
CREATE INDEX events_key ON events(event_key);
ALTER TABLE attempts ADD COLUMN detail TEXT;
