#!/usr/bin/env bash
# What the console's reads cost on a store that has run for a while: fills a SQLite store with N
# events, deliveries and attempts spread over the last D days (two routes, 2 % failed), starts
# the relay on it, and prints the relay's CPU per call of GET /api/routes and of
# GET /api/stats/series (24 h and 7 days, 1 h buckets), read from /proc/<pid>/stat, and the
# median time to answer of five calls.
# Usage: bench/console/run.sh [BIN] [N] [D]   (needs: sqlite3, curl, python3)
# Compare two builds by running it with each, alternating.
set -euo pipefail
BIN=${1:-target/release/lbx-relay}
N=${2:-960000}
DAYS=${3:-30}
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$DIR"' EXIT
PID=
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(port); A=$(port)
echo '{"n": 1}' > "$DIR/sink.json.hbs"
cat > "$DIR/routes.toml" <<T
[server]
listen = "127.0.0.1:$P"
admin_listen = "127.0.0.1:$A"
admin_token = "console-bench-token-0123456789"
[store]
url = "sqlite://$DIR/relay.db"
retention = "400days"   # no purge while measuring
[sources.bench]
secret_keys = ["console-bench-secret-0123456789ab"]
[[routes]]
name = "sink"
events = ["*"]
template = "sink.json.hbs"
url = "http://127.0.0.1:9/sink"
[[routes]]
name = "crm"
events = ["*"]
template = "sink.json.hbs"
url = "http://127.0.0.1:9/crm"
T
serve() {
  env -i PATH="$PATH" RUST_LOG=warn "$BIN" serve -c "$DIR/routes.toml" > "$DIR/relay.log" 2>&1 &
  PID=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$A/readyz" > /dev/null && return 0; sleep 0.1; done
  echo "the relay did not start:"; cat "$DIR/relay.log"; exit 1
}
serve; kill $PID; wait $PID 2>/dev/null || true   # the store, with this build's schema
NOW=$(($(date +%s) * 1000)); GAP=$((DAYS * 86400000 / N))
sqlite3 "$DIR/relay.db" <<SQL
CREATE TEMP TABLE nums AS WITH RECURSIVE c(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM c WHERE k < $N - 1) SELECT k FROM c;
INSERT INTO events (id, source, event_key, kind, status, payload, received_at, email)
  SELECT printf('ev%09d', k), 'bench', printf('key%09d', k), 'contact.subscribed', 'delivered',
         printf('{"event":"contact.subscribed","id":"key%09d","data":{"contact":{"email":"c%d@example.com"}},"pad":"%s"}',
                k, k, hex(randomblob(90))),
         $NOW - ($N - k) * $GAP, printf('c%d@example.com', k) FROM nums;
INSERT INTO deliveries (id, event_id, route, status, attempts, tries, created_at, updated_at)
  SELECT printf('dl%09d', k), printf('ev%09d', k), CASE WHEN k % 3 = 0 THEN 'crm' ELSE 'sink' END,
         CASE WHEN k % 50 = 0 THEN 'failed' ELSE 'delivered' END, 1, 1,
         $NOW - ($N - k) * $GAP, $NOW - ($N - k) * $GAP + 300 FROM nums;
INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, error, outcome)
  SELECT printf('dl%09d', k), 1, $NOW - ($N - k) * $GAP + 100, 80, CASE WHEN k % 50 = 0 THEN 500 ELSE 200 END,
         CASE WHEN k % 50 = 0 THEN 'HTTP 500' END, CASE WHEN k % 50 = 0 THEN 'failed' ELSE 'delivered' END FROM nums;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
sync   # the fill's dirty pages written back now, not while the calls are timed
STARTED=$(date +%s%N); serve; echo "$N attempts over $DAYS days; ready after $(( ($(date +%s%N) - STARTED) / 1000000 )) ms"
cpu() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK=$(getconf CLK_TCK)
for ep in "/api/routes" "/api/stats/series?since=24h&step=1h" "/api/stats/series?since=7d&step=1h"; do
  call() { curl -sf -o "$DIR/answer.json" -w '%{time_total}\n' -H "Authorization: Bearer console-bench-token-0123456789" "http://127.0.0.1:$A$ep"; }
  call > /dev/null; before=$(cpu)
  walls=$(for _ in 1 2 3 4 5; do call; done | sort -n | sed -n 3p)
  echo "$ep: $(( ($(cpu) - before) * 1000 / TICK / 5 )) ms of relay CPU per call, median answer in $(python3 -c "print(round($walls * 1000))") ms"
done
