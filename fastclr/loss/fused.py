"""The loss from a log-sum-exp backend: normalised rows, keys, the fused LSE, positive terms.

The loss splits in two (see :mod:`fastclr.loss`): the log-sum-exp over every ``k ≠ a``, which a
backend computes without the M×M matrix (:func:`fused_rows`), and the positive term, an O(M·D)
segment sum over labels in plain torch (:func:`positive_mean`; :func:`positive_lse` for SupCon's
L_in). :func:`~fastclr.loss.ntxent` and the drop-ins of :mod:`fastclr.compat` are built from
these pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fastclr.distributed import all_gather_no_grad, gather_rows, rank
from fastclr.loss.registry import BACKENDS, lse_backend
from fastclr.reference import l2_normalize

__all__ = [
    "FusedRows",
    "fused_rows",
    "lse_all_keys",
    "positive_logits_rect",
    "positive_lse",
    "positive_mean",
    "positive_pairs",
    "reduce_anchors",
    "segment_logsumexp",
    "views_positive_logits",
]


@dataclass(frozen=True)
class FusedRows:
    """The normalised anchors and keys of one loss call, and the fused log-sum-exp over the keys.

    Shared by :func:`ntxent` and the :mod:`fastclr.compat` entry points. Anchor ``i`` is key
    ``offset + i``; ``lse[i] = logsumexp_{j ≠ offset+i} s_ij`` over every key and every extra
    negative, computed by the backend without an anchors × keys matrix.
    """

    q: Tensor  # (Mq, D) normalised anchors: fp32, or fp64 where the inputs are fp64
    keys: Tensor  # (Mk, D) normalised rows that carry labels (all ranks' under a gather)
    key_labels: Tensor  # (Mk,)
    offset: int
    lse: Tensor  # (Mq,) fp32 (fp64 on the reference with fp64 inputs), natural log
    n_views: int  # V when the keys are this process's V stacked views and q is all of them; else 0


def _lse_rect(
    name: str, q: Tensor, k: Tensor, offset: int, temperature: float, kdtype: torch.dtype
) -> Tensor:
    """Rectangular LSE (query ``i`` excludes key ``offset + i``) on backend ``name``.

    An exact backend (the reference) gets the rows as they are, so fp64 inputs keep fp64; the
    fused kernels read tiles in ``kdtype`` (bf16/fp16 use the tensor cores) and accumulate in fp32.
    """
    if BACKENDS.info(name).exact:
        return lse_backend(name).lse_rect(q, k, offset, temperature)
    return lse_backend(name).lse_rect(q.to(kdtype), k.to(kdtype), offset, temperature)


# Below this many keys, queries against keys is done as one (Mq, Mk) matmul: that block is no
# larger than the (Mq, D) rows themselves for D ≥ 32, and the rectangular kernel would need
# ceil(Mq / Mk) launches.
_DENSE_KEYS = 32


def lse_all_keys(
    q: Tensor, keys: Tensor, temperature: float, name: str, kdtype: torch.dtype
) -> Tensor:
    """``logsumexp_j q_i·k_j / τ`` over EVERY key (none excluded), without the (Mq, Mk) matrix.

    The rectangular kernel excludes key ``i`` from query ``i``; with queries taken in chunks of at
    most Mk rows and offset 0, that excluded term is added back exactly with ``logaddexp`` (no
    subtraction, so no cancellation). ``q`` and ``keys`` are normalised rows in one dtype.
    """
    mk = keys.shape[0]
    if mk < _DENSE_KEYS:
        return torch.logsumexp(q @ keys.T / temperature, dim=1)
    parts = []
    for start in range(0, q.shape[0], mk):
        qc = q[start : start + mk]
        lse = _lse_rect(name, qc, keys, 0, temperature, kdtype).to(q.dtype)
        excluded = (qc * keys[: qc.shape[0]]).sum(dim=1) / temperature
        parts.append(torch.logaddexp(lse, excluded))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def fused_rows(
    z: Tensor,
    labels: Tensor,
    temperature: float,
    name: str,
    eps: float,
    *,
    from_views: int = 0,
    distributed: bool = False,
    negatives: Tensor | None = None,
    n_anchors: int | None = None,
) -> FusedRows:
    """Normalise ``z`` (M, D), gather keys if ``distributed``, and run the fused LSE.

    ``from_views=V`` says ``z`` is V stacked views (labels are sample indices); ``negatives``
    (K, D) are extra keys of every anchor (no gradient flows into them); ``n_anchors`` keeps only
    the first rows as anchors (keys are still all rows). ``name`` is a resolved backend.
    """
    work = torch.float64 if z.dtype == torch.float64 else torch.float32
    kdtype = z.dtype if z.dtype in (torch.float16, torch.bfloat16) else work
    zhat = l2_normalize(z.to(work), eps)
    extra: list[Tensor] = []
    if negatives is not None:
        extra.append(l2_normalize(negatives.detach().to(work), eps))
    if distributed:
        keys, offset = gather_rows(zhat)
        local = labels + rank() * (z.shape[0] // from_views) if from_views else labels
        key_labels = all_gather_no_grad(local)
    else:
        keys, offset, key_labels = zhat, 0, labels
    q = zhat if n_anchors is None else zhat[:n_anchors]
    if not distributed and not extra and n_anchors is None:
        tiles = zhat if BACKENDS.info(name).exact else zhat.to(kdtype)
        lse = lse_backend(name).lse_sym(tiles, temperature)
    else:
        all_keys = torch.cat([keys, *extra]) if extra else keys
        lse = _lse_rect(name, q, all_keys, offset, temperature, kdtype)
    fast_views = from_views if (not distributed and n_anchors is None) else 0
    return FusedRows(q, keys, key_labels, offset, lse, fast_views)


def positive_pairs(key_labels: Tensor, offset: int, n_anchors: int) -> tuple[Tensor, Tensor]:
    """Index lists (anchor i, key j) of every positive pair, in O(#pairs) memory (no M×M mask).

    Anchor ``i`` is key ``offset + i``; its positives are the other keys with its label. Keys are
    sorted by label once; each anchor's pairs are then a contiguous run of that order.
    """
    order = torch.argsort(key_labels, stable=True)
    _, inverse, counts = torch.unique(key_labels, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # first sorted position of each class
    cls = inverse[offset : offset + n_anchors]
    per_anchor = counts[cls]
    anchor = torch.repeat_interleave(torch.arange(n_anchors, device=key_labels.device), per_anchor)
    first = torch.cumsum(per_anchor, 0) - per_anchor
    within = torch.arange(anchor.shape[0], device=key_labels.device) - first[anchor]
    key = order[starts[cls][anchor] + within]
    keep = key != anchor + offset
    return anchor[keep], key[keep]


def segment_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """``out[s] = logsumexp(values[index == s])``; −inf for an empty segment (finite gradients)."""
    neg_inf = torch.full((size,), float("-inf"), dtype=values.dtype, device=values.device)
    peak = neg_inf.scatter_reduce(0, index, values.detach(), "amax", include_self=True)
    shift = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = values.new_zeros(size).index_add(0, index, torch.exp(values - shift[index]))
    empty = total <= 0
    out = torch.log(torch.where(empty, torch.ones_like(total), total)) + shift
    return torch.where(empty, neg_inf, out)


def positive_mean(rows: FusedRows, temperature: float) -> tuple[Tensor, Tensor]:
    """``mean_{p ∈ P(a)} s_ap`` per anchor and ``|P(a)|``: an O(M·D) segment sum, no pairs."""
    if rows.n_views:
        return views_positive_logits(rows.keys, rows.n_views, temperature)
    return positive_logits_rect(rows.q, rows.keys, rows.key_labels, rows.offset, temperature)


def positive_lse(rows: FusedRows, temperature: float) -> tuple[Tensor, Tensor]:
    """``logsumexp_{p ∈ P(a)} s_ap`` per anchor (−inf without a positive) and ``|P(a)|``.

    Needs every positive pair: M·(V−1) of them for V views, Σ_c n_c² for labels.
    """
    if rows.n_views:
        m, d = rows.keys.shape
        per_view = rows.keys.view(rows.n_views, m // rows.n_views, d)
        s = torch.einsum("vnd,wnd->vwn", per_view, per_view) / temperature
        eye = torch.eye(rows.n_views, dtype=torch.bool, device=s.device)[:, :, None]
        lse = torch.logsumexp(s.masked_fill(eye, float("-inf")), dim=1).reshape(m)
        return lse, torch.full((m,), rows.n_views - 1, device=s.device, dtype=torch.long)
    mq = rows.q.shape[0]
    a, k = positive_pairs(rows.key_labels, rows.offset, mq)
    s_pair = (rows.q[a] * rows.keys[k]).sum(dim=1) / temperature
    n_pos = torch.bincount(a, minlength=mq)
    return segment_logsumexp(s_pair, a, mq), n_pos


def reduce_anchors(per_anchor: Tensor, has_pos: Tensor, reduction: str) -> Tensor:
    """The per-anchor losses reduced: 0 where an anchor has no positive; ``"mean"`` over the
    anchors that have one."""
    per_anchor = torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor))
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum()
    if reduction == "sum":
        return total
    return total / has_pos.sum().clamp(min=1)


def positive_logits_rect(
    q: Tensor, k: Tensor, k_labels: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """Mean positive logit of query rows among all key rows (segment sums over key labels)."""
    classes, k_inverse, counts = torch.unique(k_labels, return_inverse=True, return_counts=True)
    class_sum = k.new_zeros(classes.shape[0], k.shape[1]).index_add(0, k_inverse, k)
    q_inverse = k_inverse[q_offset : q_offset + q.shape[0]]
    self_key = k[q_offset : q_offset + q.shape[0]]
    n_pos = counts[q_inverse] - 1
    pos_sum = class_sum[q_inverse] - self_key
    pos_mean = (q * pos_sum).sum(dim=1) / (temperature * n_pos.clamp(min=1).to(q.dtype))
    return pos_mean, n_pos


def views_positive_logits(zhat: Tensor, n_views: int, temperature: float) -> tuple[Tensor, Tensor]:
    """The same segment sum for V stacked views: the class of row ``v·N + i`` is sample ``i``."""
    m, d = zhat.shape
    per_view = zhat.view(n_views, m // n_views, d)
    class_sum = per_view.sum(dim=0)  # (N, D)
    pos_sum = class_sum.unsqueeze(0) - per_view  # (V, N, D)
    pos_mean = (per_view * pos_sum).sum(dim=2).reshape(m) / (temperature * (n_views - 1))
    n_pos = torch.full((m,), n_views - 1, device=zhat.device, dtype=torch.long)
    return pos_mean, n_pos
