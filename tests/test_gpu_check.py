"""``make gpu-check`` from a bare copy of the repository, reproduced on CPU up to the CUDA steps.

The lent GPU machine has torch, triton, pytest and hypothesis but no fastclr install, no native
build and no kornia. This test copies the tracked tree to a temporary folder, runs Python with
``-S`` (no site processing: the editable install's import hook of this checkout stays out) and
only the interpreter's site-packages on ``PYTHONPATH`` behind a folder that hides kornia, and runs
``scripts/gpu_check.sh --dry-run`` there: the package, its Triton kernels and both benchmark
scripts import from the copy, and pytest collects the compiled-kernel tests. Costs ~15 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to know which files a bare copy holds")
    return [f for f in out.decode().split("\0") if f]


def _bare_copy(dest: Path) -> None:
    for rel in _tracked_files():
        src = ROOT / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.mark.slow
def test_gpu_check_dry_run_from_a_bare_copy(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    _bare_copy(copy)
    assert not (copy / "fastclr" / "kernels").exists()
    assert not list((copy / "fastclr").glob("_cpu*"))  # no native build in the copy
    hide = tmp_path / "hide"  # packages the device image does not have
    (hide / "kornia").mkdir(parents=True)
    (hide / "kornia" / "__init__.py").write_text("raise ImportError('not on the device image')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PY=str(wrapper), PYTHONPATH=f"{hide}:{sysconfig.get_paths()['purelib']}")
    result = subprocess.run(
        ["bash", str(copy / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert f"fastclr from {copy.resolve() / 'fastclr'}" in out, out[-2000:]
    assert "imports and collection ok" in out
    collected = next(line for line in out.splitlines() if "collected" in line or "tests" in line)
    assert "error" not in collected.lower(), out[-3000:]


@pytest.mark.slow
def test_gpu_loss_benchmark_smoke(tmp_path: Path) -> None:
    """bench/gpu_loss.py (run by gpu-check on the GPU) checks, times and writes its record on CPU
    under the interpreter at tiny sizes (~12 s)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_loss.py"), "--smoke", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "| triton | 96 | 128 |" in result.stdout
    assert list(tmp_path.glob("gpu_loss-smoke-*.json"))
