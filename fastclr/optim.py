"""LARS (You et al. 2017, as used by SimCLR) and the linear-warmup + cosine learning-rate schedule.

SimCLR's defaults (Chen et al. 2020, §B.1 / google-research/simclr ``lars_optimizer.py``):
lr = 0.3 × batch / 256, momentum 0.9, weight decay 1e-6, trust coefficient η = 0.001, 10 warm-up
epochs, cosine decay to 0 without restarts; BatchNorm parameters and biases are excluded from both
the weight decay and the layer-wise adaptation.

The update for a parameter ``w`` with gradient ``g`` (in a group with ``lars=True``)::

    g ← g + wd·w
    r = η·‖w‖/‖g‖   if ‖w‖ > 0 and ‖g‖ > 0, else 1       (trust ratio)
    v ← m·v + lr·r·g
    w ← w − v

and for excluded parameters (``lars=False``: no decay, no adaptation) ``v ← m·v + lr·g``.
The learning rate sits inside the momentum buffer, as in the SimCLR reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "LARS",
    "WarmupCosine",
    "lars_param_groups",
    "scaled_lr",
    "warmup_cosine_schedule",
]

BASE_LR = 0.3  # paper: lr = 0.3 × batch / 256 with LARS (linear scaling)
WEIGHT_DECAY = 1e-6
MOMENTUM = 0.9
TRUST_COEFFICIENT = 1e-3
WARMUP_EPOCHS = 10


def scaled_lr(batch_size: int, base_lr: float = BASE_LR) -> float:
    """The paper's linear scaling rule: ``base_lr × batch_size / 256``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return base_lr * batch_size / 256


def lars_param_groups(model: nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict[str, Any]]:
    """Two parameter groups: weights (decay + adaptation) and BN/bias parameters (neither).

    A parameter is excluded when it belongs to a normalisation layer or is 1-D (biases, BN/LN
    affine); conv and linear weights are adapted.
    """
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    excluded_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, norm_types):
            excluded_ids.update(id(p) for p in module.parameters(recurse=False))
    adapted: list[nn.Parameter] = []
    excluded: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (excluded if id(p) in excluded_ids or p.ndim <= 1 else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars": True},
        {"params": excluded, "weight_decay": 0.0, "lars": False},
    ]


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling with momentum, as in SimCLR (see the module docstring).

    Args:
        params: parameters or groups; a group's ``lars`` (default True) switches the trust ratio
            and weight decay on; use :func:`lars_param_groups` for SimCLR's exclusions.
        lr: learning rate (use :func:`scaled_lr`).
        momentum: 0.9.
        weight_decay: 1e-6 (applied only in groups with ``lars=True``).
        trust_coefficient: η = 0.001.

    Example:
        >>> opt = LARS(lars_param_groups(model), lr=scaled_lr(512))
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
        trust_coefficient: float = TRUST_COEFFICIENT,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom = group["lr"], group["momentum"]
            wd, eta, adapt = group["weight_decay"], group["trust_coefficient"], group["lars"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g: Tensor = p.grad
                if adapt:
                    if wd != 0:
                        g = g.add(p, alpha=wd)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    # no host sync: the where() keeps the ratio on the device
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        eta * w_norm / g_norm.clamp(min=torch.finfo(g_norm.dtype).tiny),
                        torch.ones_like(w_norm),
                    )
                    g = g * ratio
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = torch.zeros_like(p)
                    state["momentum_buffer"] = buf
                buf.mul_(mom).add_(g, alpha=lr)
                p.sub_(buf)
        return loss


class WarmupCosine:
    """LR multiplier per step: linear warm-up to 1 over ``warmup_steps``, then cosine to 0.

    ``rebase=(step, progress)``: from ``step`` on, the cosine continues from ``progress`` (its
    fraction reached there) and ends at ``total_steps`` — what a run resumed on a data set of
    another size uses, so that the learning rate does not jump when its length changes.
    A callable object (not a lambda) so ``LambdaLR.state_dict()`` saves it with the checkpoint.
    """

    def __init__(
        self, warmup_steps: int, total_steps: int, rebase: tuple[int, float] | None = None
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
        if rebase is not None and not (0 <= rebase[1] <= 1 and rebase[0] >= warmup_steps):
            raise ValueError(
                f"rebase must be (step >= warmup_steps, progress in [0, 1]), got {rebase}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.rebase = rebase

    def progress(self, step: int) -> float:
        """The cosine's fraction done at ``step`` (0 until the warm-up ends, 1 at the end)."""
        if self.rebase is not None and step >= self.rebase[0]:
            start, done = self.rebase
            left = max(1, self.total_steps - start)
            return min(1.0, done + (1.0 - done) * (step - start) / left)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        return min(1.0, max(0.0, (step - self.warmup_steps) / decay_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))


def warmup_cosine_schedule(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A per-step ``LambdaLR`` with :class:`WarmupCosine`; call ``.step()`` after every update."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
