#!/usr/bin/env bash
# The fast test tier (docs/testing-fast-tier.md): every service crate's unit tests and its
# in-process tests (`Application::build` on port 0 against one Redis with Sentinels, one
# PostgreSQL and one broker started once per test binary), plus the shared libraries' unit
# tests. Not the whole-stack tests (e2e-tests) nor test-support's own harness tests.
#
#   scripts/test-fast.sh                # build, then run and time the tier
#   scripts/test-fast.sh api            # extra arguments go to every test binary (a filter)
#   FAST_TEST_JOBS=2 FAST_TEST_THREADS=2 scripts/test-fast.sh
#
# Test binaries run side by side (FAST_TEST_JOBS at once, default 3), each with
# FAST_TEST_THREADS test threads (default 4): a binary spends most of its time starting its
# fixtures and waiting on sockets and timers, so a few binaries at once fill two cores that
# one after the other (as `cargo test` runs them) leaves mostly idle. The wall time printed
# covers the run, not the build; each binary's own time is printed too.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  -p registry -p message-service -p socket-manager -p socket-server -p health-checker
  -p switchboard-protocol -p switchboard-service-kit -p switchboard-server-directory
  -p switchboard-kafka -p switchboard-message-log -p switchboard-chat-state
  -p switchboard-config -p switchboard-credentials
)
targets=(--lib --bins --tests)
# Test targets of the slow tier (`<crate dir>/<target>`; scripts/test.sh runs them with
# everything else): message-service's tests/ingest.rs starts a PostgreSQL and a broker of
# its own for every test, and kills or restarts them to test outages.
slow_targets=(message-service/ingest)
# Single tests of the slow tier, load tests that want the machine to themselves: the quota
# cost A/B in socket-manager (six arms of a hundred batches, figures in docs/architecture.md)
# and message-service's list storm (48 clients listing 5,000 conversations, bounding the
# ingest lag meanwhile to a second).
skip=(--skip what_the_quota_check_costs_per_message --skip a_conversation_list_storm_does_not_delay_ingest)
jobs=${FAST_TEST_JOBS:-3}
threads=${FAST_TEST_THREADS:-4}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build, and list each test executable with its crate directory and target name; the
# integration tests (kind `test`) first: they are the long ones, and one started last would
# run alone at the end.
cargo test "${packages[@]}" "${targets[@]}" --no-run --quiet --message-format=json-render-diagnostics \
  | jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test)
           | [(.manifest_path | sub("/Cargo.toml$"; "")), .target.kind[0], .target.name, .executable]
           | @tsv' \
  | sort -u | sort -t$'\t' -s -k2,2r >"$work/binaries"

# Runs one test binary in its crate's directory (as cargo does); writes its output to
# "$work/<n>.log" and "<status> <seconds> <label>" to "$work/<n>.result".
run_one() {
  local n=$1 dir=$2 kind=$3 name=$4 exe=$5
  shift 5
  local label status=0 started ended
  label="$(basename "$dir")/$name"
  [ "$kind" = test ] || label="$label ($kind)"
  started=$(date +%s.%N)
  (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe" --quiet --test-threads="$threads" \
    "${skip[@]}" "$@") >"$work/$n.log" 2>&1 || status=$?
  ended=$(date +%s.%N)
  printf '%s %.1f %s\n' "$status" "$(echo "$ended - $started" | bc)" "$label" >"$work/$n.result"
}

started=$(date +%s.%N)
n=0
while IFS=$'\t' read -r dir kind name exe; do
  if [[ " ${slow_targets[*]} " == *" $(basename "$dir")/$name "* && $kind == test ]]; then
    continue
  fi
  n=$((n + 1))
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run_one "$n" "$dir" "$kind" "$name" "$exe" "$@" &
done <"$work/binaries"
wait
ended=$(date +%s.%N)

status=0
for result in "$work"/*.result; do
  read -r code seconds label <"$result"
  log="${result%.result}.log"
  if [ "$code" != 0 ]; then
    status=1
    echo "=== $label: FAILED (exit $code)"
    cat "$log"
  fi
  printf '%7.1f s  %s  %s\n' "$seconds" "$label" \
    "$(grep -m1 '^test result:' "$log" || echo "(no result, exit $code)")" >>"$work/summary"
done
sort -k3 "$work/summary"
cat "$work"/*.log | awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "fast tier: %d passed, %d failed\n", p, f }'
printf 'fast tier wall time: %.1f s (%s binaries, %s at once, %s threads each)\n' \
  "$(echo "$ended - $started" | bc)" "$n" "$jobs" "$threads"
exit "$status"
