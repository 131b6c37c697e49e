#!/usr/bin/env bash
# The Triton test files under another triton's interpreter: `make test-triton36` runs
# `bash scripts/triton_tests.sh 3.6` (the GPU image's triton), so that every kernel has executed
# under the compiler the GPU will use before a GPU sees it. Extra arguments go to pytest
# (default: -m "not slow", which keeps CI's added time to about three minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: triton_tests.sh MAJOR.MINOR [pytest args]}
shift
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TARGET=$(bash scripts/triton_env.sh "$VERSION")
[ $# -gt 0 ] || set -- -m "not slow"
export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" TRITON_INTERPRET=1
"$PY" - <<PY
import triton
assert triton.__version__.startswith("$VERSION."), f"triton {triton.__version__} is not $VERSION"
print(f"[triton-tests] triton {triton.__version__} from {triton.__file__}")
PY
exec "$PY" -m pytest -q -p no:cacheprovider "$@" \
  tests/test_triton_ntxent.py tests/test_triton_fused.py tests/test_augment_triton.py
