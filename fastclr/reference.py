"""Plain-torch references: the definitions every fast path is tested and benchmarked against.

The loss here builds the full M×M similarity matrix on purpose: it is short enough to read against
the maths in ``fastclr.loss`` / ``NTXentLoss`` and it runs in float64 (``upcast=True``).
Tests and ``bench/throughput.py`` import these functions; nothing else redefines them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "l2_normalize",
    "lightly_memory_bank_reference",
    "ntxent_lse_reference",
    "ntxent_reference",
    "ntxent_reference_rows",
    "pml_ntxent_reference",
    "solo_simclr_reference",
    "supcontrast_reference",
    "views_to_batch",
]


def l2_normalize(z: Tensor, eps: float = 1e-8) -> Tensor:
    """Rows of ``z`` (M, D) divided by ``max(‖z‖₂, eps)``, exact for any finite scale.

    ``F.normalize`` squares the entries, so a float32 row whose norm is above ~1.8e19 (or whose
    entries are all below ~1e-19) gets a norm of inf (or 0) and a wrong ẑ. Here each row is first
    divided by ``s``, the power of two at or below ``max_k |z_k|`` (1 for a zero row), then
    ``ẑ = u / max(‖u‖, eps / s)`` with ``u = z / s`` — the same quotient, since
    ``‖z‖ = s·‖u‖``. Dividing by a power of two is exact, so ordinary rows get bit for bit
    ``F.normalize``'s result; ``s`` carries no gradient (ẑ does not depend on it).

    Args:
        z: (M, D) floating rows.
        eps: lower bound on a row's norm (a zero row gives a zero vector, no NaN).

    Returns:
        ẑ, same shape and dtype as ``z``.

    Example:
        >>> l2_normalize(torch.tensor([[3e30, 4e30]]))
        tensor([[0.6000, 0.8000]])
    """
    peak = z.detach().abs().amax(dim=1, keepdim=True)
    scale = torch.where(peak > 0, torch.exp2(torch.floor(torch.log2(peak))), torch.ones_like(peak))
    u = z / scale
    norm = torch.linalg.vector_norm(u, dim=1, keepdim=True)
    # a tensor numerator: ``eps / scale`` with a Python float computes eps · (1 / scale), and
    # 1 / scale overflows for the smallest subnormal scales
    floor = torch.full_like(scale, eps) / scale
    return u / norm.clamp(min=floor)


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
    qn = l2_normalize(q, eps)
    kn = l2_normalize(k, eps)
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
    positives: str = "out",
    negatives: Tensor | None = None,
) -> Tensor:
    """NT-Xent / SupCon (L_out or L_in) loss by the definition, building the full M×M matrix.

    For anchor ``a`` with positives ``P(a) = {p ≠ a : labels[p] == labels[a]}``::

        loss_a = logsumexp_{k ≠ a} s_ak − mean_{p ∈ P(a)} s_ap,   s_ak = ẑ_a·ẑ_k / τ

    with ``ẑ = z / max(‖z‖, eps)``. ``reduction="mean"`` averages over anchors that have at least
    one positive, ``"sum"`` sums over them, ``"none"`` returns the (M,) per-anchor losses with 0 for
    anchors without a positive. With two views this is the SimCLR paper's NT-Xent (Eq. 1).

    ``positives="in"`` is SupCon's L_in (Khosla et al. 2020, Eq. 3), the mean taken inside the log::

        loss_a = logsumexp_{k ≠ a} s_ak − log( mean_{p ∈ P(a)} exp(s_ap) )

    (equal to L_out when every anchor has one positive). ``negatives`` (K, D) are extra keys, e.g.
    a memory bank: normalised like ``z`` and added to every anchor's log-sum-exp, never positives.

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
    zn = l2_normalize(z, eps)
    s = zn @ zn.T / temperature
    m = z.shape[0]
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    s_keys = s.masked_fill(self_mask, float("-inf"))
    if negatives is not None:
        neg = l2_normalize(negatives.to(z.dtype), eps)
        s_keys = torch.cat([s_keys, zn @ neg.T / temperature], dim=1)
    lse = torch.logsumexp(s_keys, dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    if positives == "out":
        pos_term = (s * pos).sum(dim=1) / n_pos.clamp(min=1)
    elif positives == "in":
        pos_lse = torch.logsumexp(s.masked_fill(~pos, float("-inf")), dim=1)
        pos_term = pos_lse - torch.log(n_pos.clamp(min=1).to(s.dtype))
    else:
        raise ValueError(f"positives must be 'out' or 'in', got {positives!r}")
    has_pos = n_pos > 0
    per_anchor = torch.where(has_pos, lse - pos_term, torch.zeros_like(lse))
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
    zn = l2_normalize(z.double(), eps)
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


# ------------------------------------------------------------------------------------------------
# the peers' losses, by their published definitions (the fastclr.compat entry points match these)


def _unit64(z: Tensor, eps: float) -> Tensor:
    return l2_normalize(z.double(), eps)


def pml_ntxent_reference(
    z: Tensor, labels: Tensor, temperature: float = 0.07, eps: float = 1e-12
) -> Tensor:
    """pytorch-metric-learning's ``NTXentLoss`` (default distance and reducer), in float64.

    Every positive pair ``(a, p)`` is one term whose denominator holds that positive and the
    anchor's negatives only (the anchor's other positives are left out)::

        loss_ap = −log( exp(s_ap) / (exp(s_ap) + Σ_{n : label n ≠ label a} exp(s_an)) )

    averaged over all positive pairs; 0 when the batch has no positive pair or no negative pair.
    (PML adds the dtype's smallest normal number inside the log; that only matters for a pair
    whose loss exceeds about 87 in float32, and is left out here.)
    """
    zn = _unit64(z, eps)
    s = zn @ zn.T / temperature
    m = z.shape[0]
    self_mask = torch.eye(m, dtype=torch.bool, device=z.device)
    same = labels[:, None] == labels[None, :]
    pos = same & ~self_mask
    neg = ~same
    if not bool(pos.any()) or not bool(neg.any()):
        return (z * 0).sum().double()
    neg_lse = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
    pair_loss = torch.logaddexp(s, neg_lse) - s  # (M, M); only the positive entries are used
    return pair_loss[pos].mean()


def solo_simclr_reference(z: Tensor, indexes: Tensor, temperature: float = 0.1) -> Tensor:
    """solo-learn's ``simclr_loss_func`` in float64: positives summed inside the log::

        loss_a = −log( Σ_{p ∈ P(a)} exp(s_ap) / Σ_{k ≠ a} exp(s_ak) ),   mean over all anchors

    (for one positive per anchor this is NT-Xent; with more it is L_in without its 1/|P(a)|).
    """
    zn = _unit64(z, 1e-12)
    s = zn @ zn.T / temperature
    self_mask = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    pos = (indexes[:, None] == indexes[None, :]) & ~self_mask
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    pos_lse = torch.logsumexp(s.masked_fill(~pos, float("-inf")), dim=1)
    return (lse - pos_lse).mean()


def supcontrast_reference(
    features: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    upcast: bool = True,
) -> Tensor:
    """SupContrast's ``SupConLoss`` (Khosla et al.'s code) in float64, on (bsz, V, D) features.

    Rows are the V views stacked view-major; anchors are all rows (``"all"``) or view 0
    (``"one"``); per anchor ``−(τ/τ_base) · mean_{p ∈ P(a)} (s_ap − logsumexp_{k ≠ a} s_ak)``
    with ``s_ak = f_a·f_k / τ``, 0 for an anchor without a positive; the mean is over ALL
    anchors. The features are used as given, NOT normalised: SupContrast's loss does not
    normalise (its models do, before the loss). ``labels`` are (bsz,) class ids or None (each
    sample its own class). ``upcast=False`` computes in the features' dtype.
    """
    bsz, n_views = features.shape[0], features.shape[1]
    flat = features.reshape(bsz, n_views, -1)
    keys = torch.cat(torch.unbind(flat.double() if upcast else flat, dim=1), dim=0)
    row_labels = (labels if labels is not None else torch.arange(bsz)).to(keys.device)
    row_labels = row_labels.repeat(n_views)
    n_anchors = bsz if contrast_mode == "one" else bsz * n_views
    s = keys[:n_anchors] @ keys.T / temperature
    idx = torch.arange(n_anchors, device=keys.device)
    self_mask = torch.zeros_like(s, dtype=torch.bool)
    self_mask[idx, idx] = True
    lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
    pos = (row_labels[:n_anchors, None] == row_labels[None, :]) & ~self_mask
    n_pos = pos.sum(dim=1)
    mean_log_prob = ((s - lse[:, None]) * pos).sum(dim=1) / n_pos.clamp(min=1)
    return -(temperature / base_temperature) * mean_log_prob.mean()


def lightly_memory_bank_reference(
    out0: Tensor, out1: Tensor, bank: Tensor, temperature: float = 0.5, upcast: bool = True
) -> Tensor:
    """lightly's ``NTXentLoss`` with a memory bank (MoCo form), in float64, for a given bank.

    Anchors are the rows of ``out0``; each one's logits are its positive ``out1[i]`` and every
    row of ``bank`` (K, D) (the other rows of the batch are NOT keys)::

        loss_i = −log( exp(s_i⁺) / (exp(s_i⁺) + Σ_j exp(s(out0_i, bank_j))) )

    with ``s_i⁺ = s(out0_i, out1_i)``,

    averaged over the N anchors. ``upcast=False`` computes in the inputs' dtype (for timing),
    building the (N, K) logits as lightly does.
    """
    if upcast:
        q, p, b = _unit64(out0, 1e-12), _unit64(out1, 1e-12), _unit64(bank, 1e-12)
    else:
        q, p = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
        b = F.normalize(bank.to(out0.dtype), dim=1)
    s_pos = (q * p).sum(dim=1, keepdim=True) / temperature
    logits = torch.cat([s_pos, q @ b.T / temperature], dim=1)
    return (torch.logsumexp(logits, dim=1) - s_pos[:, 0]).mean()
