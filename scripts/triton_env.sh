#!/usr/bin/env bash
# A second triton beside .venv's own: `bash scripts/triton_env.sh 3.6` installs triton 3.6.* into
# .venv/triton-3.6 (once) and prints that folder; put it first on PYTHONPATH to use it (torch,
# fastclr and everything else still come from .venv).
#
# triton 3.6 is the GPU image's version. Its interpreter turns one-element arrays into Python ints
# with int(array), which numpy 2.4 refuses ("only 0-dimensional arrays can be converted"), so its
# folder also holds numpy 2.3 (the last numpy that interpreter runs with).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: triton_env.sh MAJOR.MINOR}
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+$ ]] || { echo "triton_env.sh: MAJOR.MINOR expected, got '$VERSION'" >&2; exit 2; }
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TARGET=.venv/triton-$VERSION
PKGS=("triton==$VERSION.*")
[ "$VERSION" = "3.6" ] && PKGS+=("numpy==2.3.*")
if [ ! -f "$TARGET/.complete" ]; then
  "$PY" -m pip install -q --no-deps --upgrade --target "$TARGET" "${PKGS[@]}" >&2
  touch "$TARGET/.complete"
fi
echo "$TARGET"
