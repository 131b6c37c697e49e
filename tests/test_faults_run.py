"""The second hardening round's run-folder, resume and signal probes, against the real command
line in subprocesses: two writers on one folder, --overwrite beside the user's own files, --out
inside --data, a data folder that changed or moved between a run and its resume, a run extended
after it finished, SIGTERM, a second Ctrl-C.

Each probe asserts the exit status, the one-line message (no traceback) and that nothing was lost
or trained on wrong data. Tiny runs (8-px images, a 1/8-width ResNet-18, one or two steps an
epoch); about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from fastclr.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fastclr.optim import WarmupCosine

pytestmark = pytest.mark.slow

TINY = [
    *("pretrain", "--batch-size", "8", "--image-size", "8", "--width", "0.125"),
    *("--log-every", "1", "--no-progress", "--threads", "1", "--lr", "0.5"),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FASTCLR_DEBUG", "TRITON_INTERPRET")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastclr", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=300,
    )


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastclr", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


@pytest.fixture
def refused(one_error_line: Callable[[str], str]) -> Callable[..., str]:
    """``refused(res)``: exit status 2 and the one 'error:' line, no traceback."""

    def check(res: subprocess.CompletedProcess[str]) -> str:
        assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
        return one_error_line(res.stderr)

    return check


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _folder(root: Path, per_class: int, start: int = 0) -> Path:
    """Two classes of tiny PNGs (8 px, so the in-memory loader takes them)."""
    for c, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            Image.new("RGB", (8, 8), (colour[0], i % 256, colour[2])).save(root / c / f"{i}.png")
    return root


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.communicate()


def test_one_writer_per_folder_and_sigterm_checkpoints(
    tmp_path: Path, refused: Callable[..., str]
) -> None:
    """A second run and a --resume into a folder a live run writes are refused naming its PID;
    SIGTERM (a scheduler's stop) checkpoints like Ctrl-C and exits 143; the logs hold each step
    once; a lock left by a dead process is taken over."""
    out = tmp_path / "run"
    args = [*TINY, "--data", "digits", "--epochs", "60", "--limit-steps", "1", "--out", str(out)]
    first = _start(*args)
    _wait_for(out / CHECKPOINT_NAME, first)
    for extra in ([], ["--resume"]):
        line = refused(_cli(*args, *extra))
        assert f"--out {out} is in use by another fastclr run (PID {first.pid}" in line
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    assert "terminated; checkpoint in" in stdout and "fastclr: terminated" in stderr
    ck = load_checkpoint(out)
    steps = [int(r["global_step"]) for r in _rows(out / "steps.csv")]
    assert steps == list(range(1, int(ck["global_step"]) + 1))  # each step once, in order
    assert not (out / ".fastclr.lock").exists()
    # a lock file whose process is gone (its flock released): taken over, said to be stale
    (out / ".fastclr.lock").write_text('{"pid": 999999, "host": "elsewhere", "since": 0}')
    res = _cli(*args[:-2], "--epochs", str(int(ck["epoch"]) + 1), "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert "took over the stale lock" in res.stderr and "PID 999999" in res.stderr


def test_overwrite_deletes_only_what_fastclr_wrote(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*TINY, "--data", "digits", "--epochs", "1", "--limit-steps", "1", "--out", str(out)]
    assert _cli(*args).returncode == 0
    (out / "tb").mkdir()
    (out / "tb" / "my-experiment.txt").write_text("mine")
    (out / "notes.md").write_text("mine too")
    old = load_checkpoint(out)["_read_from"]
    res = _cli(*args, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert (out / "tb" / "my-experiment.txt").read_text() == "mine"
    assert (out / "notes.md").read_text() == "mine too"
    assert load_checkpoint(out)["_read_from"] != old  # the run itself was replaced
    # a run folder from before the manifest: its known files go, tb/ is left and said so
    (out / ".fastclr-run.json").unlink()
    res = _cli(*args, "--overwrite")
    assert res.returncode == 0, res.stderr
    assert (out / "tb" / "my-experiment.txt").exists() and "left" in res.stderr


def test_out_inside_data_is_refused(tmp_path: Path, refused: Callable[..., str]) -> None:
    data = _folder(tmp_path / "images", 6)
    line = refused(_cli(*TINY, "--data", str(data), "--out", str(data / "run")))
    assert "--out" in line and "is inside --data" in line
    assert not (data / "run").exists()


def test_resume_notices_changed_data_and_adapts_the_schedule(
    tmp_path: Path, refused: Callable[..., str]
) -> None:
    data = _folder(tmp_path / "images", 20)  # 36 training images: 4 steps of 8 an epoch
    out = tmp_path / "run"
    args = [*TINY, "--data", str(data), "--epochs", "4", "--out", str(out)]
    assert _cli(*args, "--stop-after-epochs", "2").returncode == 0
    before = _rows(out / "steps.csv")
    _folder(data, 10, start=100)  # 20 more files
    line = refused(_cli(*TINY, "--out", str(out), "--resume"))
    assert "is not the data the checkpoint was trained on" in line and "more than" in line
    assert "--data-changed ok" in line
    res = _cli(*TINY, "--out", str(out), "--resume", "--data-changed", "ok")
    assert res.returncode == 0, res.stderr
    assert "data:" in res.stdout and "--data-changed ok" in res.stdout
    rows = _rows(out / "steps.csv")
    new = rows[len(before) :]
    assert len(new) == 2 * 6  # two epochs left, now of 54 // 8 = 6 steps
    last, first = float(before[-1]["lr"]), float(new[0]["lr"])
    assert 0.5 * last < first <= last  # the cosine goes on; it does not jump
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # no NaN row


def test_resume_after_files_were_removed_has_no_empty_epoch(tmp_path: Path) -> None:
    data = _folder(tmp_path / "images", 20)
    out = tmp_path / "run"
    args = [*TINY, "--data", str(data), "--epochs", "3", "--out", str(out)]
    proc = _start(*args)  # stopped by Ctrl-C in the middle of epoch 2 (4 steps an epoch)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "steps.csv").exists() and len(_rows(out / "steps.csv")) >= 7:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    for c in ("a", "b"):
        for p in sorted((data / c).iterdir())[10:]:
            p.unlink()
    res = _cli(*TINY, "--out", str(out), "--resume", "--data-changed", "ok")
    assert res.returncode == 0, res.stderr
    epochs = _rows(out / "epochs.csv")
    # the interrupted epoch had already taken more steps than the smaller data set gives an
    # epoch: it is over, and the run goes on with the next one (no empty epoch, no NaN row)
    assert int(epochs[-1]["epoch"]) == 2 and len(epochs) == len({e["epoch"] for e in epochs})
    assert all(float(e["images_per_s"]) > 0 and float(e["loss"]) > 0 for e in epochs)


def test_a_relative_data_path_is_resumed_from_anywhere(
    tmp_path: Path, refused: Callable[..., str]
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    _folder(home / "images", 20)
    _folder(elsewhere / "images", 5)  # another folder of the same relative name
    out = tmp_path / "run"
    args = [*TINY, "--data", "images", "--epochs", "2", "--out", str(out)]
    assert _cli(*args, "--stop-after-epochs", "1", cwd=home).returncode == 0
    res = _cli(*TINY, "--out", str(out), "--resume", cwd=elsewhere)
    assert res.returncode == 0, res.stderr
    assert f"data:        {home / 'images'}" in res.stdout  # the run's own folder, absolute
    shutil.move(home / "images", tmp_path / "moved")
    line = refused(_cli(*TINY, "--out", str(out), "--resume", "--epochs", "3", cwd=elsewhere))
    assert "does not exist" in line or "moved" in line


def test_extending_a_finished_run_goes_on_with_its_cosine(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*TINY, "--data", "digits", "--limit-steps", "2", "--out", str(out)]
    assert _cli(*args, "--epochs", "2").returncode == 0
    res = _cli(*TINY, "--out", str(out), "--resume", "--epochs", "3")
    assert res.returncode == 0, res.stderr
    rows = _rows(out / "steps.csv")
    ck = load_checkpoint(out)
    warmup = int(ck["plan"]["warmup"]["value"])
    want = 0.5 * WarmupCosine(warmup, 6)(4)
    assert float(rows[4]["lr"]) == pytest.approx(want) and want > 0  # not the old end's 0


def test_a_second_ctrl_c_still_exits_130_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*TINY, "--data", "digits", "--epochs", "60", "--limit-steps", "1", "--out", str(out)]
    proc = _start(*args)
    _wait_for(out / CHECKPOINT_NAME, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # while it checkpoints or shuts down
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
