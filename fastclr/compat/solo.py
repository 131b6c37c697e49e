"""solo-learn's ``simclr_loss_func`` on fastclr's fused backends.

Change ``from solo.losses import simclr_loss_func`` to
``from fastclr.compat.solo import simclr_loss_func``; the call stays
``simclr_loss_func(z, indexes, temperature=0.1)`` with ``z`` the (V·N, D) stacked crops and
``indexes`` their sample ids (or class targets, supervised).

Reproduced: τ = 0.1 by default; the positives summed INSIDE the log::

    loss_a = −log( Σ_{p ∈ P(a)} exp(s_ap) / Σ_{k ≠ a} exp(s_ak) )

averaged over all anchors. For two crops this is NT-Xent; with three or more crops, or labels, it
differs from ``fastclr.NTXentLoss`` (SupCon's L_out) and equals its ``positives="in"`` minus
``log |P(a)|``. Like solo-learn, the rows of every rank are gathered (with gradient) whenever
``torch.distributed`` is initialised; the loss is the mean over this rank's anchors.

``indexes`` may be integer, bool or floating (compared by equality, as solo-learn does). The loss
is returned in solo-learn's dtype (the inputs' without autocast; under autocast that of its last
ops on that device: bfloat16 on a CPU, where exp and log stay in the autocast dtype, float32 on
CUDA) and computed in float32 (float64 for float64 inputs).

Deliberate differences: an anchor without any positive makes solo-learn return ``inf``; here it
raises ``ValueError`` naming ``indexes``. solo-learn exponentiates the logits unshifted, so below
τ ≈ 0.0113 (float32) its loss is NaN (exp(1/τ) overflows); here it is the formula's value.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastclr.compat._common import check_labels, check_rows, full_precision, peer_dtype
from fastclr.distributed import world_size
from fastclr.loss import (
    BackendName,
    check_temperature,
    fused_rows,
    positive_lse,
    require_finite,
    resolve_backend,
)

__all__ = ["simclr_loss_func"]


def simclr_loss_func(
    z: Tensor,
    indexes: Tensor,
    temperature: float = 0.1,
    *,
    backend: BackendName = "auto",
    check_finite: bool = True,
) -> Tensor:
    """solo-learn's SimCLR loss (positives summed inside the log), fused.

    Args:
        z: (M, D) projected features of all crops.
        indexes: (M,) sample ids of the crops (or class targets), integer, bool or floating.
        temperature: τ > 0 (solo-learn's default 0.1).
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Returns:
        The scalar loss in solo-learn's dtype (``z``'s without autocast).

    Example:
        >>> z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
        >>> loss = simclr_loss_func(torch.cat([z1, z2]), torch.arange(8).repeat(2))
    """
    temperature = check_temperature(temperature)
    z = check_rows("z", z)
    lab = check_labels("indexes", indexes, z.shape[0], z)
    if z.shape[0] < 2 and world_size() == 1:
        raise ValueError(f"z must have at least 2 rows, got {z.shape[0]}")
    if check_finite and not torch.compiler.is_compiling():
        require_finite(z)
    name = resolve_backend(backend, z.device, z.dtype)
    out_dtype = peer_dtype("solo", z)
    with full_precision(z):
        rows = fused_rows(z, lab, temperature, name, 1e-12, distributed=world_size() > 1)
        pos_lse, n_pos = positive_lse(rows, temperature)
        if not torch.compiler.is_compiling() and bool((n_pos == 0).any()):
            raise ValueError(
                "indexes give some crop no positive (its index occurs once over all ranks); "
                "solo-learn would return inf here"
            )
        return (rows.lse.to(pos_lse.dtype) - pos_lse).mean().to(out_dtype)
