#!/usr/bin/env bash
# Copies the SDK's built ES modules into the demo page (nginx/html/sdk/), which imports them
# as they are: no bundler, no CDN, nothing fetched at runtime. The copies are committed, so
# nginx (tests, devstack, compose) serves the demo without Node; `--check` fails when they
# differ from a fresh build of src/ (clients/js/test.sh unit runs it).
#
#   clients/js/vendor-demo.sh          build, then copy
#   clients/js/vendor-demo.sh --check  build, then compare
set -euo pipefail
cd "$(dirname "$0")"
DEST=../../nginx/html/sdk
rm -rf dist
npx --no-install tsc -p tsconfig.build.json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in dist/*.js; do
  {
    echo "// Generated from clients/js/src/$(basename "${f%.js}").ts by clients/js/vendor-demo.sh: do not edit."
    grep -v '^//# sourceMappingURL=' "$f"
  } > "$tmp/$(basename "$f")"
done
if [ "${1:-}" = --check ]; then
  if ! diff -r "$tmp" "$DEST" > /dev/null 2>&1; then
    echo "nginx/html/sdk is not the build of clients/js/src: run clients/js/vendor-demo.sh" >&2
    diff -r "$tmp" "$DEST" | head -20 >&2 || true
    exit 1
  fi
  echo "nginx/html/sdk matches clients/js/src"
else
  rm -rf "$DEST"
  mkdir -p "$DEST"
  cp "$tmp"/*.js "$DEST/"
  echo "copied $(ls "$DEST" | wc -l) modules to nginx/html/sdk"
fi
