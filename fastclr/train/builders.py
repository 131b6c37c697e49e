"""Builders: turn a :class:`TrainConfig` into the model, augmentation, loss and optimiser.

Every component the loop uses is made here, so a new option (a loader, an optimiser, a recipe)
is wired in one place. The recipe for an image size comes from
:func:`fastclr.train.config.recipe_for_size`; the augmentation recipes themselves live in
:mod:`fastclr.augment.presets`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from fastclr.augment.presets import preset_config
from fastclr.loss import NTXentLoss
from fastclr.models import SimCLR, build_model
from fastclr.optim import (
    LARS,
    lars_param_groups,
    warmup_cosine_schedule,
)
from fastclr.train.config import AUGMENT_PRESETS, MAX_WARMUP_FRACTION, TrainConfig, recipe_for_size
from fastclr.train.precision import AMP_DTYPES
from fastclr.train.recipe import lr_for, preset_for, warmup_for

__all__ = [
    "Augmentation",
    "LossFn",
    "augment_mean_std",
    "augment_preset_for",
    "build_augmentation",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_simclr",
    "warmup_steps",
]


class Augmentation(Protocol):
    """What the loop needs from an augmentation: uint8 (N, H, W, 3) → two (N, 3, S, S) views."""

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]: ...


LossFn = Callable[[Tensor, Tensor], Tensor]


def augment_preset_for(cfg: TrainConfig) -> str:
    """The preset ``cfg.augment_preset`` names; ``auto`` (not yet resolved by
    :func:`fastclr.train.loop.resolve_preset`, which also looks at the images' colour): digits
    for the digits, else the recipe's rule by view size
    (:func:`fastclr.train.recipe.preset_for`)."""
    if cfg.augment_preset != "auto":
        return cfg.augment_preset
    if cfg.data == "digits":
        return "digits"
    return preset_for(cfg.image_size)[0]


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

    if preset not in AUGMENT_PRESETS[1:]:
        raise ValueError(
            f"augmentation preset must be one of {AUGMENT_PRESETS[1:]}, got {preset!r}"
        )
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


def build_simclr(cfg: TrainConfig) -> SimCLR:
    """The SimCLR model ``cfg`` describes (``stem="auto"`` resolved by the image size)."""
    stem = recipe_for_size(cfg.image_size) if cfg.stem == "auto" else cfg.stem
    return build_model(cfg.arch, stem, cfg.width, cfg.proj_dim, cfg.head_bn)


def build_loss(cfg: TrainConfig, world_size: int) -> LossFn:
    """NT-Xent at ``cfg.temperature``; gathers every rank's embeddings on several ranks."""
    return NTXentLoss(
        cfg.temperature,
        backend=cfg.loss_backend,
        gather_distributed=world_size > 1,
        check_finite=False,  # checked by the loop without a per-step sync
    )


def build_optimizer(model: SimCLR, cfg: TrainConfig) -> LARS:
    """LARS at ``cfg.lr``, or the recipe's rule (:func:`fastclr.train.recipe.lr_for`)."""
    lr = cfg.lr if cfg.lr is not None else lr_for(cfg.batch(), cfg.epochs)[0]
    return LARS(lars_param_groups(model, cfg.weight_decay), lr=lr, momentum=cfg.momentum)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> int:
    """``warmup_epochs`` in steps, at most :data:`MAX_WARMUP_FRACTION` of the run; unset: the
    recipe's 10% of the run, at most 10 epochs (:func:`fastclr.train.recipe.warmup_for`)."""
    if cfg.warmup_epochs is None:
        return warmup_for(steps_per_epoch, total)[0]
    want = round(cfg.warmup_epochs * steps_per_epoch)
    return min(want, int(total * MAX_WARMUP_FRACTION))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``total_steps``."""
    return warmup_cosine_schedule(optimizer, warmup, total_steps)
