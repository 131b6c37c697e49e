"""Plain-torch references: the definitions every fast path is tested and benchmarked against.

The loss here builds the full M×M similarity matrix on purpose: it is short enough to read against
the maths in ../shared/DESIGN.md ("NT-Xent semantics") and it runs in float64 (``upcast=True``).
Tests and ``bench/throughput.py`` import these functions; nothing else redefines them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ntxent_lse_reference", "ntxent_reference", "ntxent_reference_rows", "views_to_batch"]


def views_to_batch(views: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack V views of N samples into one (V·N, D) batch and its sample-index labels.

    Row ``v * N + i`` is view ``v`` of sample ``i``; its label is ``i``, so the positives of an
    anchor are the other views of the same sample.
    """
    z = torch.cat(list(views), dim=0)
    n = views[0].shape[0]
    labels = torch.arange(n, device=z.device).repeat(len(views))
    return z, labels


def ntxent_lse_reference(
    q: Tensor, k: Tensor, temperature: float, q_offset: int = 0, eps: float = 1e-8
) -> Tensor:
    """Per-anchor ``logsumexp_{k ≠ a} ẑ_a·ẑ_k / τ`` for queries ``q`` against keys ``k``.

    Query row ``i`` is key row ``q_offset + i`` (the self term excluded). Inputs are normalised
    here; the result is in the inputs' dtype. This is the part of the loss the fused kernels tile.
    """
    qn = F.normalize(q, dim=1, eps=eps)
    kn = F.normalize(k, dim=1, eps=eps)
    s = qn @ kn.T / temperature
    rows = torch.arange(q.shape[0], device=q.device)
    s = s.index_put((rows, rows + q_offset), torch.tensor(float("-inf"), dtype=s.dtype))
    return torch.logsumexp(s, dim=1)


def ntxent_reference(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    reduction: str = "mean",
    eps: float = 1e-8,
    upcast: bool = True,
) -> Tensor:
    """NT-Xent / SupCon (L_out) loss by the definition, building the full M×M matrix.

    For anchor ``a`` with positives ``P(a) = {p ≠ a : labels[p] == labels[a]}``::

        loss_a = logsumexp_{k ≠ a} s_ak − mean_{p ∈ P(a)} s_ap,   s_ak = ẑ_a·ẑ_k / τ

    with ``ẑ = z / max(‖z‖, eps)``. ``reduction="mean"`` averages over anchors that have at least
    one positive, ``"sum"`` sums over them, ``"none"`` returns the (M,) per-anchor losses with 0 for
    anchors without a positive. With two views this is the SimCLR paper's NT-Xent (Eq. 1).

    Args:
        z: (M, D) embeddings, any floating dtype.
        labels: (M,) integer labels; rows with equal labels are positives of each other.
        temperature: τ > 0.
        reduction: "mean", "sum" or "none".
        eps: lower bound on a row norm in the normalisation (zero rows give zero vectors, no NaN).
        upcast: compute in float64 (the result is cast back to ``z.dtype``).
    """
    out_dtype = z.dtype
    if upcast:
        z = z.double()
    zn = F.normalize(z, dim=1, eps=eps)
    s = zn @ zn.T / temperature
    m = z.shape[0]
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    pos_mean = (s * pos).sum(dim=1) / n_pos.clamp(min=1)
    has_pos = n_pos > 0
    per_anchor = torch.where(has_pos, lse - pos_mean, torch.zeros_like(lse))
    if reduction == "none":
        out = per_anchor
    elif reduction == "sum":
        out = per_anchor.sum()
    elif reduction == "mean":
        out = per_anchor.sum() / has_pos.sum().clamp(min=1)
    else:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return out.to(out_dtype)


def ntxent_reference_rows(
    z: Tensor, labels: Tensor, rows: slice, temperature: float = 0.5, eps: float = 1e-8
) -> Tensor:
    """Float64 per-anchor losses of the anchors ``z[rows]`` against every row of ``z``.

    Memory is O(len(rows)·M), so the definition can check a fast path at sizes where the full
    M×M reference does not fit. Anchors without a positive get 0, as ``reduction="none"``.
    """
    zn = F.normalize(z.double(), dim=1, eps=eps)
    start = rows.start or 0
    q = zn[rows]
    s = q @ zn.T / temperature
    idx = torch.arange(q.shape[0], device=z.device)
    self_mask = torch.zeros_like(s, dtype=torch.bool)
    self_mask[idx, idx + start] = True
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    pos = (labels[rows][:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    per_anchor = lse - (s * pos).sum(dim=1) / n_pos.clamp(min=1)
    return torch.where(n_pos > 0, per_anchor, torch.zeros_like(per_anchor))
