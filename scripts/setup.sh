#!/usr/bin/env bash
# Creates .venv and installs fastclr (editable, native CPU library compiled by CMake) with its
# development, evaluation, DALI and peer-comparison extras. Safe to re-run: it only rebuilds.
#
# torch: a machine with an NVIDIA GPU installs PyPI's default (CUDA) torch; a machine without one
# installs ${FASTCLR_TORCH:-torch==2.13.0}, the CPU wheel this project's machines provide. Where
# PyPI would hand you a CUDA wheel for that pin, set FASTCLR_TORCH_INDEX to a CPU wheel index.
# A torch already in the venv is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=${FASTCLR_EXTRAS:-dev,eval,dali,peers}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip)
"${PIP[@]}" install -q --upgrade pip

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing PyPI's CUDA torch"
    "${PIP[@]}" install -q torch
  else
    spec=${FASTCLR_TORCH:-torch==2.13.0}
    echo "[setup] no GPU: installing the CPU build ($spec)"
    if [ -n "${FASTCLR_TORCH_INDEX:-}" ]; then
      "${PIP[@]}" install -q "$spec" --index-url "$FASTCLR_TORCH_INDEX"
    else
      "${PIP[@]}" install -q "$spec"
    fi
  fi
fi

# The build needs no torch headers, so pip's isolated build environment stays small (scikit-build-core,
# nanobind); the compiled module lands in the package as fastclr._cpu.
echo "[setup] installing fastclr[$EXTRAS] (editable; compiling kernels/cpu with CMake)"
"${PIP[@]}" install -q -e ".[$EXTRAS]"
# scikit-build-core's editable "redirect" mode maps every module explicitly, but its .pth also puts
# the repository root on sys.path, which would make kernels/ importable as a top-level `kernels`.
# Drop those path lines: fastclr's files are still found through the redirect finder.
.venv/bin/python - <<'PY'
import pathlib, site
for sp in site.getsitepackages():
    pth = pathlib.Path(sp, "_editable_skbc_fastclr.pth")
    if pth.exists():
        keep = [ln for ln in pth.read_text().splitlines() if not ln.startswith("/")]
        pth.write_text("\n".join(keep) + "\n")
PY
.venv/bin/python - <<'PY'
import fastclr, fastclr._native as native
import torch
print(f"[setup] fastclr {fastclr.__version__}, torch {torch.__version__}, "
      f"native CPU library: {'ok' if native.available() else 'MISSING: ' + str(native.load_error())}")
PY
