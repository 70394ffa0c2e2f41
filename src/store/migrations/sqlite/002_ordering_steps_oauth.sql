ALTER TABLE deliveries ADD COLUMN order_key TEXT;
ALTER TABLE deliveries ADD COLUMN steps_state TEXT;
CREATE TABLE oauth_tokens (
    key           TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX deliveries_order ON deliveries(route, order_key) WHERE order_key IS NOT NULL AND status = 'pending';
