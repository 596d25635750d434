#!/usr/bin/env bash
# The fast test tier (docs/testing-fast-tier.md): every service crate's unit tests and its
# in-process tests (`Application::build` on port 0 against one Redis with Sentinels, one
# PostgreSQL and one broker started once per test binary), plus the shared libraries' unit
# tests. Not the whole-stack tests (e2e-tests) nor test-support's own harness tests.
#
#   scripts/test-fast.sh                # build, then run and time the tier
#   scripts/test-fast.sh api            # extra arguments go to every test binary (a filter)
#   FAST_TEST_THREADS=2 scripts/test-fast.sh
#
# The tests mostly wait on sockets, so a few more threads than cores is faster
# (FAST_TEST_THREADS, default 4). The wall time printed covers the run, not the build.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  -p registry -p message-service -p socket-manager -p socket-server -p health-checker
  -p switchboard-protocol -p switchboard-service-kit -p switchboard-server-directory
  -p switchboard-kafka -p switchboard-message-log -p switchboard-chat-state
)
# message-service's tests/ingest.rs restarts a PostgreSQL of its own to test an outage: it
# belongs to the slow tier (scripts/test.sh runs it with everything else).
targets=(--lib --bins --tests)
skip=(--skip stopped_while_the_database_is_down)

cargo test "${packages[@]}" "${targets[@]}" --no-run --quiet

log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$(date +%s.%N)
status=0
cargo test "${packages[@]}" "${targets[@]}" --quiet -- \
  --test-threads="${FAST_TEST_THREADS:-4}" "${skip[@]}" "$@" 2>&1 | tee "$log" || status=$?
ended=$(date +%s.%N)
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "fast tier: %d passed, %d failed\n", p, f }' "$log"
printf 'fast tier wall time: %.1f s\n' "$(echo "$ended - $started" | bc)"
exit "$status"
