"""One optimisation step of SimCLR on two views: the model part of a training step.

:class:`TrainingStep` runs forward (both views through the encoder and head, channels-last,
under autocast), the loss, the (scaled) backward and the optimiser's step; the loop
(:mod:`fastclr.train.loop`) adds the augmentation and the schedule around it, and
``bench/train_bench.py`` times it against the full step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastclr.gradcache import contrastive_backward
from fastclr.train.builders import LossFn
from fastclr.train.precision import autocast

__all__ = ["TrainingStep"]


class TrainingStep:
    """One optimisation step on two views: forward, loss, backward, (scaled) optimiser step.

    The model-only part of a step (no augmentation, no schedule); ``bench/train_bench.py`` times
    it against the full step. ``chunk`` (images per forward, fewer than the batch) splits the
    encoder's work by gradient caching (:func:`fastclr.contrastive_backward`): the loss still sees
    the whole batch, so the gradient is the large batch's, with one chunk's activations in
    memory; ``None`` (or a chunk as large as the batch) is one forward of both views.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        precision: str,
        device: torch.device,
        chunk: int | None = None,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.precision, self.device, self.chunk = precision, device, chunk

    def __call__(self, v1: Tensor, v2: Tensor) -> Tensor:
        """The detached loss of this step (on the device; no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.chunk is not None and self.chunk < v1.shape[0]:
            views = [v.contiguous(memory_format=torch.channels_last) for v in (v1, v2)]
            loss = contrastive_backward(
                self.model,
                views,
                self.loss_fn,
                chunk_size=self.chunk,
                embed=_projection,
                scaler=self.scaler,
                autocast=lambda: autocast(self.precision, self.device),
            )
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return loss
        x = torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            _, z = self.model(x)
        z1, z2 = z.float().chunk(2)
        loss = self.loss_fn(z1, z2)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


def _projection(out: tuple[Tensor, Tensor]) -> Tensor:
    """The embedding the loss sees: the head's output ``z`` of SimCLR's ``(h, z)``, in fp32."""
    return out[1].float()
