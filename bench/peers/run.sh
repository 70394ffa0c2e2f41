#!/usr/bin/env bash
# Re-measures the peers of docs/performance.md on this machine with the same load as
# `lbx-relay bench`: N unique ~1 KB encrypted events at concurrency C.
# Usage: bench/peers/run.sh [N] [C]     (needs: cargo, python3, and npm for Node-RED)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
C=${2:-64}
SECRET=bench-peer-secret-bench-peer-sec
BIN=target/release/lbx-relay
cargo build --release --quiet
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

echo "== lbx-relay (durable: SQLite, synchronous=FULL), with the bare actix-web ceiling"
$BIN bench -n "$N" -c "$C" --baseline

echo "== Python aiohttp: decrypt, template, in-memory queue, forward (no durability)"
python3 -m pip install --quiet -r bench/peers/requirements.txt
P=$(port); S=$(port)
SECRET=$SECRET SINK_URL=http://127.0.0.1:$S/sink python3 bench/peers/python_aiohttp.py 127.0.0.1:$P &
PY=$!
trap 'kill $PY 2>/dev/null || true' EXIT
wait_port "$P"
$BIN bench --url "http://127.0.0.1:$P/hooks/bench" --secret "$SECRET" --sink-listen "127.0.0.1:$S" --pid "$PY" -n "$N" -c "$C"
kill $PY; wait $PY 2>/dev/null || true

echo "== Node-RED: http in → template → http request (no decryption, no durability)"
if command -v npm >/dev/null; then
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
  $BIN bench --url "http://127.0.0.1:$P/hooks/bench" --secret "$SECRET" --sink-listen "127.0.0.1:$S" --pid "$NODE" -n "$N" -c "$C" --drain-timeout 2s || true
  kill $NODE; wait $NODE 2>/dev/null || true
fi
