"""SupContrast's ``SupConLoss`` (Khosla et al.'s reference code) on fastclr's fused backends.

Change ``from losses import SupConLoss`` to ``from fastclr.compat.supcon import SupConLoss``; the
call stays ``loss(features, labels=None)`` with ``features`` of shape (bsz, n_views, ...).

Reproduced: τ = 0.07 and ``base_temperature`` = 0.07 by default, the loss scaled by
``τ / base_temperature``; ``contrast_mode="all"`` (every row an anchor) or ``"one"`` (only view 0);
L_out per anchor, ``logsumexp_{k ≠ a} s_ak − mean_{p ∈ P(a)} s_ap``; the mean over ALL anchors,
an anchor without a positive counting as 0 (``fastclr.NTXentLoss`` averages over the anchors that
have one); no ``labels`` means each sample is its own class (SimCLR).

Deliberate differences: the features are L2-normalised here (SupContrast's models normalise
before the loss, and the fused kernels need unit rows), so for already-normalised features the
values agree and for others they differ; the explicit ``mask=`` argument raises ``TypeError``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fastclr.compat._common import check_labels, reject
from fastclr.loss import (
    BackendName,
    _check_embeddings,
    _check_finite,
    _check_temperature,
    _positive_logits_rect,
    fused_rows,
    resolve_backend,
)

__all__ = ["SupConLoss"]


class SupConLoss(nn.Module):
    """SupContrast's ``SupConLoss``, fused.

    Args:
        temperature: τ > 0 (default 0.07).
        contrast_mode: ``"all"`` or ``"one"`` (anchors are view 0 only).
        base_temperature: the loss is multiplied by ``temperature / base_temperature``.
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Shape: features (bsz, n_views, ...) (trailing dims flattened), labels (bsz,) integers or
    None; output a scalar in the features' dtype.

    Example:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> feats = torch.nn.functional.normalize(torch.randn(8, 2, 128), dim=-1)
        >>> loss = loss_fn(feats, labels=torch.randint(0, 3, (8,)))
    """

    def __init__(
        self,
        temperature: float = 0.07,
        contrast_mode: str = "all",
        base_temperature: float = 0.07,
        *,
        backend: BackendName = "auto",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.base_temperature = _check_temperature(base_temperature)
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        self.contrast_mode = contrast_mode
        self.backend: BackendName = backend
        self.check_finite = check_finite

    def forward(self, features: Tensor, labels: Tensor | None = None, mask: Any = None) -> Tensor:
        reject("SupContrast SupConLoss", "pass labels instead of a mask", mask=mask)
        if not isinstance(features, Tensor) or features.dim() < 3:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
            raise ValueError(f"features must be (bsz, n_views, ...), at least 3-D, got {shape}")
        bsz, n_views = features.shape[0], features.shape[1]
        flat = features.reshape(bsz, n_views, -1)
        z = _check_embeddings("features", torch.cat(torch.unbind(flat, dim=1), dim=0))
        if labels is None:
            sample = torch.arange(bsz, device=z.device)
        else:
            sample = check_labels("labels", labels, bsz, z)
        row_labels = sample.repeat(n_views)
        if check_finite_enabled(self.check_finite):
            _check_finite(z)
        name = resolve_backend(self.backend, z.device, z.dtype)
        n_anchors = bsz if self.contrast_mode == "one" else None
        rows = fused_rows(z, row_labels, self.temperature, name, 1e-12, n_anchors=n_anchors)
        pos_mean, n_pos = _positive_logits_rect(rows.q, rows.keys, row_labels, 0, self.temperature)
        per_anchor = rows.lse.to(pos_mean.dtype) - pos_mean
        per_anchor = torch.where(n_pos > 0, per_anchor, torch.zeros_like(per_anchor))
        scale = self.temperature / self.base_temperature
        return (scale * per_anchor.mean()).to(z.dtype)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
            f"base_temperature={self.base_temperature}, backend={self.backend!r}"
        )


def check_finite_enabled(flag: bool) -> bool:
    """Whether to run the NaN/Inf check (never inside torch.compile, which cannot branch)."""
    return flag and not torch.compiler.is_compiling()
