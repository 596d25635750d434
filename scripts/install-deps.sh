#!/usr/bin/env bash
# Installs the system packages the local stack and the tests need (Debian/Ubuntu):
# redis-server, redis-sentinel, nginx-light, PostgreSQL; and the Kafka-protocol broker tansu
# (crates.io with our patches, built once into ~/.cache/switchboard/tansu by build-tansu.sh).
# Idempotent: skips apt entirely when the commands are already present. Works as root without a
# TTY. Then stops any redis/nginx system service (a package install auto-starts them) so they
# don't hold the fixed ports.
set -euo pipefail

need=()
command -v redis-server   >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# `docker-compose config` validates docker-compose.yml in the tests; scripts/compose-smoke.sh
# installs the Docker engine (docker.io) and debootstrap itself when it runs the stack.
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# The nemesis partition test cuts one socket server off the network (test-support/src/netcut.rs).
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# librdkafka is built with OpenSSL (the rdkafka `ssl` feature: Kafka over TLS and SASL SCRAM).
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# The broker's TLS test (kafka/tests/kafka_tls.rs) puts stunnel in front of tansu.
command -v stunnel4 >/dev/null 2>&1 || need+=(stunnel4)
# Monitoring and Kubernetes checks (scripts/check-deploy.sh, the e2e test `observability`):
# Prometheus and promtool, kubectl for `kubectl kustomize`, PyYAML for the dashboard generator.
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
python3 -c 'import yaml' >/dev/null 2>&1 || need+=(python3-yaml)

if [ "${#need[@]}" -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo" >&2; exit 1; }
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # Always the full set: apt skips whatever is installed already.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server redis-sentinel nginx-light "${need[@]}"
else
    echo "install-deps: redis-server, redis-sentinel, nginx and PostgreSQL already present"
fi

# The broker for the local stack and the tests: tansu 0.6.0 with the patches in scripts/tansu/,
# built once into a cache that outlives the work tree (rebuilt when a patch changes).
bash "$(dirname "${BASH_SOURCE[0]}")/build-tansu.sh"
# The S3-compatible store for attachments (Garage 2.x, AGPL: run as its own process), built once
# into ~/.cache/switchboard/garage the same way.
bash "$(dirname "${BASH_SOURCE[0]}")/build-garage.sh"

# The browser test (e2e-tests/tests/e2e/browser.rs): Debian's Chromium, driven by playwright-core
# from npm (web-tests/, locked by its package-lock.json; it downloads no browser of its own).
if [ ! -x /usr/bin/chromium ]; then
    echo "install-deps: installing chromium"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo" >&2; exit 1; }
        SUDO="sudo"
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
else
    echo "install-deps: chromium already present"
fi
WEB_TESTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/web-tests"
if [ ! -d "$WEB_TESTS/node_modules" ]; then
    command -v npm >/dev/null 2>&1 || { echo "install-deps: npm is needed for web-tests (apt-get install nodejs npm)" >&2; exit 1; }
    echo "install-deps: npm ci in $WEB_TESTS"
    npm ci --prefix "$WEB_TESTS" --no-audit --no-fund
fi

# schemathesis (PyPI), pinned, in its own venv: the `openapi` e2e test drives every REST route
# with generated bad input through it.
SCHEMATHESIS_VENV="${HOME:-/root}/.cache/switchboard/venv"
SCHEMATHESIS_VERSION=4.32.5
if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "install-deps: schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
# websockets (PyPI), pinned, in the same venv: the `protocol_client` e2e test runs the independent
# Python client (clients/python, written from docs/protocol.md alone) with it.
WEBSOCKETS_VERSION=13.1
if ! "$SCHEMATHESIS_VENV/bin/python" -c "import websockets, sys; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" 2>/dev/null; then
    echo "install-deps: websockets $WEBSOCKETS_VERSION into $SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install -q "websockets==$WEBSOCKETS_VERSION"
fi

# The packages start system services on the ports the dev stack uses; stop them (quietly,
# whether or not they exist or run; there may be no init system at all in a container).
if [ "$(id -u)" -eq 0 ] && command -v service >/dev/null 2>&1; then
    for svc in redis-server redis-sentinel nginx postgresql prometheus; do
        service "$svc" stop >/dev/null 2>&1 || true
    done
fi
