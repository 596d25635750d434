#!/usr/bin/env bash
# The full check, as CI runs it: formatting, clippy, build of every binary (the integration
# and e2e tests start the real binaries), then every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace -- --test-threads=2
