"""The configuration of a pretraining run: :class:`TrainConfig`, the one source of defaults.

Each field carries its command-line help (and, for closed sets, its choices) in its metadata;
``fastclr pretrain`` is generated from these fields. Rules that derive one setting from another
(the CIFAR recipe for small images) live here too, so that every user of them agrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fastclr.optim import BASE_LR, MOMENTUM, WEIGHT_DECAY

__all__ = [
    "AUGMENT_PRESETS",
    "CIFAR_MAX_SIZE",
    "LOADERS",
    "MAX_WARMUP_FRACTION",
    "PRECISIONS",
    "Precision",
    "TrainConfig",
    "recipe_for_size",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_PRESETS = ("auto", "cifar", "imagenet", "digits")
# Data loaders (fastclr.data.select): auto, the in-memory tensor, DataLoader workers, DALI.
LOADERS = ("auto", "memory", "stream", "dali")
# Warm-up never takes more than this fraction of a run: the paper's 10 epochs assume >= 100.
MAX_WARMUP_FRACTION = 0.1
# Images up to this size get the CIFAR recipe (3×3 stem without max-pool, CIFAR augmentation);
# larger ones the ImageNet recipe.
CIFAR_MAX_SIZE = 64


def recipe_for_size(image_size: int) -> Literal["cifar", "imagenet"]:
    """``"cifar"`` for images of at most :data:`CIFAR_MAX_SIZE` px, else ``"imagenet"``."""
    return "cifar" if image_size <= CIFAR_MAX_SIZE else "imagenet"


@dataclass
class TrainConfig:
    """Everything a pretraining run depends on (the CLI flags map one to one).

    ``batch_size`` is the global batch (all ranks together); ``lr=None`` means the paper's
    ``0.3 × batch / 256``. ``limit_steps`` caps the steps of every epoch (tests, smoke runs);
    ``stop_after_epochs`` ends this process after that many epochs while the schedule still
    spans ``epochs`` (for time-limited jobs that resume).
    """

    arch: str = "resnet18"
    stem: Literal["cifar", "imagenet"] = "cifar"
    width: float = 1.0
    data: str = "digits"
    image_size: int = 32
    batch_size: int = 256
    epochs: int = 100
    lr: float | None = None
    base_lr: float = BASE_LR
    weight_decay: float = WEIGHT_DECAY
    momentum: float = MOMENTUM
    warmup_epochs: float = 10.0
    temperature: float = 0.5
    proj_dim: int = 128
    head_bn: bool = False
    precision: Precision = "auto"
    augment_backend: str = "auto"
    augment_preset: Literal["auto", "cifar", "imagenet", "digits"] = "auto"
    loss_backend: str = "auto"
    out: str = "runs/simclr"
    seed: int = 0
    resume: str | None = None
    compile: bool = False
    num_workers: int = 0
    loader: Literal["auto", "memory", "stream", "dali"] = "auto"
    limit_steps: int | None = None
    stop_after_epochs: int | None = None
    log_every: int = 10
    knn_k: int = 200
    knn_temperature: float = 0.1
    progress: bool = True
    device: str | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value cannot be used."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "epochs", "image_size", "log_every", "proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit_steps is not None and self.limit_steps < 1:
            raise ValueError(f"limit_steps must be >= 1, got {self.limit_steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if self.augment_preset not in AUGMENT_PRESETS:
            raise ValueError(
                f"augment_preset must be one of {AUGMENT_PRESETS}, got {self.augment_preset!r}"
            )
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
