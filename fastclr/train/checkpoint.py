"""Training checkpoints: what a run saves after every epoch (and on Ctrl-C), and resuming from it.

:class:`CheckpointSaver` (after timm's saver object) gathers every rank's random state, and rank 0
writes ``OUT/checkpoint.pt`` atomically: model, optimiser, scheduler, scaler, every RNG stream
and the position, plus what evaluation needs (architecture spec, image size, normalisation).
:func:`resume` puts all of it back, so an interrupted run continues bit-identically on CPU. The
file format itself (reading, atomic writing, the architecture check) is :mod:`fastclr.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastclr.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    check_spec,
    first_non_finite,
    load_checkpoint,
    load_model_state,
    model_spec,
    save_checkpoint_atomic,
)
from fastclr.distributed import DistInfo, gather_objects
from fastclr.errors import NonFiniteLossError
from fastclr.models import SimCLR
from fastclr.train.config import TrainConfig
from fastclr.train.plan import RunPlan
from fastclr.train.rng import capture_rng
from fastclr.train.rundir import Manifest

__all__ = [
    "CheckpointSaver",
    "Position",
    "SaverBase",
    "TrainingState",
    "follow_schedule",
    "resume",
    "resumed_at",
]


@dataclass
class TrainingState:
    """The objects whose state a checkpoint holds."""

    model: SimCLR
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: Any


@dataclass
class Position:
    """Where a run stands: the epoch, the next step in it, and the steps taken in all."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


class SaverBase:
    """What the pretraining and fine-tuning savers share (after timm's saver object): the file
    ``out/checkpoint.pt``, every rank's random state gathered, and rank 0's atomic write of the
    entries every fastclr run checkpoint holds (collective: call ``save`` on every rank).

    ``plan`` is the run's decided plan (``image_size``, ``to_dict()``); ``cfg`` its config
    dataclass.
    """

    def __init__(
        self, out: Path, cfg: Any, plan: Any, ddp: DistInfo, device: Any, manifest: Manifest
    ) -> None:
        self.out, self.cfg, self.plan, self.ddp, self.device = out, cfg, plan, ddp, device
        self.manifest = manifest

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.out / CHECKPOINT_NAME

    def _all_rng(self, augment: Any) -> list[Any]:
        return gather_objects(capture_rng(augment, self.device), self.ddp)

    def _write(
        self,
        state: Any,
        at: Position,
        weights: dict[str, Any],
        spec: dict[str, Any],
        norm: tuple[tuple[float, ...], tuple[float, ...]],
        extra: dict[str, Any],
    ) -> None:
        """Gather every rank's random state; rank 0 writes the checkpoint atomically: the
        checked ``weights``, architecture ``spec``, normalisation ``norm`` (mean, std), the
        config, plan, position, optimiser, schedule, scaler and random streams of ``state``
        (model, optimizer, scheduler, scaler, augment), then the saver's own ``extra`` entries."""
        all_rng = self._all_rng(state.augment)
        if not self.ddp.is_main:
            return
        mean, std = norm
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model_spec": spec,
            "feature_dim": state.model.feature_dim,
            "image_size": self.plan.image_size,
            "mean": list(mean),
            "std": list(std),
            "config": dataclasses.asdict(self.cfg),
            "plan": self.plan.to_dict(),
            "epoch": at.epoch,
            "step_in_epoch": at.step_in_epoch,
            "global_step": at.global_step,
            "model": weights,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "rng": all_rng,
            "world_size": self.ddp.world_size,
            **extra,
        }
        self.manifest.record(CHECKPOINT_NAME)  # listed first: a kill mid-write leaves its temp
        save_checkpoint_atomic(payload, self.path)


