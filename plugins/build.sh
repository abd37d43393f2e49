#!/usr/bin/env bash
# Build the bundled filters: plugins/rate_limiter.wasm, plugins/pii_redactor.wasm.
#
#   plugins/build.sh                  build into plugins/
#   plugins/build.sh --out-dir DIR    build into DIR (check_build.sh uses this)
#
# The output is byte-for-byte reproducible: asc runs from this directory so
# only relative source names end up in the binary, with no source maps and
# no debug info.
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
      sed -n '2,9p' "${BASH_SOURCE[0]}"
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
  echo "build.sh: npm not found; install Node.js (>= 20) to build the filters" >&2
  exit 2
fi
if [ ! -x node_modules/.bin/asc ]; then
  npm ci --no-audit --no-fund >&2
fi

FILTERS=(rate_limiter pii_redactor)

for name in "${FILTERS[@]}"; do
  node_modules/.bin/asc "$name/index.ts" \
    --optimize \
    --runtime incremental \
    --use abort=sdk/abort/wasmgateAbort \
    --noColors \
    --outFile "$out_dir/$name.wasm"
  echo "built $name.wasm ($(wc -c < "$out_dir/$name.wasm") bytes)" >&2
done
