#!/usr/bin/env bash
# Ahead-of-time compile check of every Triton kernel for sm_90 (no GPU needed): `make aot-check`.
#
#   bash scripts/aot_check.sh            with the installed triton -> bench/results/triton-sm90.*
#   bash scripts/aot_check.sh 3.6        with triton 3.6.* installed into .venv/triton-3.6 (first
#                                        run downloads it) -> bench/results/triton-sm90-triton3.6.*
# Extra arguments after the version go to bench/aot_check.py (e.g. --full, --jobs N).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
VERSION=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$VERSION" ]; then
  exec "$PY" bench/aot_check.py "$@"
fi
TARGET=.venv/triton-$VERSION
if [ ! -d "$TARGET/triton" ]; then
  "$PY" -m pip install -q --no-deps --target "$TARGET" "triton==$VERSION.*"
fi
# that triton shadows the environment's own; torch and fastclr come from the environment
PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR="$TARGET/cache" \
  exec "$PY" bench/aot_check.py --stem "triton-sm90-triton$VERSION" "$@"
