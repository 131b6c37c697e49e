"""What this process can do for a pretraining run, checked before anything is loaded.

The values alone are checked by :meth:`fastclr.train.TrainConfig.validate` (from the fields'
declared rules, :mod:`fastclr.options`); here, :func:`check_environment` refuses loss and
augmentation backends that cannot run on the run's device in this process, through their
registries' declared properties (:meth:`fastclr.backends.Registry.require`), each refusal one
:class:`~fastclr.errors.UsageError` naming the flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fastclr.train.config import TrainConfig

__all__ = ["check_environment"]


def check_environment(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse loss/augmentation backends that cannot run on ``device`` in this process."""
    from fastclr.augment import REGISTRY as AUGMENT_REGISTRY
    from fastclr.loss import BACKENDS as LOSS_REGISTRY

    LOSS_REGISTRY.require(cfg.loss_backend, device, "--loss-backend")
    AUGMENT_REGISTRY.require(cfg.augment_backend, device, "--augment-backend")
