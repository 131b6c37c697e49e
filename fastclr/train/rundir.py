"""The run folder (``--out``): one writer at a time, never overwritten by accident.

:func:`prepare_run_folder` runs first in every pretraining run, before the data are loaded, and
returns a :class:`RunFolder` that the run holds until it ends:

* the folder is locked (:class:`~fastclr.train.lock.RunLock`): a second run into it, or a
  ``--resume`` of a run that is still going, is refused naming the live run's PID; a lock left by
  a dead process is taken over and said to be stale;
* a folder that already holds a run (a checkpoint or CSV logs) is refused unless the run is
  resumed (``--resume``) or replaced (``--overwrite``), which deletes exactly the files fastclr
  wrote there, listed in the run's manifest (``.fastclr-run.json``, :class:`Manifest`), and
  nothing else (a folder written before the manifest existed: its checkpoint, CSV logs and loss
  plot, but not a ``tb/`` folder, which may hold the user's own files);
* ``--out`` inside ``--data`` is refused (the run's own files would become training images);
* ``--resume`` reads and verifies the checkpoint (once: ``fastclr pretrain`` has read it for the
  saved settings, and it is read again only if the file changed since); a run that has already
  reached its last epoch is reported as finished and nothing is written; ``--epochs`` below the
  epochs the checkpoint has done is refused;
* the folder must be creatable and writable, so a read-only or missing location fails at once
  with one message naming ``--out``; temporary files left by a killed writer are removed.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastclr._version import __version__
from fastclr.atomic import write_atomic
from fastclr.checkpoint import (
    CHECKPOINT_NAME,
    RESUME_FIELDS,
    load_checkpoint,
    remove_stale_temps,
    require_fields,
    still_current,
)
from fastclr.distributed import DistInfo, on_main
from fastclr.errors import UsageError
from fastclr.train.config import TrainConfig
from fastclr.train.lock import RunLock

__all__ = [
    "MANIFEST_NAME",
    "RUN_FILES",
    "Manifest",
    "OutputFolderError",
    "RunExistsError",
    "RunFolder",
    "prepare_on_every_rank",
    "prepare_run_folder",
]

#: The files that mark a folder as holding a run.
RUN_FILES = (CHECKPOINT_NAME, "steps.csv", "epochs.csv", "loss.png")
#: What ``--overwrite`` removes from a folder written before runs kept a manifest.
_LEGACY_FILES = RUN_FILES
MANIFEST_NAME = ".fastclr-run.json"


class RunExistsError(UsageError):
    """``--out`` already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


class OutputFolderError(OSError):
    """``--out`` cannot be created or written to (read-only, not a folder, no permission)."""


class Manifest:
    """The files a run wrote into its folder (relative paths), kept in ``.fastclr-run.json``.

    :meth:`record` adds files as the run creates them (written at once, atomically, so that a
    killed run's manifest lists what it left); ``--overwrite`` removes exactly those
    (:meth:`remove`). Only the main rank writes it (``enabled``).
    """

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.out, self.enabled = out, enabled
        self.path = out / MANIFEST_NAME
        self.files: set[str] = set()
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.files = {str(f) for f in data.get("files", [])}
            except (OSError, ValueError, AttributeError):
                self.files = set()

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def record(self, *paths: str | os.PathLike[str]) -> None:
        """Add files (absolute, or relative to the run folder) to the manifest."""
        if not self.enabled:
            return
        new = {os.path.relpath(p, self.out) if os.path.isabs(p) else str(p) for p in paths}
        if new <= self.files:
            return
        self.files |= new
        body = {"fastclr": __version__, "files": sorted(self.files)}
        write_atomic(self.path, (json.dumps(body, indent=1) + "\n").encode())

    def remove(self) -> list[str]:
        """Delete the listed files (and the folders they leave empty), then the manifest."""
        removed = []
        for rel in sorted(self.files, key=lambda r: -r.count("/")):
            p = self.out / rel
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed.append(rel)
            parent = p.parent
            while parent != self.out and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        self.path.unlink(missing_ok=True)
        self.files = set()
        return removed


@dataclass
class RunFolder:
    """What :func:`prepare_run_folder` found and holds: the folder's lock (rank 0), its manifest,
    and the verified checkpoint to resume, if any. :meth:`release` when the run ends."""

    out: Path
    manifest: Manifest
    lock: RunLock | None = None
    checkpoint: dict[str, Any] | None = None
    path: Path | None = None
    finished: bool = False
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def warn_notes(self) -> None:
        """Each of :attr:`notes` (what preparing the folder did that a user should know) as a
        ``RuntimeWarning``, attributed to the code that called the run's ``fit``."""
        for note in self.notes:
            warnings.warn(f"fastclr: {note}", RuntimeWarning, stacklevel=3)


