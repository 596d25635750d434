#!/usr/bin/env bash
# Builds the S3-compatible object store the local stack and the attachment tests run: Garage 2.x
# from crates.io, into ~/.cache/switchboard/garage/bin/garage. The cache outlives the work tree
# (like the broker's, scripts/build-tansu.sh); a stamp of the version and features makes a
# change rebuild it. About 9 minutes on 2 idle cores, more on a busy machine.
#
# Garage is AGPL-3.0: Switchboard never links it. It runs as its own process (test-support's
# object_store.rs, compose) and the services talk plain S3 to it, so AWS S3, R2 or MinIO replace
# it by configuration alone (docs/deploy.md, "Object storage").
#
# Features: SQLite metadata only (bundled, no system library), without LMDB, K2V and the
# Prometheus exporter, which a single-node test store does not use and which cost build time.
set -euo pipefail

GARAGE_VERSION=2.5.0
GARAGE_FEATURES=bundled-libs,sqlite
GARAGE_ROOT="${HOME:-/root}/.cache/switchboard/garage"

stamp="garage-$GARAGE_VERSION $GARAGE_FEATURES"
if [ -x "$GARAGE_ROOT/bin/garage" ] && [ "$(cat "$GARAGE_ROOT/build-stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
echo "build-garage: building $stamp into $GARAGE_ROOT (one time, about 9 minutes on 2 idle cores)"

work="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-garage.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --locked: the Cargo.lock published with the crate pins every dependency.
CARGO_TARGET_DIR="$work/target" cargo install --locked --root "$work/root" \
    --no-default-features --features "$GARAGE_FEATURES" garage --version "=$GARAGE_VERSION"

mkdir -p "$GARAGE_ROOT/bin"
install -m 755 "$work/root/bin/garage" "$GARAGE_ROOT/bin/garage.new"
mv -f "$GARAGE_ROOT/bin/garage.new" "$GARAGE_ROOT/bin/garage"
echo "$stamp" > "$GARAGE_ROOT/build-stamp"
