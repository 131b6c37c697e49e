#!/usr/bin/env bash
# Ahead-of-time compile check of every Triton kernel for sm_90 (no GPU needed): `make aot-check`.
#
#   bash scripts/aot_check.sh [--triton VERSION] [--full] [--out DIR] [--jobs N] [--stem S]
#                             [--baseline FILE] [--limit N]
#
#   (no --triton)       the environment's own triton        -> DIR/triton-sm90.{md,json}
#   --triton 3.6        triton 3.6.* in .venv/triton-3.6    -> DIR/triton-sm90-triton3.6.{md,json}
#                       (made by scripts/triton_env.sh on first use; a bare "3.6" works too)
#   --full              the whole configuration product instead of the CI set
#   --out DIR           where the report goes (default bench/results)
# Every other option goes to bench/aot_check.py unchanged (it rejects the ones it does not know).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

VERSION=""
ARGS=()
STEM_SET=0
while [ $# -gt 0 ]; do
  case "$1" in
    --triton) [ $# -ge 2 ] || { echo "aot_check.sh: --triton needs a version (e.g. 3.6)" >&2; exit 2; }
              VERSION=$2; shift 2 ;;
    --triton=*) VERSION=${1#--triton=}; shift ;;
    -h|--help) usage; exit 0 ;;
    --stem|--stem=*) STEM_SET=1; ARGS+=("$1"); shift ;;
    [0-9]*.*) if [ -z "$VERSION" ] && [ ${#ARGS[@]} -eq 0 ]; then VERSION=$1; shift
              else echo "aot_check.sh: unexpected argument '$1' (a version goes first or after --triton)" >&2; exit 2; fi ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -n "$VERSION" ] && ! [[ "$VERSION" =~ ^[0-9]+\.[0-9]+$ ]]; then
  echo "aot_check.sh: --triton takes MAJOR.MINOR (e.g. 3.6), got '$VERSION'" >&2
  exit 2
fi

if [ -z "$VERSION" ]; then
  exec "$PY" bench/aot_check.py ${ARGS[@]+"${ARGS[@]}"}
fi
TARGET=$(bash scripts/triton_env.sh "$VERSION")
[ "$STEM_SET" -eq 1 ] || ARGS+=(--stem "triton-sm90-triton$VERSION")
# that triton shadows the environment's own; torch and fastclr come from the environment
PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" TRITON_CACHE_DIR="$TARGET/cache" \
  exec "$PY" bench/aot_check.py "${ARGS[@]}"
