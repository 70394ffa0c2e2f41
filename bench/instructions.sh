#!/usr/bin/env bash
# Instructions per event of a relay, counted by valgrind's callgrind: within 1–3 % from run to run
# on an idle machine, slow or fast, where CPU seconds drift by a third. A loaded machine makes
# smaller group commits and so more instructions per event: compare builds one after the other on
# an idle machine. What it leaves out: the kernel's work (TCP, fsync), cache misses and waits.
#
#   bash bench/instructions.sh [EVENTS]          # defaults: 6000 events, target/release/lbx-relay
#   RELAY=/path/to/other/lbx-relay bash bench/instructions.sh   # another build, same generator
#
# The generator is `lbx-relay bench` (built with `--features bench`, from BIN); the relay under
# measurement (RELAY, default BIN) runs under callgrind with the bench's own config: one SQLite
# store with `sync = "full"`, one route to the generator's sink, 64 delivery workers. Two runs,
# of 1,000 and of 1,000 + EVENTS events: their difference divided by EVENTS is the cost of an
# event without the relay's start and stop. Callgrind counts each thread apart; a thread belongs
# to the part whose code it runs.
set -euo pipefail

EVENTS=${1:-6000}
BIN=${BIN:-target/release/lbx-relay}
RELAY=${RELAY:-$BIN}
PORT=${PORT:-18080}
WARM=1000
for tool in valgrind callgrind_annotate curl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install valgrind curl)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "$BIN: build it with cargo build --release --features bench" >&2; exit 2; }
for p in "$PORT" $((PORT + 1)) $((PORT + 2)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is taken: set PORT to the first of three free ports" >&2
    exit 2
  fi
done
BIN=$(realpath "$BIN")
RELAY=$(realpath "$RELAY")

DIR=$(mktemp -d)
[ -n "${KEEP:-}" ] && echo "keeping $DIR" >&2 || trap 'rm -rf "$DIR"' EXIT
SECRET=bench-secret-bench-secret-bench!
cat > "$DIR/sink.json.hbs" <<'HBS'
{"n": {{#if data.n}}{{data.n}}{{else}}0{{/if}}, "event": "{{event}}", "email": "{{data.data.contact.email}}"}
HBS
cat > "$DIR/routes.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$((PORT + 1))"
max_body = "1MiB"
[store]
url = "sqlite://$DIR/relay.db"
[sources.bench]
secret_keys = ["$SECRET"]
[delivery]
workers = 64
[[routes]]
name = "sink"
events = ["*"]
template = "sink.json.hbs"
url = "http://127.0.0.1:$((PORT + 2))/sink"
TOML

# One run of N events: prints the prefix of its callgrind files (one per thread).
run() {
  local n=$1 out="$DIR/callgrind.$1"
  rm -f "$DIR"/relay.db*
  env -i PATH=/usr/bin:/bin HOME="$DIR" RUST_LOG=warn \
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out" \
    "$RELAY" serve -c "$DIR/routes.toml" >"$DIR/relay.$n.log" 2>&1 &
  local vp=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$((PORT + 1))/readyz" >/dev/null 2>&1 && break
    kill -0 "$vp" 2>/dev/null || { cat "$DIR/relay.$n.log" >&2; exit 1; }
    sleep 0.2
  done
  env -i PATH=/usr/bin:/bin HOME="$DIR" "$BIN" bench --url "http://127.0.0.1:$PORT/hooks/bench" --secret "$SECRET" \
    --sink-listen "127.0.0.1:$((PORT + 2))" --pid "$vp" -n "$n" -c 16 --drain-timeout 600s --json \
    >"$DIR/bench.$n.json" 2>"$DIR/bench.$n.err" || { cat "$DIR/bench.$n.err" >&2; kill "$vp"; exit 1; }
  kill -TERM "$vp"
  wait "$vp" || true
  grep -Eq "^  \"delivered\": $n,?$" "$DIR/bench.$n.json" || { echo "run of $n: not every event was delivered" >&2; exit 1; }
  echo "$out"
}

files() { ls "$1"-* 2>/dev/null | grep -v "\.txt$" || true; }
# The part a thread belongs to: the first of the writer, the listeners and the runtime whose code
# it ran (the writer also runs closures written in the delivery code), else `other`.
part_of() {
  if grep -qF 'sqlite::writer::writer' "$1"; then echo writer
  elif grep -qF 'actix_http::h1::dispatcher' "$1"; then echo listener
  elif grep -qF 'lbx_relay::delivery::worker' "$1"; then echo runtime
  else echo other
  fi
}
# The files of run $1's threads that belong to part $2.
class_files() {
  local f
  for f in $(files "$1"); do
    if [ "$(part_of "$f")" = "$2" ]; then echo "$f"; fi
  done
}
sum_total() {
  local t=0 f
  for f in "$@"; do t=$((t + $(awk '/^(summary|totals):/ {n = $2; exit} END {print n + 0}' "$f"))); done
  echo "$t"
}
# The inclusive count of function $1 (its largest entry: callgrind splits a function by the files
# inlined into it) summed over the files that follow.
sum_inclusive() {
  local fn=$1 t=0 f v
  shift
  for f in "$@"; do
    [ -f "$f.txt" ] || callgrind_annotate --inclusive=yes --threshold=100 "$f" >"$f.txt" 2>/dev/null
    v=$(grep -F -- ":$fn [" "$f.txt" | awk '{gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0} END {print m + 0}')
    t=$((t + v))
  done
  echo "$t"
}

A=$(run $WARM)
B=$(run $((WARM + EVENTS)))
per() { echo $((($2 - $1) / EVENTS)); }
row() { printf '%-48s %12s\n' "$1" "$2"; }
printf 'relay: %s\nevents: %s (after %s), instructions per event\n' "$RELAY" "$EVENTS" "$WARM"
# shellcheck disable=SC2046 # file lists, split on purpose
row "relay, every thread" "$(per "$(sum_total $(files "$A"))" "$(sum_total $(files "$B"))")"
while IFS='|' read -r label marker fn; do
  # shellcheck disable=SC2046
  if [ -z "$fn" ]; then
    row "$label" "$(per "$(sum_total $(class_files "$A" "$marker"))" "$(sum_total $(class_files "$B" "$marker"))")"
  else
    row "$label" "$(per "$(sum_inclusive "$fn" $(class_files "$A" "$marker"))" \
      "$(sum_inclusive "$fn" $(class_files "$B" "$marker"))")"
  fi
done <<'PARTS'
listener threads (HTTP in, decrypt, ingest)|listener|
  of which decryption|listener|lbx_relay::crypto::open
SQLite writer thread|writer|
  of which SQLite's statements|writer|sqlite3_step
  of which commits (WAL frames, checksums)|writer|sqlite3VdbeHalt
runtime threads (deliveries, claims, upkeep)|runtime|
  of which HTTP requests to the CRM|runtime|lbx_relay::delivery::send::HttpSender::request::{{closure}}
  of which rendering|runtime|lbx_relay::templates::Templates::render_prepared
other threads|other|
PARTS
