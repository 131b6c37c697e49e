#!/usr/bin/env bash
# On a CUDA machine: the Triton tests with compiled kernels (not the interpreter), then the GPU
# benchmarks (results under bench/results/). Works from a bare copy of the repository (no install,
# no build: torch, triton, pytest and hypothesis are all it needs). Exits non-zero on any failure.
#
#   bash scripts/gpu_check.sh            the full check (needs a CUDA device)
#   bash scripts/gpu_check.sh --dry-run  the import and collection steps only, then stop before
#                                        anything needs CUDA (tests/test_gpu_check.py runs this
#                                        on CPU from a temporary bare copy)
#
# Wall-time budget (timeouts, in seconds): tests 150 + gpu_loss 100 (it autotunes) + throughput 80
# = 330 s < 6 min, compiles included.
#   FASTCLR_TEST_COMPILED=1    stops tests/conftest.py from setting TRITON_INTERPRET=1
#   FASTCLR_TRITON_AUTOTUNE=0  one config per kernel during tests (tuning every shape would take
#                              minutes); the benchmark autotunes
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# Every script imports the package from this copy, never from an install elsewhere.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
# An install maps kernels/ to fastclr.kernels; a bare copy gets the same mapping from a link.
if [ ! -e fastclr/kernels ]; then
  ln -sfn ../kernels fastclr/kernels
  echo "[gpu-check] no fastclr install: linked kernels/ as fastclr/kernels"
fi

"$PY" - "$ROOT" <<'PY'
import os, sys
import torch, triton
import fastclr
import fastclr.kernels.triton.augment
import fastclr.kernels.triton.ntxent
import fastclr.ops.triton_ntxent
root = os.path.realpath(sys.argv[1])
where = os.path.realpath(fastclr.__file__)
if not where.startswith(root + os.sep):
    sys.exit(f"[gpu-check] fastclr imported from {where}, not from this copy ({root})")
cuda = torch.version.cuda
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"[gpu-check] {name}, torch {torch.__version__}, triton {triton.__version__}, CUDA {cuda}; "
      f"fastclr from {os.path.dirname(where)}")
PY

TESTS=(tests/test_triton_ntxent.py tests/test_augment_triton.py)
echo "[gpu-check] collecting the compiled-kernel tests"
FASTCLR_TEST_COMPILED=1 FASTCLR_TRITON_AUTOTUNE=0 \
  "$PY" -m pytest -q --collect-only -p no:cacheprovider "${TESTS[@]}" | tail -n 1
for script in bench/gpu_loss.py bench/throughput.py; do
  "$PY" "$script" --help >/dev/null
done
echo "[gpu-check] imports and collection ok"
if [ "$DRY" -eq 1 ]; then
  exit 0
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu-check] no CUDA device visible to torch: nothing to check" >&2
  exit 2
fi

status=0
# Every test, the slow ones too (slow only under the interpreter; they hold the ≥ 4 × 4 block and
# split cases): ~80 NT-Xent and ~10 augmentation compiles (row counts are not specialised, one
# config per kernel), spread over processes when pytest-xdist is there (the device image has it).
PARALLEL=()
if "$PY" -c "import xdist" >/dev/null 2>&1; then
  PARALLEL=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
fi
echo "[gpu-check] tests with compiled kernels ${PARALLEL[*]:-(one process)}"
FASTCLR_TEST_COMPILED=1 FASTCLR_TRITON_AUTOTUNE=0 timeout 150 \
  "$PY" -m pytest -q -x -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} "${TESTS[@]}" \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "[gpu-check] FAILED: compiled-kernel tests (exit $status)" >&2
  exit "$status"
fi

echo "[gpu-check] loss benchmark"
timeout 100 "$PY" bench/gpu_loss.py --out bench/results || status=$?
if [ "$status" -ne 0 ]; then
  echo "[gpu-check] FAILED: bench/gpu_loss.py (exit $status)" >&2
  exit "$status"
fi
echo "[gpu-check] main benchmark (loss, augmentation, end to end) on the GPU"
timeout 80 "$PY" bench/throughput.py --quick --out bench/results || status=$?
if [ "$status" -ne 0 ]; then
  echo "[gpu-check] FAILED: bench/throughput.py (exit $status)" >&2
  exit "$status"
fi
echo "[gpu-check] ok"
