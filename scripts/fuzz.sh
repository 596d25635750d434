#!/usr/bin/env bash
# Fuzzes client frame parsing, token verification, WebSocket frames and HTTP request heads
# with cargo-fuzz (libFuzzer), each for a bounded time. Not part of CI (it is open-ended by nature); run it after changing the frame
# or token code. The corpus grows in fuzz/corpus/<target>/ (commit what it adds); a crash
# lands in fuzz/artifacts/<target>/ and fails the script.
#
#   ./scripts/fuzz.sh [seconds per target, default 120] [target ...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET="${1:-120}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(client_frame jwt ws_frames http_head)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
# cargo-fuzz passes nightly-only sanitizer flags; the stable toolchain accepts them this way.
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$target"
    cargo fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -print_final_stats=1
done
