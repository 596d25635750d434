#!/usr/bin/env bash
# Builds the Kafka-protocol broker the local stack and the tests run: tansu 0.6.0 from crates.io,
# with the patches in scripts/tansu/ applied to its storage crate, into
# ~/.cache/switchboard/tansu/bin/tansu. The cache outlives the work tree; a stamp of the version
# and the patches' contents makes a changed patch rebuild it. About 15-25 minutes on 2 cores.
#
# Why patched (docs/broker.md):
# - 0001: tansu 0.6's SQLite engine prepares (parses and plans) every statement anew for every
#   storage operation, and every operation runs on one task, so that preparing was most of the
#   broker's CPU per produce and per fetch poll (docs/performance.md, run 13). The patch keeps
#   each connection's prepared statements and resets them after each use.
# - 0002: tansu 0.6 holds every fetch for its whole wait, even with records in hand, and an empty
#   fetch never reads again; so each delivery waited up to two fetch waits, and short waits
#   kept an idle broker busy. Patched, a fetch is answered as soon as records arrive
#   (docs/performance.md, run 15).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TANSU_VERSION=0.6.0
# sha256 of the .crate files as crates.io serves them (the same as its index's checksums).
TANSU_SHA256=4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
TANSU_STORAGE_SHA256=720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d
TANSU_ROOT="${HOME:-/root}/.cache/switchboard/tansu"

stamp="tansu-$TANSU_VERSION $(cat "$HERE"/tansu/*.patch | sha256sum | cut -c1-16)"
if [ -x "$TANSU_ROOT/bin/tansu" ] && [ "$(cat "$TANSU_ROOT/build-stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
echo "build-tansu: building $stamp into $TANSU_ROOT (one time, 15-25 minutes)"

work="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-tansu.XXXXXX")"
trap 'rm -rf "$work"' EXIT

fetch_crate() { # name sha256
    local file="$work/$1-$TANSU_VERSION.crate"
    local url="https://static.crates.io/crates/$1/$1-$TANSU_VERSION.crate"
    if command -v curl >/dev/null 2>&1; then
        curl -sSfL --retry 3 -o "$file" "$url"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$file"
    fi
    echo "$2  $file" | sha256sum -c --quiet -
    tar xzf "$file" -C "$work"
}
fetch_crate tansu "$TANSU_SHA256"
fetch_crate tansu-storage "$TANSU_STORAGE_SHA256"

for patch in "$HERE"/tansu/*.patch; do
    (cd "$work/tansu-storage-$TANSU_VERSION" && git apply "$patch")
done
printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage-%s" }\n' "$TANSU_VERSION" \
    >> "$work/tansu-$TANSU_VERSION/Cargo.toml"

# The published Cargo.lock pins every dependency; cargo changes only the patched crate's entry.
CARGO_TARGET_DIR="$work/target" cargo build --release --features dynostore,libsql \
    --manifest-path "$work/tansu-$TANSU_VERSION/Cargo.toml"

mkdir -p "$TANSU_ROOT/bin"
install -m 755 "$work/target/release/tansu" "$TANSU_ROOT/bin/tansu.new"
mv -f "$TANSU_ROOT/bin/tansu.new" "$TANSU_ROOT/bin/tansu"
echo "$stamp" > "$TANSU_ROOT/build-stamp"
