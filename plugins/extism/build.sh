#!/usr/bin/env bash
# Build the seed gateway's plugins as Extism plugins with @extism/as-pdk:
# plugins/extism/rate_limiter.wasm, plugins/extism/header_redactor.wasm.
#
#   plugins/extism/build.sh                  build into plugins/extism/
#   plugins/extism/build.sh --out-dir DIR    build into DIR (check_build.sh uses this)
#
# Byte-for-byte reproducible, as plugins/build.sh: asc runs from this
# directory (only relative source names end up in the binary), no source
# maps, no debug info, pinned toolchain (package-lock.json).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$here"

while [ $# -gt 0 ]; do
  case "$1" in
    --out-dir)
      [ $# -ge 2 ] || { echo "build.sh: --out-dir needs a directory" >&2; exit 2; }
      out_dir="$(cd "$2" && pwd)"
      shift 2
      ;;
    -h|--help)
      sed -n '2,10p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *)
      echo "build.sh: unknown argument: $1" >&2
      exit 2
      ;;
  esac
done

cd "$here"

if ! command -v npm >/dev/null 2>&1; then
  echo "build.sh: npm not found; install Node.js (>= 20) to build the plugins" >&2
  exit 2
fi
if [ ! -x node_modules/.bin/asc ] || [ ! -d node_modules/@extism/as-pdk ]; then
  npm ci --no-audit --no-fund >&2
fi

PLUGINS=(rate_limiter header_redactor)

for name in "${PLUGINS[@]}"; do
  node_modules/.bin/asc "$name/index.ts" \
    --optimize \
    --runtime incremental \
    --use abort=lib/abort/extismAbort \
    --noColors \
    --outFile "$out_dir/$name.wasm"
  echo "built extism/$name.wasm ($(wc -c < "$out_dir/$name.wasm") bytes)" >&2
done
