"""Where a fine-tuning run starts and what it leaves for others: the pretraining checkpoint it
reads, its run folder, and the labelled subset's file list in that folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from fastclr.atomic import write_atomic
from fastclr.checkpoint import CheckpointError
from fastclr.distributed import DistInfo
from fastclr.downstream.load import RunInfo, read_run
from fastclr.errors import UsageError
from fastclr.finetune.config import FinetuneConfig
from fastclr.finetune.plan import FinetunePlan, training_ids
from fastclr.finetune.subset import SUBSET_FILE, read_subset, write_subset
from fastclr.train.rundir import RunFolder, prepare_on_every_rank

__all__ = ["labelled_file", "prepare_folder", "read_source", "write_labelled"]


def read_source(cfg: FinetuneConfig) -> tuple[RunInfo, dict[str, Any] | None]:
    """The pretraining checkpoint's description and, unless ``--from-scratch``, its weights.

    Raises:
        CheckpointError: not a usable fastclr checkpoint, or not of the ``--arch`` asked.
        UsageError: a fine-tuning run's checkpoint (fine-tuning starts from a pretraining run).
    """
    assert cfg.checkpoint is not None
    info, weights = read_run(cfg.checkpoint, cfg.allow_legacy_checkpoint)
    if info.kind == "finetune":
        raise UsageError(
            f"--checkpoint {cfg.checkpoint} is a fine-tuning run; pass the pretraining run it "
            "started from (to continue this one, use --resume)"
        )
    if cfg.arch is not None and cfg.arch != info.arch:
        raise CheckpointError(
            f"checkpoint {info.path} holds a {info.arch} network, not the --arch {cfg.arch} "
            "asked for"
        )
    return info, None if cfg.from_scratch else weights


def prepare_folder(
    cfg: FinetuneConfig, ddp: DistInfo, checkpoint: dict[str, Any] | None
) -> RunFolder:
    """Pretraining's run-folder checks and lock (:func:`~fastclr.train.rundir.prepare_run_folder`:
    one run at a time, an existing run refused without ``--resume`` or ``--overwrite``, which
    removes exactly the files the run's manifest lists; ``--out`` not inside ``--data``; the
    resumed checkpoint verified) on rank 0 first; its failure is raised on every rank."""
    options = cast(Any, cfg)  # the run-folder options are the same fields in both configs
    return prepare_on_every_rank(options, ddp, checkpoint)


def labelled_file(cfg: FinetuneConfig) -> str:
    """The run folder's file list of the labelled images."""
    return str(Path(cfg.out) / SUBSET_FILE)


def write_labelled(cfg: FinetuneConfig, plan: FinetunePlan, folder: RunFolder) -> Path:
    """Write the run's ``labelled.txt`` (atomically; listed in the run's manifest): the draw, or
    a copy of ``--subset``'s."""
    out = Path(cfg.out)
    folder.manifest.record(SUBSET_FILE)
    if plan.subset is None:
        assert cfg.subset is not None
        src = read_subset(cfg.subset).path
        path = out / SUBSET_FILE
        if src.resolve() != path.resolve():
            write_atomic(path, src.read_bytes(), overwrite=True)
        return path
    ids, labels = training_ids(plan.data)
    try:
        return write_subset(out, plan.subset, ids, labels, plan.classes)
    except ValueError as e:
        raise UsageError(str(e)) from e
