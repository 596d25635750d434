#!/usr/bin/env bash
# Fails when the workspace's crate graph has a cycle, counting normal, build and dev
# dependencies between workspace members alike (Cargo allows a cycle through a dev-dependency,
# but then a crate's tests link a second copy of it, and a library is tied to its users).
# Prints the cycle it finds, each edge with its kind. Also fails when a service depends (normal
# dependency) on another service: services share code through the library crates below them.
#
#   scripts/check-crate-graph.sh
set -euo pipefail
cd "$(dirname "$0")/.."

cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys

packages = {p["name"]: p for p in json.load(sys.stdin)["packages"]}
# A dependency is named by its package name (`package = ...` in a manifest renames it only in
# code), so d["name"] is the member it points to.
edges = {
    name: sorted({(d["name"], d["kind"] or "normal")
                  for d in p["dependencies"] if d["name"] in packages})
    for name, p in packages.items()
}

DONE, ON_PATH = "done", "on path"
state = {}
path = []  # (crate, kind of the edge that led to it)

def visit(name, via):
    state[name] = ON_PATH
    path.append((name, via))
    for dep, kind in edges[name]:
        if state.get(dep) == ON_PATH:
            start = [n for n, _ in path].index(dep)
            steps = path[start:] + [(dep, kind)]
            text = steps[0][0] + "".join(f" -({k})-> {n}" for n, k in steps[1:])
            sys.exit(f"crate graph cycle: {text}")
        if dep not in state:
            visit(dep, kind)
    path.pop()
    state[name] = DONE

for name in sorted(packages):
    if name not in state:
        visit(name, None)
SERVICES = {"registry", "socket-server", "socket-manager", "message-service", "health-checker"}
for name in sorted(SERVICES & packages.keys()):
    for dep, kind in edges[name]:
        if kind == "normal" and dep in SERVICES:
            sys.exit(f"service {name} depends on service {dep}")
count = sum(len(e) for e in edges.values())
print(f"crate graph: {len(packages)} workspace crates, {count} edges (normal, build and dev), no cycle, no service depends on a service")
'
