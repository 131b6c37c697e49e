"""SupContrast's ``SupConLoss`` (Khosla et al.'s reference code) on fastclr's fused backends.

Change ``from losses import SupConLoss`` to ``from fastclr.compat.supcon import SupConLoss``; the
call stays ``loss(features, labels=None)`` with ``features`` of shape (bsz, n_views, ...).

Reproduced: τ = 0.07 and ``base_temperature`` = 0.07 by default, the loss scaled by
``τ / base_temperature``; ``contrast_mode="all"`` (every row an anchor) or ``"one"`` (only view 0);
L_out per anchor, ``logsumexp_{k ≠ a} s_ak − mean_{p ∈ P(a)} s_ap`` with ``s_ak = f_a·f_k / τ``
on the features AS GIVEN (SupContrast's loss does not normalise; its models do, before the loss);
the mean over ALL anchors, an anchor without a positive counting as 0 (``fastclr.NTXentLoss``
averages over the anchors that have one); no ``labels`` means each sample is its own class
(SimCLR); labels of any shape holding bsz values (SupContrast reshapes them to (bsz, 1)), integer
or floating (compared by equality); the result in float32 for float32/bfloat16/float16 features,
float64 for float64, with or without autocast (SupContrast's masks are float32).

Deliberate differences: the explicit ``mask=`` argument raises ``TypeError``; where SupContrast's
float32 arithmetic gives NaN (an anchor whose self-similarity exceeds every other logit by more
than ~87, e.g. un-normalised features of norm ~4 at τ = 0.1: its shifted exponentials all
underflow), this gives the formula's value.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fastclr.compat._common import check_labels, full_precision, peer_dtype, reject
from fastclr.loss import (
    BACKENDS,
    BackendName,
    check_embeddings,
    check_temperature,
    fused_rows,
    positive_logits_rect,
    require_finite,
    resolve_backend,
)
from fastclr.reference import supcontrast_reference

__all__ = ["SupConLoss"]

_FP32_MAX = float(torch.finfo(torch.float32).max)


class SupConLoss(nn.Module):
    """SupContrast's ``SupConLoss``, fused.

    Args:
        temperature: τ > 0 (default 0.07).
        contrast_mode: ``"all"`` or ``"one"`` (anchors are view 0 only).
        base_temperature: the loss is multiplied by ``temperature / base_temperature``.
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Shape: features (bsz, n_views, ...) (trailing dims flattened), labels bsz integer or floating
    class labels of any shape, or None; output a scalar, float32 (float64 for float64 features).

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
        self.temperature = check_temperature(temperature)
        self.base_temperature = check_temperature(base_temperature)
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
        z = check_embeddings("features", torch.cat(torch.unbind(flat, dim=1), dim=0))
        if labels is None:
            sample = torch.arange(bsz, device=z.device)
        else:
            sample = check_labels("labels", labels, bsz, z, any_shape=True)
        if check_finite_enabled(self.check_finite):
            require_finite(z)
        out_dtype = peer_dtype("supcontrast", z)
        name = resolve_backend(self.backend, z.device, z.dtype)
        with full_precision(z):
            if BACKENDS.info(name).exact:  # the definition, in float32 (float64 for float64)
                work = torch.float64 if z.dtype == torch.float64 else torch.float32
                loss = supcontrast_reference(
                    flat.to(work),
                    sample,
                    self.temperature,
                    self.base_temperature,
                    self.contrast_mode,
                    upcast=False,
                )
                return loss.to(out_dtype)
            per_anchor = self._fused_per_anchor(z, sample.repeat(n_views), bsz, name)
            scale = self.temperature / self.base_temperature
            return (scale * per_anchor.mean()).to(out_dtype)

    def _fused_per_anchor(self, z: Tensor, row_labels: Tensor, bsz: int, name: str) -> Tensor:
        """L_out of every anchor (0 without a positive) on the fused backend ``name``."""
        divisor, tau = _scaled_rows(z, self.temperature)
        n_anchors = bsz if self.contrast_mode == "one" else None
        # fused_rows divides each row by max(‖row‖, eps); with eps = c above every norm, that is
        # z / c for every row, and s_ak = (f_a/c)·(f_k/c) / (τ/c²) = f_a·f_k / τ
        rows = fused_rows(z, row_labels, tau, name, divisor, n_anchors=n_anchors)
        pos_mean, n_pos = positive_logits_rect(rows.q, rows.keys, row_labels, 0, tau)
        per_anchor = rows.lse.to(pos_mean.dtype) - pos_mean
        return torch.where(n_pos > 0, per_anchor, torch.zeros_like(per_anchor))

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, contrast_mode={self.contrast_mode!r}, "
            f"base_temperature={self.base_temperature}, backend={self.backend!r}"
        )


# fp32/fp64 rows are divided by (1 + this) × the largest norm: strictly above every norm (the fp32
# norm computed in the normalisation may exceed the float64 one by a few ulps), and τ changes by
# only 0.05%, so the kernels keep their constant-shift path wherever τ alone would take it.
_NORM_MARGIN = 2.0**-12


def _scaled_rows(z: Tensor, temperature: float) -> tuple[float, float]:
    """(c, τ / c²) with c strictly above every row norm of ``z`` (1 for all-zero rows).

    The fused kernels take rows of norm ≤ 1 (their logits are bounded by 1/τ); SupContrast's
    logits ``f_a·f_k / τ`` on un-normalised rows are the same numbers for rows f/c at τ/c².
    bfloat16/float16 rows reach the kernels' tiles in their own dtype, so for them c is a power
    of two (the division is exact); float32/float64 rows are divided once in float32/float64.
    One device sync (the norm is needed on the host, as the kernels' temperature).
    """
    top = float(torch.linalg.vector_norm(z.detach().double(), dim=1).amax())
    if z.dtype != torch.float64 and top * top / temperature > _FP32_MAX:
        raise ValueError(
            f"features have rows of norm {top:.3g}: their logits f·f/τ overflow float32 at "
            f"τ = {temperature} (SupContrast returns NaN there); scale the features down or "
            "pass float64 features"
        )
    if top == 0:
        divisor = 1.0
    elif z.dtype in (torch.bfloat16, torch.float16):
        divisor = 2.0 ** (math.floor(math.log2(top)) + 1)
    else:
        divisor = top * (1.0 + _NORM_MARGIN)
    return divisor, temperature / (divisor * divisor)


def check_finite_enabled(flag: bool) -> bool:
    """Whether to run the NaN/Inf check (never inside torch.compile, which cannot branch)."""
    return flag and not torch.compiler.is_compiling()