class CheckpointSaver(SaverBase):
    """Writes ``out/checkpoint.pt`` for a pretraining run (collective: call it on every rank)."""

    cfg: TrainConfig
    plan: RunPlan

    def __init__(
        self,
        out: Path,
        cfg: TrainConfig,
        plan: RunPlan,
        ddp: DistInfo,
        device: torch.device,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        manifest: Manifest | None = None,
    ) -> None:
        manifest = manifest if manifest is not None else Manifest(out, ddp.is_main)
        super().__init__(out, cfg, plan, ddp, device, manifest)
        self.mean, self.std = mean, std

    def check_finite(self, state: TrainingState, step: int) -> dict[str, Any]:
        """The model's state dict, or :class:`~fastclr.errors.NonFiniteLossError` when a weight
        holds NaN or Inf (the same on every rank: DDP replicas are equal)."""
        weights = state.model.state_dict()
        bad = first_non_finite(weights)
        if bad is not None:
            kept = (
                f"the last good checkpoint ({self.path}) was kept"
                if self.path.exists()
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"the weights became NaN or Inf ({bad}) by step {step}, after the last loss "
                f"check; training stopped and {kept}"
            )
        return weights

    def save(self, state: TrainingState, at: Position) -> None:
        """Check the weights are finite, gather every rank's RNG state; rank 0 writes the
        checkpoint atomically.

        Weights holding NaN or Inf (a step that diverged after the last loss check) raise
        :class:`~fastclr.errors.NonFiniteLossError` on every rank (DDP replicas are equal), and
        the previous checkpoint stays as it was.
        """
        weights = self.check_finite(state, at.global_step)
        spec = model_spec(self.plan.architecture(self.cfg))
        self._write(state, at, weights, spec, (self.mean, self.std), {})


def resumed_at(
    ck: dict[str, Any], ddp: DistInfo, *, stacklevel: int = 2
) -> tuple[Position, dict[str, Any]]:
    """A checkpoint's position and this rank's random state in it (rank ``r`` takes stream
    ``r`` modulo the saved ranks, with a warning when the number of ranks changed: the random
    streams then differ from the interrupted run's). ``stacklevel`` is the warning's, as seen
    from this function."""
    at = Position(int(ck["epoch"]), int(ck["step_in_epoch"]), int(ck["global_step"]))
    rngs = ck["rng"]
    if len(rngs) != ddp.world_size:
        warnings.warn(
            f"resuming a {len(rngs)}-rank run on {ddp.world_size} ranks: RNG streams differ",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    return at, rngs[ddp.rank % len(rngs)]


def follow_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int], float],
) -> None:
    """Put ``schedule`` in place of the saved one and set the learning rate of the step about
    to be taken from it (LambdaLR only sets it at its next ``step()``): a run extended with a
    larger ``--epochs`` continues from where the longer cosine is, not at the old end's 0."""
    scheduler.lr_lambdas[0] = schedule
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * schedule(scheduler.last_epoch)


def resume(
    path: str | os.PathLike[str],
    cfg: TrainConfig,
    plan: RunPlan,
    state: TrainingState,
    ddp: DistInfo,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[Position, dict[str, Any]]:
    """Load a checkpoint into ``state``; return its position and this rank's RNG state.

    The RNG state is returned rather than restored so that the caller restores it last, after
    everything that may still draw random numbers during set-up. The schedule follows the plan
    (a resumed run may be extended: ``epochs`` is then longer than the saved one's).
    ``checkpoint``: the file's contents when already read (and verified) by the caller.
    """
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(path)
    check_spec(ckpt["model_spec"], model_spec(plan.architecture(cfg)), path)
    load_model_state(state.model, ckpt["model"], f"checkpoint {path}")
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    follow_schedule(state.scheduler, state.optimizer, plan.schedule())
    state.scaler.load_state_dict(ckpt["scaler"])
    at, rng = resumed_at(ckpt, ddp, stacklevel=4)
    if at.step_in_epoch >= plan.steps_per_epoch:  # the data shrank: that epoch is over
        at = Position(at.epoch + 1, 0, at.global_step)
    return at, rng