def _existing_run(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def _make(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(e.errno, f"cannot create --out {out}: {e.strerror or e}") from e


def _lock(out: Path) -> RunLock:
    try:
        return RunLock(out).acquire()
    except PermissionError as e:
        raise OutputFolderError(e.errno, f"cannot write to --out {out}: {e.strerror or e}") from e
    except OSError as e:
        if isinstance(e, UsageError):
            raise
        raise OutputFolderError(e.errno, f"cannot write to --out {out}: {e.strerror or e}") from e


def _remove_run(folder: RunFolder) -> list[str]:
    """``--overwrite``: the files of the old run, by its manifest (or the legacy names)."""
    if folder.manifest.exists:
        return folder.manifest.remove()
    removed = []
    for name in _LEGACY_FILES:
        p = folder.out / name
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(name)
    if (folder.out / "tb").exists():
        folder.notes.append(
            f"--overwrite left {folder.out / 'tb'} alone: the old run kept no list of the files "
            "it wrote, and that folder may hold files of your own"
        )
    return removed


def _check_not_in_data(cfg: TrainConfig, out: Path) -> None:
    if cfg.data == "digits" or not os.path.isdir(cfg.data):
        return
    data, here = Path(cfg.data).resolve(), out.resolve()
    if here == data or data in here.parents:
        raise UsageError(
            f"--out {out} is inside --data {cfg.data}: the run's own files (its loss plot, "
            "checkpoints) would be read as training images; choose an --out outside the data"
        )


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


def _read_resume(
    cfg: TrainConfig, folder: RunFolder, existing: list[str], checkpoint: dict[str, Any] | None
) -> None:
    """``--resume``: the checkpoint, verified, and whether the run has finished."""
    assert cfg.resume
    src = Path(cfg.resume)
    folder.path = path = src / CHECKPOINT_NAME if src.is_dir() else src
    if existing and not _same_folder(path, folder.out):
        raise RunExistsError(
            f"--out {folder.out} already holds another run ({', '.join(existing)}); resume into "
            f"the checkpoint's own folder ({path.parent}), or choose another --out"
        )
    if checkpoint is None or not still_current(checkpoint):
        checkpoint = load_checkpoint(path, allow_legacy=cfg.allow_legacy_checkpoint)
    folder.checkpoint = ck = checkpoint
    require_fields(ck, RESUME_FIELDS, path, "--resume")
    trained = ck.get("config", {}).get("batch_size")
    if trained is not None and cfg.batch_size is not None and int(trained) != cfg.batch_size:
        raise UsageError(
            f"--batch-size {cfg.batch_size} differs from the batch size {trained} that "
            f"checkpoint {path} was trained with; an exact resume needs the same one "
            f"(the epoch's batches and the schedule depend on it): pass --batch-size {trained}"
        )
    done, epochs = int(ck["epoch"]), _epochs(cfg, ck)
    if epochs < done or (epochs == done and int(ck["step_in_epoch"]) > 0):
        raise UsageError(
            f"--epochs {epochs} is fewer than the {done} epochs checkpoint {path} has trained; "
            f"leave --epochs out to finish its schedule, or pass more than {done} to extend it"
        )
    folder.finished = done >= epochs


def prepare_run_folder(
    cfg: TrainConfig, is_main: bool = True, checkpoint: dict[str, Any] | None = None
) -> RunFolder:
    """Check and lock ``cfg.out``, read ``cfg.resume`` (module docstring).

    Only the main rank locks, looks for an existing run, deletes or cleans files (other ranks
    may start when rank 0 has already begun writing the new run); every rank reads and verifies
    the checkpoint it resumes: ``checkpoint`` is its contents when the caller has read them
    already. Raises :class:`~fastclr.train.lock.RunLockedError`, :class:`RunExistsError`,
    :class:`OutputFolderError`, :class:`~fastclr.errors.UsageError` or
    :class:`~fastclr.checkpoint.CheckpointError`; the lock is released on any refusal.
    """
    out = Path(cfg.out)
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one of them")
    folder = RunFolder(out, Manifest(out, enabled=is_main))
    if not is_main:
        if cfg.resume:
            _read_resume(cfg, folder, [], checkpoint)
        return folder
    _check_not_in_data(cfg, out)
    if cfg.resume and out.is_dir():  # a finished run writes nothing: no lock (read-only media)
        _read_resume(cfg, folder, _existing_run(out), checkpoint)
        if folder.finished:
            return folder
        checkpoint = folder.checkpoint  # read again below only if the file changes meanwhile
    _make(out)
    folder.lock = _lock(out)
    try:
        _prepare_locked(cfg, folder, checkpoint)
    except BaseException:
        folder.release()
        raise
    return folder


def prepare_on_every_rank(
    cfg: TrainConfig, ddp: DistInfo, checkpoint: dict[str, Any] | None
) -> RunFolder:
    """:func:`prepare_run_folder` on rank 0 first; its failure, if any, is raised on every rank.

    Rank 0 alone locks the folder, checks for an existing run and cleans it; the other ranks wait
    for its verdict (so none trains alone or hangs in a collective), then read the checkpoint.
    """
    mine: list[RunFolder] = []

    def on_rank0() -> None:
        mine.append(prepare_run_folder(cfg, True, checkpoint))

    on_main(on_rank0, ddp)
    return mine[0] if mine else prepare_run_folder(cfg, False, checkpoint)


def _prepare_locked(cfg: TrainConfig, folder: RunFolder, checkpoint: dict[str, Any] | None) -> None:
    out = folder.out
    existing = _existing_run(out)
    if cfg.resume:
        _read_resume(cfg, folder, existing, checkpoint)
        if folder.finished:  # it finished while we waited for the lock: nothing to write
            folder.release()
            return
    elif existing and not cfg.overwrite:
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
    if cfg.overwrite and (existing or folder.manifest.exists):
        _remove_run(folder)
    for name in (CHECKPOINT_NAME, "steps.csv", "epochs.csv", MANIFEST_NAME):
        remove_stale_temps(out, name)  # the files written through temporary files
