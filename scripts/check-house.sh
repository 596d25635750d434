#!/usr/bin/env bash
# The house rules of the product crates (docs/architecture.md, "House rules"), checked so that
# they stay true:
#   1. no source file over 600 non-test lines (the lines before its `#[cfg(test)]` module);
#   2. no function over 80 lines, as clippy counts them (`too_many_lines`, threshold in
#      clippy.toml), in the lib and bin targets (tests may be long);
#   3. no module takes the app state from the crate root (`crate::AppState`): it lives in
#      `state.rs`, so lib.rs stays a table of contents and nothing imports back up into it;
#   4. no circle of `crate::` imports between the files of a crate;
#   5. no `json!` bodies in route files: every body is a type (in `protocol` when it crosses a
#      process boundary);
#   6. no `tokio::spawn` outside supervision (clippy.toml's disallowed-methods, run by test.sh).
# Prints every breach, then fails if there was one.
#
#   scripts/check-house.sh            all of it
#   SKIP_CLIPPY=1 scripts/check-house.sh   without rule 2 (no build; for a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."

# Product crates: the services and the libraries they are made of. test-support, e2e-tests,
# loadgen and the reference client are tools around the product.
PRODUCT="config credentials protocol ws-codec redis service-kit server-directory chat-state registry socket-server
health-checker message-log kafka socket-manager message-service webhook-dispatcher"
MAX_FILE_LINES=600

python3 - "$MAX_FILE_LINES" $PRODUCT <<'PY'
import os, re, sys

max_lines = int(sys.argv[1])
crates = sys.argv[2:]
breaches = []

def non_test_lines(text):
    n = 0
    for line in text.splitlines():
        if line.startswith("#[cfg(test)]"):
            break
        n += 1
    return n

def module_of(src, path):
    """The module path of a source file: src/a/b.rs and src/a/b/mod.rs are a::b."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)

CRATE_PATH = re.compile(r"\bcrate::((?:[A-Za-z_][A-Za-z0-9_]*::)*)(\{[^{}]*\}|[A-Za-z_][A-Za-z0-9_]*)")

def referenced_modules(text):
    """Every `crate::a::b::Item` path in a file, braces expanded one level."""
    out = []
    for prefix, last in CRATE_PATH.findall(text):
        base = [p for p in prefix.split("::") if p]
        if last.startswith("{"):
            for part in last[1:-1].split(","):
                part = part.strip().split(" as ")[0]
                if part and part != "self":
                    out.append(tuple(base + [p for p in part.split("::") if p]))
                elif part == "self":
                    out.append(tuple(base))
        else:
            out.append(tuple(base + [last]))
    return out

for crate in crates:
    src = os.path.join(crate, "src")
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                files[module_of(src, path)] = path
    graph = {}
    for module, path in sorted(files.items()):
        text = open(path, encoding="utf-8").read()
        lines = non_test_lines(text)
        if lines > max_lines:
            breaches.append(f"{path}: {lines} non-test lines (at most {max_lines})")
        product = text.split("\n#[cfg(test)]", 1)[0]
        if re.search(r"\bcrate::AppState\b", product) or re.search(r"use crate::\{[^}]*\bAppState\b", product):
            breaches.append(f"{path}: takes the app state from the crate root (use crate::state::AppState)")
        if re.search(r"(^|/)routes?(/|\.rs$|s/)", os.path.relpath(path, src)) or "routes" in path:
            for i, line in enumerate(product.splitlines(), 1):
                if re.search(r"\bjson!\s*\(", line):
                    breaches.append(f"{path}:{i}: json! body in a route file (give the body a type)")
        targets = set()
        # Doc links name other modules without importing them.
        code = "\n".join(l for l in product.splitlines() if not l.lstrip().startswith("//"))
        for ref in referenced_modules(code):
            # The file that defines the longest existing module prefix of the path.
            for k in range(len(ref), 0, -1):
                if ref[:k] in files:
                    target = ref[:k]
                    break
            else:
                continue
            # A module naming its own descendants or ancestors is one room, not a circle.
            if target != module and target[:len(module)] != module and module[:len(target)] != target:
                targets.add(target)
        graph[module] = targets
    # Circles between files (Tarjan's strongly connected components).
    index, low, stack, on, counter, comps = {}, {}, [], set(), [0], []
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)
    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            strong(v)
    for comp in comps:
        members = set(comp)
        edges = sorted(f"{files[a]} -> {files[b]}" for a in comp for b in graph[a] if b in members)
        breaches.append(f"{crate}: files import each other in a circle: {'; '.join(edges)}")

for b in breaches:
    print(f"check-house: {b}")
if breaches:
    sys.exit(f"check-house: {len(breaches)} breach(es) of the house rules (see docs/architecture.md)")
print(f"check-house: file sizes, app state, import circles and route bodies ok ({len(crates)} crates)")
PY

if [ "${SKIP_CLIPPY:-0}" != 1 ]; then
    packages=()
    for crate in $PRODUCT; do
        packages+=(-p "$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
            python3 -c 'import json, sys
crate = sys.argv[1]
for p in json.load(sys.stdin)["packages"]:
    if p["manifest_path"].endswith(f"/{crate}/Cargo.toml"):
        print(p["name"])' "$crate")")
    done
    cargo clippy --quiet "${packages[@]}" --lib --bins -- -D warnings -D clippy::too_many_lines
    echo "check-house: no product function over 80 lines"
fi
