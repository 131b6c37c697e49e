"""Builders: turn a run plan into the model, augmentation, loss, optimiser and schedule.

Every component the loop uses is made here from the values the plan decided
(:mod:`fastclr.train.plan`); no builder evaluates a rule of its own, so a new option (a loader,
an optimiser, a recipe) is decided in the plan and wired here. The augmentation recipes live in
:mod:`fastclr.augment.presets`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from fastclr.augment.presets import preset_config
from fastclr.loss import NTXentLoss
from fastclr.models import SimCLR, build_model
from fastclr.optim import LARS, lars_param_groups
from fastclr.train.config import TrainConfig
from fastclr.train.plan import RunPlan
from fastclr.train.precision import AMP_DTYPES

__all__ = [
    "Augmentation",
    "LossFn",
    "augment_mean_std",
    "build_augmentation",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_simclr",
]


class Augmentation(Protocol):
    """What the loop needs from an augmentation: uint8 (N, H, W, 3) → two (N, 3, S, S) views."""

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]: ...


LossFn = Callable[[Tensor, Tensor], Tensor]


def build_augmentation(
    preset: str,
    size: int,
    precision: str,
    backend: str,
    seed: int,
    device: torch.device | None = None,
) -> Augmentation:
    """``fastclr.augment.SimCLRAugmentation`` with a recipe of :mod:`fastclr.augment.presets`.

    ``preset`` is one of :data:`fastclr.augment.presets.PRESETS` (``small``, ``cifar``,
    ``imagenet``, their ``-grey`` twins without flips, or ``digits``); views come out in the
    autocast dtype of ``precision``.
    """
    from fastclr.augment import SimCLRAugmentation

    config = preset_config(preset, size, AMP_DTYPES[precision])
    # the loaders always yield channels-last batches: say so, so that tiny images (height 1, 3
    # or 4, which could also read as channels-first) are not refused as ambiguous
    aug: Augmentation = SimCLRAugmentation(
        config, backend=backend, seed=seed, device=device, layout="NHWC"
    )
    return aug


def augment_mean_std(aug: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the augmentation applies (reused for clean evaluation inputs)."""
    config = getattr(aug, "config", None)
    mean = getattr(config, "mean", (0.5, 0.5, 0.5))
    std = getattr(config, "std", (0.5, 0.5, 0.5))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def build_simclr(cfg: TrainConfig, plan: RunPlan) -> SimCLR:
    """The SimCLR model of the plan (architecture from ``cfg``, the decided stem and width)."""
    return plan.architecture(cfg).build()


def build_loss(cfg: TrainConfig, world_size: int) -> LossFn:
    """NT-Xent at ``cfg.temperature``; gathers every rank's embeddings on several ranks."""
    return NTXentLoss(
        cfg.temperature,
        backend=cfg.loss_backend,
        gather_distributed=world_size > 1,
        check_finite=False,  # checked by the loop without a per-step sync
    )


def build_optimizer(model: SimCLR, cfg: TrainConfig, plan: RunPlan) -> LARS:
    """LARS at the plan's learning rate."""
    return LARS(lars_param_groups(model, cfg.weight_decay), lr=plan.lr, momentum=cfg.momentum)


def build_scheduler(
    optimizer: torch.optim.Optimizer, plan: RunPlan
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the plan's warm-up steps, then cosine decay to its last step."""
    return LambdaLR(optimizer, plan.schedule())
