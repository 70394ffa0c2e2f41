#!/usr/bin/env bash
# Measures, in one run on this machine, every row of docs/performance.md: the bare-handler
# ceiling (with `bench`'s generator and, when installed, with wrk), lbx-relay on SQLite at full
# speed and at a steady half of that rate, on PostgreSQL with 1 and 3 replicas (when
# LBX_BENCH_POSTGRES_URL names a database whose public schema it may empty), and the Python and
# Node-RED peers, all with the same load: N unique ~1 KB encrypted events at concurrency C.
# Usage: bench/peers/run.sh [N] [C]     (needs: cargo, python3; npm for Node-RED; wrk optional)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-60000}
C=${2:-64}
SECRET=bench-peer-secret-bench-peer-sec
BIN=target/release/lbx-relay
OUT=${OUT:-target/bench-peers}
mkdir -p "$OUT"
cargo build --release --quiet --features bench
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# The relay reads nothing else from the caller's shell.
bench() { env -i PATH="$PATH" "$BIN" bench "$@"; }

echo "== ceiling: a bare actix-web handler, bench's generator against wrk (same connections)"
P=$(port)
$BIN baseline-server --listen "127.0.0.1:$P" &
BASE=$!
trap 'kill $BASE 2>/dev/null || true' EXIT
wait_port "$P"
bench --url "http://127.0.0.1:$P/hooks/bench" --secret "$SECRET" -n 400000 -c "$C" --json > "$OUT/ceiling-generator.json"
python3 -c "import json; r=json.load(open('$OUT/ceiling-generator.json')); print(f\"bench generator: {r['accepted_per_second']:.0f} req/s\")"
if command -v wrk >/dev/null; then
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = string.rep("a", 1027)\n' > "$OUT/post.lua"
  wrk -t2 -c"$C" -d5s -s "$OUT/post.lua" "http://127.0.0.1:$P/hooks/bench" | tee "$OUT/ceiling-wrk.txt" | grep Requests/sec
fi
kill $BASE; wait $BASE 2>/dev/null || true

echo "== lbx-relay, SQLite (durable: synchronous=FULL), full speed, with the ceiling in the same run"
bench -n "$N" -c "$C" --baseline --json > "$OUT/sqlite.json"
echo "== lbx-relay, SQLite with [store] sync = normal (survives a relay crash, not a power loss), full speed"
bench -n "$N" -c "$C" --sync normal --json > "$OUT/sqlite-normal.json"
RATE=$(python3 -c "import json; print(int(json.load(open('$OUT/sqlite.json'))['accepted_per_second'] / 2))")
echo "== lbx-relay, SQLite, steady at half that rate ($RATE/s) for 20 s"
bench --rate "$RATE" --duration 20s -c "$C" --json > "$OUT/sqlite-steady.json"

if [ -n "${LBX_BENCH_POSTGRES_URL:-}" ]; then
  for R in 1 3; do
    echo "== lbx-relay, PostgreSQL, $R replica(s)"
    PGOPTIONS='-c client_min_messages=warning' psql "$LBX_BENCH_POSTGRES_URL" -qc "DROP SCHEMA public CASCADE; CREATE SCHEMA public" >/dev/null
    bench -n "$N" -c "$C" --replicas "$R" --store-url "$LBX_BENCH_POSTGRES_URL" --json > "$OUT/postgres-$R.json"
  done
fi

echo "== Python aiohttp: decrypt, template, in-memory queue, forward (no durability)"
python3 -m pip install --quiet --root-user-action=ignore -r bench/peers/requirements.txt
P=$(port); S=$(port)
SECRET=$SECRET SINK_URL=http://127.0.0.1:$S/sink python3 bench/peers/python_aiohttp.py 127.0.0.1:$P &
PY=$!
trap 'kill $PY 2>/dev/null || true' EXIT
wait_port "$P"
bench --url "http://127.0.0.1:$P/hooks/bench" --secret "$SECRET" --sink-listen "127.0.0.1:$S" --pid "$PY" -n "$N" -c "$C" --json > "$OUT/python.json"
kill $PY; wait $PY 2>/dev/null || true

if command -v npm >/dev/null; then
  echo "== Node-RED: http in → template → http request (no decryption, no durability)"
  NR=bench/peers/.node-red
  mkdir -p "$NR"
  [ -d "$NR/node_modules/node-red" ] || npm install --prefix "$NR" --silent --no-audit --no-fund node-red@4 >/dev/null
  P=$(port); S=$(port)
  sed -e "s/SINK_PORT/$S/" bench/peers/node-red-flow.json > "$NR/flows.json"
  node "$NR/node_modules/node-red/red.js" --port "$P" --userDir "$NR" "$NR/flows.json" > "$NR/log.txt" 2>&1 &
  NODE=$!
  trap 'kill $NODE 2>/dev/null || true' EXIT
  wait_port "$P"; sleep 2
  # The flow cannot decrypt, so the sink cannot match deliveries to events: only ingest counts.
  bench --url "http://127.0.0.1:$P/hooks/bench" --secret "$SECRET" --sink-listen "127.0.0.1:$S" --pid "$NODE" -n 20000 -c "$C" --drain-timeout 2s --json > "$OUT/node-red.json" || true
  kill $NODE; wait $NODE 2>/dev/null || true
fi

python3 bench/peers/table.py "$OUT"
