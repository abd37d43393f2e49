#!/usr/bin/env bash
# Rebuild the bundled filters (and the Extism plugins, plugins/extism/) into
# a temporary directory and fail if the committed .wasm differ from them (a
# source change was committed without rebuilding, or the toolchain is not
# the pinned one).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

bash "$here/build.sh" --out-dir "$tmp"

status=0
for name in rate_limiter pii_redactor; do
  if [ ! -f "$here/$name.wasm" ]; then
    echo "check_build.sh: plugins/$name.wasm is missing; run plugins/build.sh and commit it" >&2
    status=1
  elif ! cmp -s "$here/$name.wasm" "$tmp/$name.wasm"; then
    echo "check_build.sh: plugins/$name.wasm differs from a fresh build of plugins/$name/; run plugins/build.sh and commit the result" >&2
    status=1
  else
    echo "plugins/$name.wasm is up to date" >&2
  fi
done
mkdir "$tmp/extism"
bash "$here/extism/build.sh" --out-dir "$tmp/extism"
for name in rate_limiter header_redactor; do
  if [ ! -f "$here/extism/$name.wasm" ]; then
    echo "check_build.sh: plugins/extism/$name.wasm is missing; run plugins/extism/build.sh and commit it" >&2
    status=1
  elif ! cmp -s "$here/extism/$name.wasm" "$tmp/extism/$name.wasm"; then
    echo "check_build.sh: plugins/extism/$name.wasm differs from a fresh build of plugins/extism/$name/; run plugins/extism/build.sh and commit the result" >&2
    status=1
  else
    echo "plugins/extism/$name.wasm is up to date" >&2
  fi
done
exit "$status"
