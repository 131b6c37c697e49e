#!/usr/bin/env bash
# Creates .venv-peers: the peers fastclr.compat is tested against, installed as users have them.
#
# lightly needs torchvision, and PyPI's torchvision beside the CPU torch 2.13 of .venv does not
# import; torch 2.14.1 + torchvision 0.29.1 (CUDA builds, which run on a CPU) do. That pair is
# several GB, so it lives in its own environment instead of replacing .venv's torch. Here:
# torch 2.14.1, torchvision 0.29.1, lightly, pytorch-metric-learning, and fastclr (editable, with
# its dev tools). `make test-peers` runs the compat tests and the torchvision cross-checks in it.
# Safe to re-run: an existing environment is only topped up.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-peers
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-peers] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torchvision, lightly" >/dev/null 2>&1; then
  echo "[setup-peers] installing torch 2.14.1, torchvision 0.29.1, lightly, pytorch-metric-learning"
  "${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1" lightly "pytorch-metric-learning>=2.0"
fi
echo "[setup-peers] installing fastclr[dev] (editable)"
"${PIP[@]}" install -q -e ".[dev]"
# the same .pth clean-up as scripts/setup.sh: keep kernels/ from being a top-level module
"$VENV/bin/python" - <<'PY'
import pathlib, site
for sp in site.getsitepackages():
    pth = pathlib.Path(sp, "_editable_skbc_fastclr.pth")
    if pth.exists():
        keep = [ln for ln in pth.read_text().splitlines() if not ln.startswith("/")]
        pth.write_text("\n".join(keep) + "\n")
PY
"$VENV/bin/python" - <<'PY'
import fastclr, fastclr._native as native, lightly, torch, torchvision
import pytorch_metric_learning as pml
print(f"[setup-peers] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"lightly {lightly.__version__}, pytorch-metric-learning {pml.__version__}, "
      f"native CPU library: {'ok' if native.available() else 'MISSING'}")
PY
