#!/usr/bin/env python3
"""Writes BENCHMARKS.md from one bench run's results directory (scripts/bench.sh)."""
import json
import os
import platform
import re
import subprocess
import sys

res = sys.argv[1]
peer = os.path.join(res, "socketio", "results")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ours(name):
    return load(os.path.join(res, f"{name}.json"))


def cpu(name):
    return load(os.path.join(res, f"{name}.cpu.json")) or {}


def fmt(x, digits=1):
    if x is None:
        return "n/a"
    if isinstance(x, (int, float)):
        return f"{x:,.{digits}f}"
    return str(x)


def ratio(a, b):
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


out = []
p = out.append
cpu_model = "?"
try:
    with open("/proc/cpuinfo") as f:
        cpu_model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
except (OSError, StopIteration):
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
p("# Benchmarks")
p("")
p(f"One run of `./scripts/bench.sh` at commit `{commit}` on {os.cpu_count()} cores ({cpu_model}), "
  f"kernel {platform.release()}. The load client, the system under test and the peer share the same "
  "2 cores, so every figure is also read against the CPU each process group used (bottom).")
p("")
p("Ours: the local stack of `./scripts/up.sh` in release mode (3 socket servers, 2 managers, 2 registries "
  "behind nginx, Redis + 2 replicas + 3 Sentinels, tansu broker with SQLite storage, PostgreSQL), driven by "
  "`target/release/loadgen` exactly as clients do (registry assign, JWT, WebSocket protocol); every "
  "message is durably logged (`acks=all`) before `sent`, numbered under a per-conversation lock, and "
  "checked for loss, duplicates and order. Peer: `shared/peers/socketio` (3 Socket.IO nodes + Redis "
  "adapter: no persistence, no ordering across nodes, at-most-once), same shapes, same run.")
p("")

# ---- S2
s2 = ours("s2")
peer_s2 = load(os.path.join(peer, "s2_1to1.json"))
p("## S2: 1:1 chat, 1,000 pairs, receiver on another server")
p("")
p("| target msgs/s | ours p50 / p90 / p99 / max ms | ours deliveries/s | ours lost / dup / ooo | ours pass | peer p50 / p99 ms | peer deliveries/s | peer pass |")
p("|---|---|---|---|---|---|---|---|")
peer_steps = {s["target_rate"]: s for s in (peer_s2 or {}).get("steps", [])}
best_ours = best_peer = None
for s in (s2 or {}).get("steps", []):
    lat = s["latency"]
    ps = peer_steps.get(s["target_rate"]) or peer_steps.get(int(s["target_rate"]))
    if s["pass"]:
        best_ours = s["target_rate"]
    p(f"| {fmt(s['target_rate'], 0)} | {fmt(lat['p50_ms'])} / {fmt(lat['p90_ms'])} / {fmt(lat['p99_ms'])} / {fmt(lat['max_ms'])} "
      f"| {fmt(s['deliveries_per_sec'], 0)} | {s['lost']} / {s['duplicates']} / {s['out_of_order']} | {s['pass']} "
      f"| {fmt(ps and ps.get('p50_ms'))} / {fmt(ps and ps.get('p99_ms'))} | {fmt(ps and ps.get('deliveries_per_s'), 0)} | {ps and ps.get('pass')} |")
for s in (peer_s2 or {}).get("steps", []):
    if s.get("pass"):
        best_peer = s["target_rate"]
p("")
p(f"Highest passing step (no loss, no duplicate, in order, p99 < 250 ms): ours **{fmt(best_ours, 0)}** msgs/s, "
  f"peer **{fmt(best_peer, 0)}** msgs/s (ratio {ratio(best_ours, best_peer)}).")
p("")

# ---- S3
s3 = ours("s3")
peer_s3 = load(os.path.join(peer, "s3_group.json"))
p("## S3: 10 groups of 100, one sender per group")
p("")
p("| target msgs/s | ours deliveries/s | ours p99 ms | ours pass | peer deliveries/s | peer p99 ms | peer pass |")
p("|---|---|---|---|---|---|---|")
peer_steps = {s["target_rate"]: s for s in (peer_s3 or {}).get("steps", [])}
for s in (s3 or {}).get("steps", []):
    ps = peer_steps.get(s["target_rate"]) or peer_steps.get(int(s["target_rate"]))
    p(f"| {fmt(s['target_rate'], 0)} | {fmt(s['deliveries_per_sec'], 0)} | {fmt(s['latency']['p99_ms'])} | {s['pass']} "
      f"| {fmt(ps and ps.get('deliveries_per_s'), 0)} | {fmt(ps and ps.get('p99_ms'))} | {ps and ps.get('pass')} |")
p("")

# ---- S1
s1 = ours("s1")
peer_s1 = load(os.path.join(peer, "s1_idle.meta.json"))
peer_per = None
if peer_s1:
    conns = sum(peer_s1.get("server_conns_when_connected") or [0])
    grown = sum(a - b for a, b in zip(peer_s1["rss_kb_connected_raw"], peer_s1["rss_kb_before_raw"]))
    peer_per = grown / conns if conns else None
p("## S1: idle connections")
p("")
p("| | connections | server RSS per connection (KiB) |")
p("|---|---|---|")
p(f"| ours | {fmt(s1 and s1.get('connections'), 0)} | {fmt(s1 and s1.get('kib_per_connection'))} |")
p(f"| peer (as running, no forced GC) | {fmt(peer_s1 and sum(peer_s1.get('server_conns_when_connected') or [0]), 0)} | {fmt(peer_per)} |")
p("")
p(f"Target: ≤ 12 KiB per idle connection (issue 9). Ratio ours/peer: {ratio(s1 and s1.get('kib_per_connection'), peer_per)} (lower is better).")
p("")

