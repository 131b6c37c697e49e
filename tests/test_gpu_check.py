"""``make gpu-check`` from a bare copy of the repository, reproduced on CPU up to the CUDA steps.

The lent GPU machine has torch, triton, pytest and hypothesis but no fastclr install, no native
build and no kornia. This test copies the tracked tree to a temporary folder, runs Python with
``-S`` (no site processing: the editable install's import hook of this checkout stays out) and
only the interpreter's site-packages on ``PYTHONPATH`` behind a folder that hides kornia, and runs
``scripts/gpu_check.sh --dry-run`` there: the package, its Triton kernels and both benchmark
scripts import from the copy, pytest collects the compiled-kernel tests, and every step shows its
command, budget and output under ``$OUT``. The step runner itself is checked with a failing and
a slow stand-in step (``GPU_CHECK_SELFTEST``). Costs ~30 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
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


def _bare_env(tmp_path: Path) -> dict[str, str]:
    """The device image's view: no fastclr install (``-S`` keeps the editable install's import
    hook out), only the interpreter's site-packages, kornia hidden."""
    hide = tmp_path / "hide"  # packages the device image does not have
    (hide / "kornia").mkdir(parents=True)
    (hide / "kornia" / "__init__.py").write_text("raise ImportError('not on the device image')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PY=str(wrapper), PYTHONPATH=f"{hide}:{sysconfig.get_paths()['purelib']}")
    return env


@pytest.mark.slow
def test_gpu_check_dry_run_from_a_bare_copy(tmp_path: Path, quick: bool = False) -> None:
    """Real imports (every kernel module, both benchmarks) and test collection from a bare copy,
    then each step's command, budget and output under $OUT; the budgets fit the stated total."""
    copy = tmp_path / "repo"
    _bare_copy(copy)
    shutil.rmtree(copy / "bench" / "results" / "gpu-check", ignore_errors=True)  # earlier runs
    assert not (copy / "fastclr" / "kernels").exists()
    assert not list((copy / "fastclr").glob("_cpu*"))  # no native build in the copy
    env = {**_bare_env(tmp_path), "OUT": str(tmp_path / "out")}
    args = ["--dry-run", *(["--quick"] if quick else [])]
    result = subprocess.run(
        ["bash", str(copy / "scripts" / "gpu_check.sh"), *args],
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
    assert "[gpu_loss] dry run: torch" in out  # gpu_loss.py imported everything it uses
    collected = next(line for line in out.splitlines() if "collected" in line)
    assert "error" not in collected.lower(), out[-3000:]
    steps = [line for line in out.splitlines() if line.startswith("[gpu-check] step ")]
    assert len(steps) == (4 if quick else 8), out
    budgets = []
    for line in steps:
        m = re.search(r"budget (\d+)s, output (\S+)", line)
        assert m, line
        budgets.append(int(m.group(1)))
        assert m.group(2).startswith(str(tmp_path / "out")), line
    total = re.search(r"budgets add to (\d+)s \(limit (\d+)s\)", out)
    assert total and int(total.group(1)) == sum(budgets) <= int(total.group(2)) <= 540
    assert not (copy / "bench" / "results" / "gpu-check").exists()  # a dry run writes nothing
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_gpu_check_runner_keeps_going_and_publishes_each_step(tmp_path: Path) -> None:
    """The runner's positive control (GPU_CHECK_SELFTEST): a failing step and a step past its
    budget are recorded, the step after them still runs, and $OUT holds the three files."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OUT=str(out), GPU_CHECK_SELFTEST="1", GPU_CHECK_RESULTS=str(tmp_path / "res"))
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stdout + result.stderr  # the first failure's status
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu-check.log",
        "results.tar.gz",
        "summary.md",
    ]
    summary = (out / "summary.md").read_text()
    assert "| fails | failed (3) |" in summary
    assert "| slow | timed out |" in summary
    assert "| after | ok |" in summary and "after ran" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert {"gpu-check/fails.out", "gpu-check/slow.out", "gpu-check/after.out"} <= set(names)


@pytest.mark.slow
def test_gpu_loss_benchmark_smoke(tmp_path: Path) -> None:
    """bench/gpu_loss.py (run by gpu-check on the GPU) checks, times and writes its record on CPU
    under the interpreter at tiny sizes (~12 s)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_loss.py"), "--smoke", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "| triton | 96 | 128 |" in result.stdout
    record = json.loads((tmp_path / "gpu_loss.json").read_text())
    assert {r["impl"] for r in record["rows"]} == {"reference", "triton"}
    assert (tmp_path / "gpu_loss.md").exists()
