#!/usr/bin/env bash
# The benchmark, one command: builds release binaries, starts the local stack, runs every
# loadgen scenario and the reference ceilings, then runs the Socket.IO peer harness with the
# same shapes in the same run, and writes BENCHMARKS.md.
#
# Knobs (env): D (seconds per rate step, 10), S2_RATES, S3_RATES, S1_C (3000), S2_C (2000),
# S3_C (1000), PEER (1 to run the Socket.IO peer, default 1), SCENARIOS (subset of
# "static s4 echo broker s1 s2 s3"), OUT (BENCHMARKS.md), SOAK (1: finish with the nemesis
# soak, every fault in sequence against the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
D=${D:-10}
S2_RATES=${S2_RATES:-2000,5000,10000,15000,20000}
S3_RATES=${S3_RATES:-50,100,200,400,800}
S1_C=${S1_C:-3000}
S2_C=${S2_C:-2000}
S3_C=${S3_C:-1000}
PEER=${PEER:-1}
SCENARIOS=${SCENARIOS:-"static s4 echo broker s1 s2 s3"}
OUT=${OUT:-$ROOT/BENCHMARKS.md}
RES="$ROOT/.run/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RES"
ulimit -n 65536 2>/dev/null || ulimit -n 20000 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)
log() { echo "[bench $(date +%H:%M:%S)] $*" | tee -a "$RES/bench.log"; }

bash scripts/install-deps.sh
log "building release binaries"
cargo build --release --bins 2>&1 | tail -2

export SB_JWT_SECRET="bench-$(date +%s)"
export SB_MAX_CONNECTIONS=10000000        # assign reservations must not run out in S4
export SB_RESERVATION_TTL_MS=3000
export SB_CLIENT_RATE_PER_SEC=2000
export SB_CLIENT_RATE_BURST=4000
export RUST_LOG=warn
# The message path only, as every earlier run measured it: no webhook dispatcher, push
# notifier or sink (devstack starts them by default; they read the log off the message path).
export SB_DEVSTACK_WEBHOOKS=false
STACK_PID=""
cleanup() {
  if [ -n "$STACK_PID" ] && kill -0 "$STACK_PID" 2>/dev/null; then
    kill -TERM "$STACK_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$STACK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$STACK_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

log "starting the stack"
SWITCHBOARD_BIN_DIR="$ROOT/target/release" DEVSTACK_LISTEN_ADDR=127.0.0.1 \
  "$ROOT/target/release/devstack" > "$RES/devstack.log" 2>&1 &
STACK_PID=$!
for _ in $(seq 1 120); do
  grep -q "dev stack is up" "$RES/devstack.log" 2>/dev/null && break
  kill -0 "$STACK_PID" 2>/dev/null || { cat "$RES/devstack.log"; exit 1; }
  sleep 1
done
grep -q "dev stack is up" "$RES/devstack.log" || { log "stack did not come up"; exit 1; }

# Process groups whose CPU seconds are reported.
group_pids() {
  case "$1" in
    socket-servers) pgrep -f "target/release/socket-server" ;;
    managers) pgrep -f "target/release/socket-manager" ;;
    registries) pgrep -f "target/release/registry" ;;
    message-service) pgrep -f "target/release/message-service" ;;
    health-checkers) pgrep -f "target/release/health-checker" ;;
    redis) pgrep -x redis-server; pgrep -f redis-sentinel ;;
    broker) pgrep -x tansu ;;
    database) pgrep -x postgres ;;
    nginx) pgrep -x nginx ;;
  esac 2>/dev/null || true
}
GROUPS_LIST="socket-servers managers registries message-service health-checkers redis broker database nginx"
cpu_of() { # total utime+stime seconds of a group
  local total=0 pid t
  for pid in $(group_pids "$1"); do
    t=$(awk '{ sub(/^[^)]*\) /, ""); print $12+$13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  awk -v t="$total" -v h="$CLK_TCK" 'BEGIN { printf "%.2f", t / h }'
}
SOCKET_PIDS=$(group_pids socket-servers | paste -sd, -)
LG="$ROOT/target/release/loadgen"
run() { # name, loadgen args...
  local name=$1; shift
  case " $SCENARIOS " in *" $name "*) ;; *) return 0 ;; esac
  declare -A before
  for g in $GROUPS_LIST; do before[$g]=$(cpu_of "$g"); done
  log "scenario $name: $*"
  local status=0
  "$LG" "$@" --base-url http://127.0.0.1:8080 --jwt-secret "$SB_JWT_SECRET" \
    --out "$RES/$name.json" > /dev/null 2> "$RES/$name.log" || status=$?
  tail -5 "$RES/$name.log" | sed 's/^/    /'
  { echo "{"; local first=1
    for g in $GROUPS_LIST; do
      [ $first = 1 ] || echo ","; first=0
      printf '"%s": %s' "$g" "$(awk -v a="$(cpu_of "$g")" -v b="${before[$g]}" 'BEGIN { printf "%.2f", a - b }')"
    done; echo "}"; } > "$RES/$name.cpu.json"
  echo "$status" > "$RES/$name.status"
}

run static static --duration "$D" --concurrency 64
run s4 s4 --duration "$D" --concurrency 64
run echo echo --duration "$D" --clients 100
run broker broker --clients 50000 --brokers 127.0.0.1:9092
run s1 s1 --clients "$S1_C" --server-pids "$SOCKET_PIDS"
run s2 s2 --clients "$S2_C" --rates "$S2_RATES" --duration "$D"
run s3 s3 --clients "$S3_C" --rates "$S3_RATES" --duration "$D"

log "stopping the stack"
cleanup
STACK_PID=""

if [ "$PEER" = 1 ]; then
  log "running the Socket.IO peer with the same shapes"
  PEER_DIR="$ROOT/../shared/peers/socketio"
  PEER_WORK="$RES/socketio"
  mkdir -p "$PEER_WORK"
  cp -r "$PEER_DIR"/. "$PEER_WORK/"
  (cd "$PEER_WORK" && npm ci --silent > "$RES/peer-npm.log" 2>&1 \
     && SKIP_WAIT=1 D="$D" S1_C="$S1_C" S2_C="$S2_C" S3_C="$S3_C" S2_RATES="$S2_RATES" S3_RATES="$S3_RATES" \
        RESULTS="$PEER_WORK/results" ./run.sh > "$RES/peer.log" 2>&1) || log "peer run failed (see $RES/peer.log)"
fi

# The report reads each scenario's exact arguments back from bench.log.
python3 "$ROOT/scripts/bench_report.py" "$RES" > "$OUT"
log "wrote $OUT (raw results in $RES)"

# The promise under every fault in sequence (minutes; SOAK=0 skips it). Speed is worth nothing
# if this fails.
if [ "${SOAK:-1}" = 1 ]; then
  log "nemesis soak: every fault in sequence"
  cargo build --workspace --bins 2>&1 | tail -1
  SWITCHBOARD_SOAK=1 cargo test -p switchboard-e2e-tests --test e2e nemesis_every_fault_in_sequence_soak \
    -- --nocapture > "$RES/soak.log" 2>&1 && log "soak passed" || log "SOAK FAILED (see $RES/soak.log)"
  grep '^nemesis\[' "$RES/soak.log" | tee -a "$RES/bench.log" || true
fi
