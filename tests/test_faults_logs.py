"""Run logs after a kill: cut back to the resumed checkpoint, torn rows dropped, each key once,
and the run-folder guard's decisions in-process. Milliseconds (no training)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fastclr.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    RESUME_FIELDS,
    CheckpointError,
    save_checkpoint_atomic,
)
from fastclr.train import TrainConfig
from fastclr.train.logs import EPOCH_FIELDS, STEP_FIELDS, RunLogger, cut_back_logs
from fastclr.train.rundir import OutputFolderError, RunExistsError, RunFolder, prepare_run_folder


def _write(path: Path, fields: tuple[str, ...], rows: list[list[object]], tail: str = "") -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(rows)
        f.write(tail)


def _keys(path: Path, key: str) -> list[int]:
    with open(path, newline="") as f:
        return [int(r[key]) for r in csv.DictReader(f)]


def test_cut_back_after_a_kill(tmp_path: Path) -> None:
    steps = tmp_path / "steps.csv"
    # steps 1-6 logged by the killed run (checkpoint at 4), step 5 logged twice by an older
    # fastclr's resume, and a row torn by the kill mid-write
    rows = [[0, s - 1, s, 1.0 / s, 0.1, 100.0] for s in (1, 2, 3, 4, 5, 6, 5)]
    _write(steps, STEP_FIELDS, rows, tail="1,3,7,0.2")
    epochs = tmp_path / "epochs.csv"
    _write(epochs, EPOCH_FIELDS, [[e, 1.0, 0.1, 0.5, 100.0, 1.0] for e in (0, 1, 1, 2)])
    cut_back_logs(tmp_path, global_step=4, epochs_done=2)
    assert _keys(steps, "global_step") == [1, 2, 3, 4]
    assert _keys(epochs, "epoch") == [0, 1]
    # the logger of the resumed run appends after the cut
    log = RunLogger(tmp_path, enabled=True, append=True, resume_at=(4, 2))
    log.steps([dict(zip(STEP_FIELDS, [2, 0, 5, 0.3, 0.1, 10.0], strict=True))])
    log.close()
    assert _keys(steps, "global_step") == [1, 2, 3, 4, 5]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_foreign_csv_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    path.write_text("a,b\n1,2\n")
    cut_back_logs(tmp_path, 0, 0)
    assert path.read_text() == "a,b\n1,2\n"


def _cfg(out: Path, **kw: object) -> TrainConfig:
    return TrainConfig(out=str(out), batch_size=16, epochs=3, **kw)  # type: ignore[arg-type]


def _checkpoint(out: Path, epoch: int, batch: int = 16, drop: str = "") -> None:
    """A checkpoint with every field resuming reads (placeholder values: nothing is built)."""
    state: dict[str, object] = {name: {} for name in RESUME_FIELDS}
    state.update(format=CHECKPOINT_FORMAT, epoch=epoch, step_in_epoch=0, global_step=3)
    state["config"] = {"batch_size": batch}
    state.pop(drop, None)
    save_checkpoint_atomic(state, out / CHECKPOINT_NAME)


def _prepared(cfg: TrainConfig) -> RunFolder:
    """prepare_run_folder, its lock released at once (each call here is a separate run)."""
    folder = prepare_run_folder(cfg)
    folder.release()
    return folder


def test_run_folder_decisions(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _prepared(_cfg(out)).checkpoint is None  # fresh: created and probed
    assert out.is_dir() and not list(out.iterdir())
    (out / "steps.csv").write_text("x\n")  # killed before its first checkpoint
    with pytest.raises(RunExistsError, match=r"never saved a checkpoint .*--overwrite"):
        _prepared(_cfg(out))
    _checkpoint(out, epoch=1)
    (out / "steps.csv").write_text("x\n")
    stale = out / f".{CHECKPOINT_NAME}.tmp-999999999"
    stale.write_bytes(b"torn")
    with pytest.raises(RunExistsError, match=r"--resume .*--overwrite"):
        _prepared(_cfg(out))
    plan = _prepared(_cfg(out, resume=str(out)))
    assert plan.checkpoint is not None and not plan.finished and not stale.exists()
    with pytest.raises(ValueError, match=r"--batch-size 32 differs from the batch size 16"):
        _prepared(TrainConfig(out=str(out), batch_size=32, resume=str(out)))
    _checkpoint(out, epoch=3)
    assert _prepared(_cfg(out, resume=str(out))).finished
    _checkpoint(out, epoch=1, drop="optimizer")
    with pytest.raises(CheckpointError, match=r"cannot be used for --resume: it lacks optimizer"):
        _prepared(_cfg(out, resume=str(out)))
    _prepared(_cfg(out, overwrite=True))
    assert sorted(p.name for p in out.iterdir()) == []  # the old run's files, and only those
    (out / "notes.txt").write_text("mine")
    _checkpoint(out, epoch=1)
    _prepared(_cfg(out, overwrite=True))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        _prepared(_cfg(afile))
