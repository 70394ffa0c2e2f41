"""Prints the docs/performance.md table from the JSON reports of bench/peers/run.sh."""
import json
import os
import re
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


sqlite = load("sqlite.json")
ceiling = sqlite["baseline"]["requests_per_second"]
print(f"ceiling in the same run (bare actix-web, bench's generator): {ceiling:,.0f} req/s, "
      f"p99 {sqlite['baseline']['ack_latency']['p99_ms']:.2f} ms")
gen = load("ceiling-generator.json")
wrk_path = os.path.join(out, "ceiling-wrk.txt")
if gen and os.path.exists(wrk_path):
    wrk = float(re.search(r"Requests/sec:\s+([\d.]+)", open(wrk_path).read()).group(1))
    print(f"generator vs wrk on the bare handler: {gen['accepted_per_second']:,.0f} vs {wrk:,.0f} req/s "
          f"({gen['accepted_per_second'] / wrk:.2f})")
print()
print("| what | ingest/s (share of ceiling) | ack p99 (max) | end to end/s (share) | delivered while ingesting | delivery p99 | relay CPU per event | RSS peak |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")


def row(label, r):
    if r is None:
        return
    ingest = r["accepted_per_second"]
    e2e = r.get("delivered_per_second")
    during = r.get("delivered_during_ingest_per_second")
    dl = r.get("delivery_latency")
    cells = [
        label,
        f"{ingest:,.0f} ({ingest / ceiling:.3f})",
        f"{r['ack_latency']['p99_ms']:.1f} ms ({r['ack_latency']['max_ms']:.0f} ms)",
        f"{e2e:,.0f} ({e2e / ceiling:.3f})" if e2e and r.get("delivered") else "n/a",
        f"{during:,.0f}/s ({100 * during / ingest:.0f} %)" if during and r.get("delivered") else "n/a",
        f"{dl['p99_ms']:,.0f} ms" if dl and r.get("delivered") else "n/a",
        f"{r['relay_cpu_us_per_event']:.0f} µs" if r.get("relay_cpu_us_per_event") else "n/a",
        f"{r['relay_rss_peak_mb']:.0f} MiB" if r.get("relay_rss_peak_mb") else "n/a",
    ]
    print("| " + " | ".join(cells) + " |")


def cores(r):
    span = r.get("end_to_end_seconds") or r["ingest_seconds"]
    if not r.get("relay_cpu_seconds") or not r.get("bench_cpu_seconds"):
        return "n/a"
    return f"{r['relay_cpu_seconds'] / span:.2f} + {r['bench_cpu_seconds'] / span:.2f}"


def machine(r):
    m = r.get("machine_cpu")
    if not m:
        return "n/a"
    return f"{100 * m['busy_share']:.0f} % ({100 * m['steal_share']:.0f} %)"


row("lbx-relay, SQLite, durable (sync = full)", sqlite)
row("lbx-relay, SQLite, sync = normal", load("sqlite-normal.json"))
steady = load("sqlite-steady.json")
if steady:
    peak = max((s["backlog"] for s in steady["series"]), default=0)
    row(f"lbx-relay, SQLite, steady {steady['rate']:,}/s (backlog peak {peak})", steady)
row("lbx-relay, PostgreSQL, 1 replica", load("postgres-1.json"))
row("lbx-relay, PostgreSQL, 3 replicas", load("postgres-3.json"))
row("Python aiohttp (no durability)", load("python.json"))
row("Node-RED (no decryption, no durability)", load("node-red.json"))
pg = load("postgres-1.json")
if pg:
    print(f"\nPostgreSQL 1 replica / SQLite ingest: {pg['accepted_per_second'] / sqlite['accepted_per_second']:.2f}")
    for name in ["postgres-1.json", "postgres-3.json"]:
        r = load(name)
        if r:
            print(f"{name}: machine busy (stolen) {machine(r)}, relay + bench cores {cores(r)}; the rest of the busy "
                  f"time is the PostgreSQL server's")


def ms(v):
    return "> 1 s" if v is None else f"≤ {v:g} ms"


print("\nWhere the ack tail is: the SQLite writer's own times (bucket bounds from its /metrics) against the acks")
print("| run | ack p99 (max) | slowest second's ack max | writer batch p99 (max) | wait for the writer p99 (max) | operations per transaction | cores used: relay + bench (of 2) | machine busy (stolen) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for label, name in [("full speed, sync = full", "sqlite.json"), ("full speed, sync = normal", "sqlite-normal.json"),
                    ("steady half rate", "sqlite-steady.json")]:
    r = load(name)
    w = r and r.get("relay_writer")
    if not w:
        continue
    slowest = max(r["series"], key=lambda s: s.get("ack_max_ms", 0))
    print(f"| {label} | {r['ack_latency']['p99_ms']:.1f} ms ({r['ack_latency']['max_ms']:.0f} ms) "
          f"| {slowest.get('ack_max_ms', 0):.0f} ms (second {slowest['second']}) "
          f"| {ms(w['batch_p99_le_ms'])} ({ms(w['batch_max_le_ms'])}) | {ms(w['wait_p99_le_ms'])} ({ms(w['wait_max_le_ms'])}) "
          f"| {w['operations'] / max(w['batches'], 1):.1f} | {cores(r)} | {machine(r)} |")
