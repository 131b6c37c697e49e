"""The run folder (``--out``): never overwritten by accident, checked before anything is built.

:func:`prepare_run_folder` runs first in every pretraining run, before the data are loaded:

* a folder that already holds a run (a checkpoint or CSV logs) is refused unless the run is
  resumed (``--resume``) or explicitly replaced (``--overwrite``, which deletes the old run's
  files and nothing else);
* ``--resume`` reads and verifies the checkpoint here (``fastclr pretrain`` has read its saved
  settings before, to fill in the options not given); a run that has already reached its
  last epoch is reported as finished (the loop then returns without touching any file);
* the folder must be creatable and writable (a probe file is created and removed), so a read-only
  or missing location fails at once with one message naming ``--out``;
* temporary files left by a checkpoint (or log) writer that was killed are removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastclr.checkpoint import (
    CHECKPOINT_NAME,
    RESUME_FIELDS,
    load_checkpoint,
    remove_stale_temps,
    require_fields,
)
from fastclr.errors import UsageError
from fastclr.train.config import TrainConfig

__all__ = ["RUN_FILES", "OutputFolderError", "ResumeFrom", "RunExistsError", "prepare_run_folder"]

#: What a run writes into its folder (``--overwrite`` deletes these and nothing else).
RUN_FILES = (CHECKPOINT_NAME, "steps.csv", "epochs.csv", "loss.png", "tb")


class RunExistsError(UsageError):
    """``--out`` already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


class OutputFolderError(OSError):
    """``--out`` cannot be created or written to (read-only, not a folder, no permission)."""


@dataclass
class ResumeFrom:
    """What :func:`prepare_run_folder` found: the verified checkpoint to resume, if any."""

    checkpoint: dict[str, Any] | None = None
    path: Path | None = None
    finished: bool = False


def _existing_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(e.errno, f"cannot create --out {out}: {e.strerror or e}") from e
    if not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastclr-write-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputFolderError(e.errno, f"cannot write to --out {out}: {e.strerror or e}") from e


def _remove_run(out: Path) -> None:
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _same_folder(checkpoint: Path, out: Path) -> bool:
    try:
        return checkpoint.resolve().parent == out.resolve()
    except OSError:
        return False


def _epochs(cfg: TrainConfig, ck: dict[str, Any]) -> int:
    """The length of the resumed run: ``--epochs`` when given, else the checkpoint's."""
    if cfg.epochs is not None:
        return cfg.epochs
    plan = ck.get("plan")
    if isinstance(plan, dict) and isinstance(plan.get("epochs"), dict):
        return int(plan["epochs"]["value"])
    return int(ck.get("config", {}).get("epochs") or 0)


def prepare_run_folder(
    cfg: TrainConfig, is_main: bool = True, checkpoint: dict[str, Any] | None = None
) -> ResumeFrom:
    """Check ``cfg.out`` and ``cfg.resume`` (module docstring); return what to resume.

    Only the main rank looks for an existing run, probes, deletes or cleans files (other ranks
    may start when rank 0 has already begun writing the new run); every rank reads and verifies
    the checkpoint it resumes, once: ``checkpoint`` is its contents when the caller has read
    them already (``fastclr pretrain --resume`` reads the saved settings from it). Raises
    :class:`RunExistsError`, :class:`OutputFolderError` or
    :class:`~fastclr.checkpoint.CheckpointError`.
    """
    out = Path(cfg.out)
    overwrite = bool(getattr(cfg, "overwrite", False))
    if cfg.resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one of them")
    if is_main and out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    existing = _existing_run(out) if is_main and out.is_dir() else []
    found = ResumeFrom()
    if cfg.resume:
        src = Path(cfg.resume)
        found.path = src / CHECKPOINT_NAME if src.is_dir() else src
        if existing and not _same_folder(found.path, out):
            raise RunExistsError(
                f"--out {out} already holds another run ({', '.join(existing)}); resume into "
                f"the checkpoint's own folder ({found.path.parent}), or choose another --out"
            )
        found.checkpoint = checkpoint if checkpoint is not None else load_checkpoint(found.path)
        ck = found.checkpoint
        require_fields(ck, RESUME_FIELDS, found.path, "--resume")
        trained = ck.get("config", {}).get("batch_size")
        if trained is not None and cfg.batch_size is not None and int(trained) != cfg.batch_size:
            raise UsageError(
                f"--batch-size {cfg.batch_size} differs from the batch size {trained} that "
                f"checkpoint {found.path} was trained with; an exact resume needs the same one "
                f"(the epoch's batches and the schedule depend on it): pass --batch-size {trained}"
            )
        found.finished = int(ck["epoch"]) >= _epochs(cfg, ck) and int(ck["step_in_epoch"]) == 0
        if found.finished:
            return found  # nothing will be written: no probe, no clean-up
    elif existing and not overwrite:
        if CHECKPOINT_NAME not in existing:
            raise RunExistsError(
                f"--out {out} holds a run that never saved a checkpoint ({', '.join(existing)}), "
                "so there is nothing to --resume; replace it with --overwrite, or choose another "
                "--out"
            )
        raise RunExistsError(
            f"--out {out} already holds a run ({', '.join(existing)}); continue it with "
            f"--resume {out}, replace it with --overwrite, or choose another --out"
        )
    if is_main:
        _check_writable(out)
        if overwrite and existing:
            _remove_run(out)
        for name in (CHECKPOINT_NAME, "steps.csv", "epochs.csv"):  # the files written via temps
            remove_stale_temps(out, name)
    return found