# ---- S4 and ceilings
s4, static, echo, broker = ours("s4"), ours("static"), ours("echo"), ours("broker")
p("## S4: assignment, and reference ceilings measured in the same run")
p("")
p("| measurement | rate | p50 / p99 ms | fraction of its ceiling |")
p("|---|---|---|---|")
if s4 and static:
    p(f"| `GET /api/v1/socket-server` through nginx (64 concurrent) | {fmt(s4['requests_per_sec'], 0)} req/s | "
      f"{fmt(s4['latency']['p50_ms'], 2)} / {fmt(s4['latency']['p99_ms'], 2)} | "
      f"{s4['requests_per_sec'] / static['requests_per_sec']:.2f} of static nginx |")
    p(f"| ceiling: nginx static `GET /` (64 concurrent) | {fmt(static['requests_per_sec'], 0)} req/s | "
      f"{fmt(static['latency']['p50_ms'], 2)} / {fmt(static['latency']['p99_ms'], 2)} | 1.00 |")
if echo:
    p(f"| ceiling: WebSocket ping/pong round trips, 100 connections, no backend | {fmt(echo['round_trips_per_sec'], 0)} /s | "
      f"{fmt(echo['latency']['p50_ms'], 2)} / {fmt(echo['latency']['p99_ms'], 2)} | (delivery path ceiling) |")
if broker:
    p(f"| ceiling: broker produce (acks=all, as the services: producer_config) then consume, 50k records | "
      f"{fmt(broker['produce_per_sec'], 0)} produced/s, {fmt(broker['consume_per_sec'], 0)} consumed/s | | (log ceiling) |")
if s2 and broker and best_ours:
    p("")
    p(f"The highest passing S2 step needs 2 appends per message (log + handler topic): {fmt(2 * best_ours, 0)} records/s, "
      f"{2 * best_ours / broker['produce_per_sec']:.2f} of the broker's measured produce ceiling.")
p("")

# ---- CPU
p("## CPU seconds per process group, per scenario (ours)")
p("")
groups = ["socket-servers", "managers", "registries", "message-service", "health-checkers", "redis", "broker", "database", "nginx"]
p("| scenario | load client | " + " | ".join(groups) + " |")
p("|---|---|" + "---|" * len(groups))
for name in ["static", "s4", "echo", "broker", "s1", "s2", "s3"]:
    c = cpu(name)
    r = ours(name) or {}
    p(f"| {name} | {fmt(r.get('loadgen_cpu_seconds'), 2)} | " + " | ".join(fmt(c.get(g), 2) for g in groups) + " |")
p("")
if peer_s2:
    p(f"Peer load client CPU in S2: {fmt(peer_s2.get('load_cpu_total_s'), 2)} s.")
    p("")

# CPU per message: each group's CPU over the scenario (connecting included) divided by the
# messages acknowledged in all its steps; S3's messages each reach 99 devices.
p("### CPU µs per acknowledged message (ours; the scenario's whole CPU, connecting included)")
p("")
p("| scenario | messages | load client | " + " | ".join(groups) + " |")
p("|---|---|---|" + "---|" * len(groups))
for name in ["s2", "s3"]:
    c = cpu(name)
    r = ours(name) or {}
    messages = sum(step.get("acknowledged", 0) for step in r.get("steps", []))
    if not messages:
        continue
    per = lambda seconds: fmt(None if seconds is None else 1e6 * seconds / messages, 0)
    p(f"| {name} | {messages:,} | {per(r.get('loadgen_cpu_seconds'))} | " + " | ".join(per(c.get(g)) for g in groups) + " |")
p("")

p("Where the time goes, what was fixed and what remains: [docs/performance.md](docs/performance.md).")
p("")
p("## Commands")
p("")
p("```")
p("./scripts/bench.sh                      # everything below, then this file")
# The loadgen arguments this run used, exactly as bench.sh logged them ("scenario NAME: ARGS"):
# one source for the settings, whatever the knobs were.
ran = {}
bench_log = os.path.join(res, "bench.log")
if os.path.exists(bench_log):
    for line in open(bench_log):
        match = re.search(r"\] scenario (\w+): (.*)$", line.rstrip())
        if match:
            ran[match.group(1)] = match.group(2)
for name in ("s2", "s3"):
    if name in ran:
        p(f"target/release/loadgen {ran[name]} --jwt-secret $SB_JWT_SECRET")
if "s1" in ran:
    p("target/release/loadgen " + re.sub(r"--server-pids \S+", "--server-pids <socket server pids>", ran["s1"]))
if "s4" in ran:
    p(f"target/release/loadgen {ran['s4']}   # and `static`, `echo`, `broker` for the ceilings")
p("(cd shared/peers/socketio && npm ci && SKIP_WAIT=1 ./run.sh)   # the peer")
p("```")
p("")
summary = os.path.join(peer, "summary.md")
if os.path.exists(summary):
    p("## The peer's own summary (same run)")
    p("")
    with open(summary) as f:
        for line in f.read().splitlines():
            p(line.replace("# ", "### ", 1) if line.startswith("# ") else line)
print("\n".join(out))
