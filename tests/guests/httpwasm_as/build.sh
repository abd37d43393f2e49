#!/usr/bin/env bash
# Rebuild httpwasm_as.wasm from index.ts with the plugins/ project's pinned
# AssemblyScript compiler (run `npm ci` in plugins/ first if it is missing).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugins="$here/../../../plugins"
cd "$here"
"$plugins/node_modules/.bin/asc" index.ts \
  --optimize \
  --runtime incremental \
  --exportStart _initialize \
  --use abort=index/guestAbort \
  --noColors \
  --outFile httpwasm_as.wasm
echo "built httpwasm_as.wasm ($(wc -c < httpwasm_as.wasm) bytes)" >&2
