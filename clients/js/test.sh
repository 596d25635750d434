#!/usr/bin/env bash
# Builds and tests @switchboard/client: the three tiers the package has today.
#
#   clients/js/test.sh              everything: unit, package, integration (starts the stack)
#   clients/js/test.sh unit         typecheck + vitest unit tests + build + the demo's copy is current
#                                   (vendor-demo.sh --check) + npm pack install check
#   clients/js/test.sh integration  build + the SDK in Node against the real stack
#
# Integration needs the debug service binaries (cargo build --bins; SWITCHBOARD_BIN_DIR to use
# others) and the stack's free fixed ports: it runs target/debug/devstack on 127.0.0.1 (nginx
# 8080, five socket servers 9001-9005, a proxy that refuses WebSocket upgrades on 8081, ...)
# with test timings and a known JWT secret, and stops it at the end. The files run one at a
# time in name order (test/integration/*.test.mjs): the ones that kill socket servers come
# last. With BASE_URL, SERVER_PIDS and JWT_SECRET (and NO_WEBSOCKET_URL, the proxy; unset: its
# tests are skipped) already set (a stack someone else started), it uses that stack instead. Dependencies are the pinned package-lock.json
# (`npm ci`, from npm's cache when it can); a node_modules installed from the same lock file is
# reused, so a second run needs no network.
set -euo pipefail
cd "$(dirname "$0")"
JS_DIR=$PWD
ROOT=$(cd ../.. && pwd)
MODE=${1:-all}

install_deps() {
  local want have=''
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  [ -f node_modules/.switchboard-lock ] && have=$(cat node_modules/.switchboard-lock)
  if [ "$want" != "$have" ]; then
    npm ci --prefer-offline --no-audit --no-fund --loglevel=error
    echo "$want" > node_modules/.switchboard-lock
  fi
}

unit() {
  echo "== @switchboard/client: typecheck"
  npx --no-install tsc -p tsconfig.json --noEmit
  echo "== @switchboard/client: unit tests"
  npx --no-install vitest run
  build
  echo "== @switchboard/client: the demo page's copy (nginx/html/sdk) is this build"
  ./vendor-demo.sh --check
  echo "== @switchboard/client: npm pack, then install the tarball into an empty project"
  local tmp
  tmp=$(mktemp -d)
  npm pack --silent --pack-destination "$tmp" > /dev/null
  (
    cd "$tmp"
    echo '{"name":"sdk-consumer","version":"0.0.0","private":true,"type":"module"}' > package.json
    npm install --offline --no-audit --no-fund --loglevel=error ./switchboard-client-*.tgz
    test -f node_modules/@switchboard/client/dist/index.d.ts
    node --input-type=module -e "
      import { SwitchboardClient, MemoryStorage } from '@switchboard/client';
      const c = new SwitchboardClient({ baseUrl: 'http://x', getToken: () => 't', storage: new MemoryStorage(), fetch: async () => { throw new Error('offline'); } });
      if (c.state !== 'disconnected') throw new Error('state ' + c.state);
      console.log('installed package imports: ok');"
  )
  rm -rf "$tmp"
}

build() {
  echo "== @switchboard/client: build (tsc → dist/)"
  rm -rf dist
  npx --no-install tsc -p tsconfig.build.json
}

DEVSTACK_PID=''
stop_stack() {
  if [ -n "$DEVSTACK_PID" ] && kill -0 "$DEVSTACK_PID" 2>/dev/null; then
    kill -TERM "$DEVSTACK_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$DEVSTACK_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DEVSTACK_PID" 2>/dev/null || true
  fi
}

start_stack() {
  local bin=${SWITCHBOARD_BIN_DIR:-$ROOT/target/debug}
  [ -x "$bin/devstack" ] || { echo "$bin/devstack is missing: cargo build -p switchboard-test-support --bins (and the services' --bins)" >&2; exit 1; }
  export JWT_SECRET=${JWT_SECRET:-js-client-test-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
  local log=$ROOT/.run/js-client-devstack.log
  mkdir -p "$ROOT/.run"
  echo "== starting the stack (devstack; its output in $log, services' logs in .run/logs/)"
  # Test timings as test-support's fast_timings: heartbeat 1 s, client timeout 4 s. Five socket
  # servers: stack.test.mjs and ws-blocked.test.mjs kill two each, and each kill needs another
  # server to move to. The proxy on 8081 refuses WebSocket upgrades (ws-blocked.test.mjs).
  DEVSTACK_LISTEN_ADDR=127.0.0.1 SWITCHBOARD_BIN_DIR=$bin SB_JWT_SECRET=$JWT_SECRET \
    DEVSTACK_SOCKET_SERVERS=5 DEVSTACK_NO_WEBSOCKET_PORT=8081 \
    SB_HEARTBEAT_INTERVAL_MS=1000 SB_CLIENT_TIMEOUT_MS=4000 SB_RECONCILE_INTERVAL_MS=500 \
    SB_HANDLER_TTL_MS=3000 \
    "$bin/devstack" > "$log" 2>&1 &
  DEVSTACK_PID=$!
  trap stop_stack EXIT
  for _ in $(seq 1 1800); do
    grep -q 'dev stack is up' "$log" && break
    kill -0 "$DEVSTACK_PID" 2>/dev/null || { echo "devstack exited:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q 'dev stack is up' "$log" || { echo "devstack did not come up in 180 s" >&2; tail -20 "$log" >&2; exit 1; }
  export BASE_URL=http://127.0.0.1:8080 NO_WEBSOCKET_URL=http://127.0.0.1:8081
  # Each socket server's id (SB_SERVER_ID) → its pid, so the tests can SIGTERM/SIGKILL the one a client is on.
  local pairs=() pid id
  for pid in $(pgrep -P "$DEVSTACK_PID"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = socket-server ] || continue
    id=$(tr '\0' '\n' < "/proc/$pid/environ" | sed -n 's/^SB_SERVER_ID=//p')
    pairs+=("\"$id\":$pid")
  done
  [ "${#pairs[@]}" -ge 5 ] || { echo "found ${#pairs[@]} socket servers under devstack, want 5" >&2; exit 1; }
  SERVER_PIDS="{$(IFS=,; echo "${pairs[*]}")}"
  export SERVER_PIDS
}

integration() {
  build
  if [ -z "${BASE_URL:-}" ]; then start_stack; fi
  echo "== @switchboard/client: integration tests against $BASE_URL"
  # *.test.mjs only (helpers.mjs is not a test), in name order: ws-blocked.test.mjs last.
  node --experimental-websocket --test --test-concurrency=1 test/integration/*.test.mjs
}

install_deps
case "$MODE" in
  unit) unit ;;
  integration) integration ;;
  all) unit; integration ;;
  *) echo "usage: $0 [unit|integration|all]" >&2; exit 2 ;;
esac
echo "== @switchboard/client: all passed ($MODE)"
