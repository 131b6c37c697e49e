"""``ntxent``: the NT-Xent (SimCLR) / SupCon loss as a function (the semantics are
:class:`~fastclr.loss.NTXentLoss`'s)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fastclr.distributed import world_size
from fastclr.loss.checks import (
    FLOAT_DTYPES,
    POSITIVES,
    REDUCTIONS,
    as_batch,
    check_choice,
    check_negatives,
    check_temperature,
    require_finite,
)
from fastclr.loss.fused import fused_rows, positive_lse, positive_mean, reduce_anchors
from fastclr.loss.registry import BACKENDS, BackendName, resolve_backend
from fastclr.reference import ntxent_reference

__all__ = ["Positives", "Reduction", "ntxent"]

Reduction = Literal["mean", "sum", "none"]
Positives = Literal["out", "in"]


def ntxent(
    *views: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.5,
    reduction: Reduction = "mean",
    backend: BackendName = "auto",
    gather_distributed: bool = False,
    eps: float = 1e-8,
    check_finite: bool = True,
    positives: Positives = "out",
    negatives: Tensor | None = None,
) -> Tensor:
    """NT-Xent (SimCLR) / SupCon loss, functional form. See :class:`~fastclr.loss.NTXentLoss`."""
    temperature = check_temperature(temperature)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("positives", positives, POSITIVES)
    if not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    distributed = gather_distributed and world_size() > 1
    if labels is None and negatives is None and positives == "out" and not distributed:
        fused = _fused_views(views, backend, temperature, reduction, eps, check_finite)
        if fused is not None:
            return fused
    z, lab = as_batch(views, labels, check_positive=not distributed)
    if negatives is not None:
        negatives = check_negatives(negatives, z)
    if check_finite and not torch.compiler.is_compiling():
        require_finite(z)
        if negatives is not None:
            require_finite(negatives)
    name = resolve_backend(backend, z.device, z.dtype)
    if BACKENDS.info(name).exact and not distributed:  # the definition itself, whole
        return ntxent_reference(
            z,
            lab,
            temperature,
            reduction,
            eps=eps,
            upcast=False,
            positives=positives,
            negatives=negatives,
        )
    rows = fused_rows(
        z,
        lab,
        temperature,
        name,
        eps,
        from_views=len(views) if labels is None else 0,
        distributed=distributed,
        negatives=negatives,
    )
    if positives == "out":
        pos_term, n_pos = positive_mean(rows, temperature)
    else:
        pos_lse, n_pos = positive_lse(rows, temperature)
        pos_term = pos_lse - torch.log(n_pos.clamp(min=1).to(pos_lse.dtype))
    return reduce_anchors(rows.lse - pos_term, n_pos > 0, reduction).to(z.dtype)


def _fused_views(
    views: tuple[Tensor, ...],
    backend: str,
    temperature: float,
    reduction: str,
    eps: float,
    check_finite: bool,
) -> Tensor | None:
    """The triton backend's whole-loss op for V ≥ 2 views (fastclr.ops.triton_fused: five kernel
    launches per forward + backward), or None where it does not apply (then the general path
    validates and computes)."""
    first = views[0] if views else None
    if len(views) < 2 or not isinstance(first, Tensor) or first.dim() != 2:
        return None
    same = (first.shape, first.dtype, first.device)
    if any(not isinstance(v, Tensor) or (v.shape, v.dtype, v.device) != same for v in views):
        return None
    if first.dtype not in FLOAT_DTYPES or first.numel() == 0:
        return None
    if not BACKENDS.info(resolve_backend(backend, first.device, first.dtype)).fused_views:
        return None
    from fastclr.ops import triton_fused

    out = triton_fused.views_loss(views, temperature, reduction, eps)
    if out is None:
        return None
    if check_finite and not torch.compiler.is_compiling() and bool(out[1]):
        for v in views:  # a row was not finite: raise the general path's error about it
            require_finite(v)
    return out[0]
