#!/usr/bin/env bash
# On a CUDA machine: the Triton tests with compiled kernels (not the interpreter), then the GPU loss
# benchmark (results under bench/results/). Whole run < 8 minutes; exits non-zero on any failure.
#
#   FASTCLR_TEST_COMPILED=1    stops tests/conftest.py from setting TRITON_INTERPRET=1
#   FASTCLR_TRITON_AUTOTUNE=0  one config per kernel during tests (dozens of shapes; tuning them
#                              all would take minutes); the benchmark autotunes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu-check] no CUDA device visible to torch: nothing to check" >&2
  exit 2
fi
unset TRITON_INTERPRET
# A bare copy of the repository (the lent device machine has torch and triton but no fastclr
# install): map kernels/ to fastclr.kernels with a link, as an install would.
if ! "$PY" -c "import fastclr.kernels.triton" >/dev/null 2>&1; then
  ln -sfn ../kernels fastclr/kernels
  echo "[gpu-check] no fastclr install: linked kernels/ as fastclr/kernels"
fi
"$PY" - <<'PY'
import torch, triton
print(f"[gpu-check] {torch.cuda.get_device_name()}, torch {torch.__version__}, "
      f"triton {triton.__version__}, CUDA {torch.version.cuda}")
PY

status=0
echo "[gpu-check] tests with compiled kernels"
FASTCLR_TEST_COMPILED=1 FASTCLR_TRITON_AUTOTUNE=0 timeout 300 \
  "$PY" -m pytest -q -x -p no:cacheprovider tests/test_triton_ntxent.py \
  tests/test_augment_triton.py || status=$?
if [ "$status" -ne 0 ]; then
  echo "[gpu-check] FAILED: compiled-kernel tests (exit $status)" >&2
  exit "$status"
fi

echo "[gpu-check] loss benchmark"
timeout 180 "$PY" bench/gpu_loss.py --out bench/results || status=$?
if [ "$status" -ne 0 ]; then
  echo "[gpu-check] FAILED: bench/gpu_loss.py (exit $status)" >&2
  exit "$status"
fi
echo "[gpu-check] main benchmark (loss, augmentation, end to end) on the GPU"
timeout 240 "$PY" bench/throughput.py --out bench/results || status=$?
if [ "$status" -ne 0 ]; then
  echo "[gpu-check] FAILED: bench/throughput.py (exit $status)" >&2
  exit "$status"
fi
echo "[gpu-check] ok"
