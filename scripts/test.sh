#!/usr/bin/env bash
# The full check, as CI runs it: formatting, clippy, build of every binary (the integration
# and e2e tests start the real binaries), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# CI builds once from a clean clone: incremental state would only double the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A full run needs a few gigabytes (target directory, PostgreSQL and broker data, compose images);
# say so plainly up front instead of failing later inside the linker.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); the full run needs about 6 GiB" >&2
fi

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# OTLP export (off by default) keeps compiling, linting clean, and flushing at exit.
cargo clippy -p switchboard-service-kit --features otlp --all-targets -- -D warnings
cargo test -p switchboard-service-kit --features otlp --lib telemetry
bash scripts/check-crate-graph.sh
# Inside each product crate: file and function sizes, app state out of the crate root, no
# import circles, typed route bodies (docs/architecture.md, "House rules").
bash scripts/check-house.sh
# Alert rules (promtool tests), the dashboard, and the Kubernetes manifests rendered and
# validated against the Kubernetes schemas.
bash scripts/check-deploy.sh
cargo build --workspace --bins
# Every test binary's summary is kept so the run ends with one plain total line.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
# The TypeScript SDK: typecheck, unit tests, package, then the SDK in Node 20 against the real
# stack (devstack on its fixed ports, so after the Rust tests, which use free ports, are done).
bash clients/js/test.sh
# docker-compose.yml for real: images built offline, scaled, a replica and the Redis master stopped.
# It runs the debug binaries built above (a fresh release build would add minutes to CI).
SB_SMOKE_BIN_DIR="$PWD/target/debug" bash scripts/compose-smoke.sh
