#!/usr/bin/env bash
# Builds the release binaries and runs the whole local stack (see `devstack`): nginx on :8080,
# registries 8101/8102, socket servers 9001-9003, socket managers 8201/8202, message service
# 8401, health checkers 8301/8302, PostgreSQL 5432, broker 9092, Redis 6379-6381, Sentinels
# 26379-26381, and (unless SB_DEVSTACK_WEBHOOKS=false) the webhook dispatcher 8501 with push
# notifications and push-gateway-sink 8502, which records pushes and webhooks; the banner prints
# a dev API key for the server API. The demo is at http://localhost:8080/. Logs in .run/logs/.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --bins
export SWITCHBOARD_BIN_DIR="$PWD/target/release"
exec "$SWITCHBOARD_BIN_DIR/devstack"
