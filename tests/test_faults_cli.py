"""Fault injection against the real command line, in subprocesses: kill -9 inside steps and inside
checkpoint writes (repeated, then resumed to the end), a disk that fills, a read-only output
folder, an existing run in --out, a finished run resumed, bad arguments, foreign checkpoints.

Every probe asserts the exit status, the message (one line, no traceback) and that no earlier
result was lost: the interrupted-and-resumed run must end with exactly the weights and the per-step
losses of an uninterrupted run, its CSV logs must hold each step and epoch once, and a failed save
must leave the previous checkpoint loadable. Tiny runs (digits at 8 px, a 1/8-width ResNet-18,
3 epochs of 3 steps); about 15 fastclr processes, 1-2 minutes on 2 cores in all.

``FASTCLR_FAULT_SEED`` picks the random kill points (default: fixed, so CI is repeatable).
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from fastclr.checkpoint import CHECKPOINT_NAME, load_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "fault_probe.py"
EPOCHS, STEPS = 3, 3
TINY = [
    "pretrain", "--data", "digits", "--epochs", str(EPOCHS), "--limit-steps", str(STEPS),
    "--batch-size", "16", "--image-size", "8", "--width", "0.125", "--log-every", "1",
    "--no-progress", "--threads", "1",
]  # fmt: skip
SEED = int(os.environ.get("FASTCLR_FAULT_SEED", "1234"))


def _env(**extra: str) -> dict[str, str]:
    # the test session's TRITON_INTERPRET (conftest) would make Triton "run" on the CPU
    env = {k: v for k, v in os.environ.items() if k not in ("FASTCLR_DEBUG", "TRITON_INTERPRET")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _cmd(args: list[str], fault: list[str] | None = None) -> list[str]:
    return [sys.executable, str(PROBE), *(fault or []), "--", *args]


def _run(
    args: list[str], fault: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(args, fault), capture_output=True, text=True, env=_env(**env), timeout=300
    )


@pytest.fixture
def error_line(one_error_line: Callable[[str], str]) -> Callable[..., str]:
    """``error_line(res)``: the one 'error:' line of a refused command, no traceback."""
    return lambda res: one_error_line(res.stderr)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run: what every interrupted one must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    res = _run([*TINY, "--out", str(out)])
    assert res.returncode == 0, res.stderr
    return out


def _kill_when(proc: subprocess.Popen[str], out: Path, step: int, timeout: float = 240) -> None:
    """SIGKILL ``proc`` once it has logged global step ``step`` itself (so inside a later step).

    Rows left by an earlier, killed process do not count: the file must have been written since
    ``proc`` started and its last row must be at ``step`` or later.
    """
    steps = out / "steps.csv"
    started = time.time_ns()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if steps.stat().st_mtime_ns > started and (out / CHECKPOINT_NAME).exists():
                rows = _rows(steps)
                if rows and rows[-1].get("global_step", "").isdigit():
                    if int(rows[-1]["global_step"]) >= step:
                        break
        except (OSError, csv.Error):
            pass
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_run_header_and_existing_run_refused(
    reference: Path, tmp_path: Path, error_line: Callable[..., str]
) -> None:
    # The reference run's own output is checked elsewhere; here: rerun into the same folder.
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = _snapshot(out)
    res = _run([*TINY, "--out", str(out)])
    assert res.returncode == 2
    line = error_line(res)
    assert "--resume" in line and "--overwrite" in line and str(out) in line
    assert _snapshot(out) == before  # nothing touched

    # Resuming the finished run: says so, exits 0, touches nothing.
    res = _run([*TINY, "--out", str(out), "--resume", str(out)])
    assert res.returncode == 0, res.stderr
    assert "already finished" in res.stdout and "Traceback" not in res.stderr
    assert _snapshot(out) == before

    # --overwrite replaces it with a fresh run (every step once again).
    res = _run([*TINY, "--out", str(out), "--overwrite"])
    assert res.returncode == 0, res.stderr
    assert [r["global_step"] for r in _rows(out / "steps.csv")] == [
        str(s) for s in range(1, EPOCHS * STEPS + 1)
    ]
    for key in ("data:", "images:", "loader:", "device:", "precision:", "arch:", "parameters:"):
        assert key in res.stdout, (key, res.stdout)


def test_kill9_in_steps_and_in_checkpoint_writes_then_resume(
    reference: Path, tmp_path: Path
) -> None:
    """Killed twice inside steps and twice inside checkpoint writes at random points, resumed each
    time: the run ends bit-identical to the uninterrupted one, each step and epoch logged once."""
    rng = random.Random(SEED)
    out = tmp_path / "run"
    resume = ["--resume", str(out)]
    total = EPOCHS * STEPS
    plan = ["step", "write", "step", "write"]
    first = True
    for fault in plan:
        args = [*TINY, "--out", str(out), *([] if first else resume)]
        if fault == "step":
            done = load_checkpoint(out)["global_step"] if not first else 0
            proc = subprocess.Popen(_cmd(args), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, text=True, env=_env())  # fmt: skip
            _kill_when(proc, out, step=rng.randint(max(done, STEPS) + 1, total - 1))
        else:
            before = load_checkpoint(out) if (out / CHECKPOINT_NAME).exists() else None
            frac = rng.uniform(0.0, 1.0)
            res = _run(args, ["--kill-in-write", f"{frac:.4f}"])
            assert res.returncode == -signal.SIGKILL, res.stderr
            assert _temps(out), "the killed writer left its temporary file"
            if before is not None:  # the previous checkpoint survived the torn write
                after = load_checkpoint(out)
                assert after["global_step"] == before["global_step"]
        first = first and not (out / CHECKPOINT_NAME).exists()
    res = _run([*TINY, "--out", str(out), *resume])
    assert res.returncode == 0, res.stderr
    assert not _temps(out), "stale temporary files were removed"

    steps, ref_steps = _rows(out / "steps.csv"), _rows(reference / "steps.csv")
    assert [r["global_step"] for r in steps] == [str(s) for s in range(1, total + 1)]
    assert [r["loss"] for r in steps] == [r["loss"] for r in ref_steps]  # exact resume
    assert [r["epoch"] for r in _rows(out / "epochs.csv")] == [str(e) for e in range(EPOCHS)]
    got, want = load_checkpoint(out), load_checkpoint(reference)
    assert got["global_step"] == want["global_step"] == total
    for name, t in want["model"].items():
        assert torch.equal(got["model"][name], t), name


def _mount_tmpfs(folder: Path, size: int) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    return res.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path, reference: Path) -> Iterator[tuple[Path, bool]]:
    """A folder on a tmpfs with room for the reference run plus half a checkpoint (the test sets
    the file system up itself and unmounts it); ``(folder, False)`` where mounting is refused."""
    folder = tmp_path / "disk"
    folder.mkdir()
    used = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    ckpt = (reference / CHECKPOINT_NAME).stat().st_size
    mounted = _mount_tmpfs(folder, used + ckpt // 2 + 64 * 1024)
    try:
        yield folder, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_and_read_only_keep_the_last_checkpoint(
    reference: Path, small_disk: tuple[Path, bool], error_line: Callable[..., str]
) -> None:
    folder, mounted = small_disk
    out = folder / "run"
    shutil.copytree(reference, out)
    more = [*TINY, "--epochs", str(EPOCHS + 1), "--out", str(out), "--resume", str(out)]
    fault = [] if mounted else ["--enospc-in-write"]
    res = _run(more, fault)
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert "No space left on device" in line and CHECKPOINT_NAME in line, line
    ck = load_checkpoint(out)  # verified by its digest
    assert ck["epoch"] == EPOCHS and not _temps(out)

    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    elif os.geteuid() != 0:
        out.chmod(0o555)
    else:
        pytest.skip("root without mount: a read-only folder cannot be made")
    try:
        res = _run(more)
    finally:
        if not mounted:
            out.chmod(0o755)
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert "--out" in line and str(out) in line
    assert "Read-only file system" in line or "Permission denied" in line
    assert load_checkpoint(out)["epoch"] == EPOCHS


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--threads", "-3"], "--threads"),
        (["--device", "cuda"], "--device"),
        (["--loss-backend", "triton", "--device", "cpu"], "--loss-backend"),
    ],
    ids=["threads", "cuda", "triton-on-cpu"],
)
def test_bad_arguments_one_line_no_traceback(
    args: list[str], flag: str, tmp_path: Path, error_line: Callable[..., str]
) -> None:
    if flag == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    res = _run([*TINY, "--out", str(out), *args])
    assert res.returncode == 2, res.stderr
    assert flag in error_line(res)
    assert not out.exists() or not any(out.iterdir())  # refused before writing anything


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = _run([*TINY, "--out", str(tmp_path / "run"), "--threads", "-3"], FASTCLR_DEBUG="1")
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_corrupted_and_foreign_checkpoints(
    reference: Path, tmp_path: Path, error_line: Callable[..., str]
) -> None:
    bad = tmp_path / "flipped.pt"
    raw = bytearray((reference / CHECKPOINT_NAME).read_bytes())
    weights = load_checkpoint(reference)["model"]
    w = next(t for t in weights.values() if t.numel() > 256 and t.ndim <= 2)
    at = raw.find(w.numpy().tobytes())
    assert at > 0
    raw[at + 100] ^= 0x40
    bad.write_bytes(bytes(raw))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    for path, what in ((bad, "is corrupted"), (text, "text file")):
        res = _run(["linear-eval", "--checkpoint", str(path), "--data", "digits"])
        assert res.returncode == 2, res.stderr
        line = error_line(res)
        assert what in line and str(path) in line, line
    res = _run([*TINY, "--out", str(tmp_path / "r"), "--resume", str(bad)])
    assert res.returncode == 2 and "is corrupted" in error_line(res)
