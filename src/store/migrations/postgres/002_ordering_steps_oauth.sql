ALTER TABLE deliveries ADD COLUMN order_key TEXT, ADD COLUMN seq BIGSERIAL, ADD COLUMN steps_state TEXT;
CREATE INDEX deliveries_order ON deliveries(route, order_key, seq) WHERE order_key IS NOT NULL AND status = 'pending';
CREATE TABLE rate_windows (
    route TEXT PRIMARY KEY,
    slots BIGINT[] NOT NULL
);
CREATE TABLE oauth_tokens (
    key           TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    updated_at    BIGINT NOT NULL
);
