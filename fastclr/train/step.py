"""One optimisation step of SimCLR on two views: the model part of a training step.

:class:`TrainingStep` runs forward (both views through the encoder and head, channels-last,
under autocast), the loss, the (scaled) backward and the optimiser's step; the loop
(:mod:`fastclr.train.loop`) adds the augmentation and the schedule around it, and
``bench/train_bench.py`` times it against the full step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastclr.train.builders import LossFn
from fastclr.train.precision import autocast

__all__ = ["TrainingStep"]


class TrainingStep:
    """One optimisation step on two views: forward, loss, backward, (scaled) optimiser step.

    The model-only part of a step (no augmentation, no schedule); ``bench/train_bench.py`` times
    it against the full step.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        precision: str,
        device: torch.device,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.precision, self.device = precision, device

    def __call__(self, v1: Tensor, v2: Tensor) -> Tensor:
        """The detached loss of this step (on the device; no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        x = torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            _, z = self.model(x)
        z1, z2 = z.float().chunk(2)
        loss = self.loss_fn(z1, z2)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
