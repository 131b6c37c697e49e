"""NT-Xent (SimCLR) and SupCon losses: the public ``NTXentLoss`` module and ``ntxent`` functional.

The loss is split in two parts:

* the positive term ``mean_{p ∈ P(a)} s_ap`` is an O(M·D) segment sum over labels, done here in
  plain torch (autograd handles its gradient);
* the log-sum-exp over every ``k ≠ a`` is the only part that needs all M² pairs; a backend computes
  it without storing the M×M matrix (Triton on CUDA, native C++ on CPU) as a torch custom op.

``backend="reference"`` evaluates the definition in :mod:`fastclr.reference` instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from fastclr.backends import Impl, Registry, native_impl, triton_impl
from fastclr.distributed import all_gather_no_grad, gather_rows, rank, world_size
from fastclr.reference import l2_normalize, ntxent_lse_reference, ntxent_reference, views_to_batch

__all__ = ["NTXentLoss", "available_backends", "ntxent", "resolve_backend"]

Reduction = Literal["mean", "sum", "none"]
BackendName = Literal["auto", "reference", "native", "triton"]
Positives = Literal["out", "in"]
_POSITIVES = ("out", "in")
_REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class LSEBackend(Protocol):
    """What a fast backend provides: the tiled log-sum-exp over ``k ≠ a``, with autograd.

    Both functions take already-normalised rows and return fp32 per-row LSE (natural log).
    """

    def lse_sym(self, zhat: Tensor, temperature: float) -> Tensor:
        """(M,) LSE of every row of ``zhat`` against all other rows of ``zhat``."""
        ...

    def lse_rect(self, q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        """(Mq,) LSE of query rows against key rows; query ``i`` is key ``q_offset + i``."""
        ...


class _ReferenceLSE:
    """The definition, as an LSE backend (used for ``gather_distributed`` with the reference)."""

    def lse_sym(self, zhat: Tensor, temperature: float) -> Tensor:
        return ntxent_lse_reference(zhat, zhat, temperature).float()

    def lse_rect(self, q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        return ntxent_lse_reference(q, k, temperature, q_offset=q_offset).float()


def _load_native() -> LSEBackend:
    from fastclr.ops import native_ntxent

    return native_ntxent.BACKEND


def _load_triton() -> LSEBackend:
    from fastclr.ops import triton_ntxent

    return triton_ntxent.BACKEND


# The fused kernels accumulate in float32: "auto" keeps float64 inputs on the reference (asking
# for float64 is asking for its precision; pass backend="native"/"triton" to trade it for speed).
_FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: The loss backends; "auto" prefers Triton on CUDA, then the native kernel on CPU, then the
#: reference, which is always available.
BACKENDS: Registry[LSEBackend] = Registry(
    "the NT-Xent loss",
    [
        Impl("reference", _ReferenceLSE),
        native_impl(_load_native, dtypes=_FAST_DTYPES),
        triton_impl(_load_triton, dtypes=_FAST_DTYPES),
    ],
)
_BACKENDS = BACKENDS.names


def available_backends() -> list[str]:
    """Names of the loss backends usable in this process (``reference`` always is)."""
    return BACKENDS.available()


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend ``backend="auto"`` picks for tensors on ``device`` of ``dtype``.

    CUDA tensors go to Triton, CPU tensors to the native C++ kernel; where that is missing the
    reference is used, with one warning that says how to get the fast path
    (:mod:`fastclr.backends` holds the rule). float64 inputs stay on the reference: the fused
    kernels accumulate in float32, and asking for float64 is asking for its precision (pass
    ``backend="native"``/``"triton"`` to trade it for speed).
    """
    return BACKENDS.resolve(backend, device, dtype)


def _get_lse_backend(name: str) -> LSEBackend:
    return BACKENDS.get(name)


# --------------------------------------------------------------------------------------------
# validation


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive float, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return t


def _check_embeddings(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {t.dtype}"
        )
    if t.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least one feature column, got shape {tuple(t.shape)}"
        )
    return t


_NON_FINITE = (
    "embeddings contain NaN or Inf; NT-Xent of such inputs is undefined "
    "(pass check_finite=False to skip this check and its device sync)"
)


def _check_finite(z: Tensor) -> None:
    if not bool(torch.isfinite(z).all()):
        raise ValueError(_NON_FINITE)


def _as_batch(
    views: tuple[Tensor, ...], labels: Tensor | None, check_positive: bool = True
) -> tuple[Tensor, Tensor]:
    """Validate the inputs and return one (M, D) batch and its (M,) integer labels.

    ``check_positive=False`` skips the "some anchor has a positive" check on labels (under
    ``gather_distributed`` the positives of a local row may live on other ranks).
    """
    if len(views) == 0:
        raise TypeError("ntxent() needs embeddings: ntxent(z_i, z_j, ...) or ntxent(z, labels=...)")
    for i, v in enumerate(views):
        _check_embeddings(f"views[{i}]" if len(views) > 1 else "z", v)
    if labels is None:
        if len(views) < 2:
            raise ValueError(
                "got one embedding tensor and no labels: pass two or more views "
                "(ntxent(z_i, z_j)) or integer labels (ntxent(z, labels=...))"
            )
        first = views[0]
        for i, v in enumerate(views[1:], start=1):
            if v.shape != first.shape:
                raise ValueError(
                    f"all views must have the same shape: views[0] is {tuple(first.shape)}, "
                    f"views[{i}] is {tuple(v.shape)}"
                )
            if v.device != first.device:
                raise ValueError(
                    f"all views must be on one device: views[0] is on {first.device}, "
                    f"views[{i}] is on {v.device}"
                )
            if v.dtype != first.dtype:
                raise TypeError(
                    f"all views must have one dtype: views[0] is {first.dtype}, "
                    f"views[{i}] is {v.dtype}"
                )
        if first.shape[0] < 1:
            raise ValueError("views must have at least one row (sample)")
        return views_to_batch(views)
    if len(views) != 1:
        raise ValueError(
            "with labels=..., pass a single (M, D) embedding tensor, not several views"
        )
    z = views[0]
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"labels must have shape ({z.shape[0]},) to match z {tuple(z.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.device != z.device:
        raise ValueError(f"labels are on {labels.device} but z is on {z.device}")
    if z.shape[0] < 2:
        raise ValueError(f"z must have at least 2 rows, got {z.shape[0]}")
    if (
        check_positive
        and not torch.compiler.is_compiling()
        and labels.unique().numel() == labels.numel()
    ):
        raise ValueError(
            "labels give no anchor a positive: every label occurs only once (each class needs at "
            "least two rows)"
        )
    return z, labels


# --------------------------------------------------------------------------------------------
# the loss from an LSE backend


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

    The reference is called directly so that fp64 inputs keep fp64; the fused kernels read tiles
    in ``kdtype`` (bf16/fp16 use the tensor cores) and accumulate in fp32.
    """
    if name == "reference":
        return ntxent_lse_reference(q, k, temperature, q_offset=offset)
    return _get_lse_backend(name).lse_rect(q.to(kdtype), k.to(kdtype), offset, temperature)


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
        if name == "reference":
            lse = ntxent_lse_reference(zhat, zhat, temperature)
        else:
            lse = _get_lse_backend(name).lse_sym(zhat.to(kdtype), temperature)
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
        return _views_positive_logits(rows.keys, rows.n_views, temperature)
    return _positive_logits_rect(rows.q, rows.keys, rows.key_labels, rows.offset, temperature)


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


def _reduce(per_anchor: Tensor, has_pos: Tensor, reduction: str) -> Tensor:
    per_anchor = torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor))
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum()
    if reduction == "sum":
        return total
    return total / has_pos.sum().clamp(min=1)


def check_negatives(negatives: object, z: Tensor) -> Tensor:
    """Validate extra negative keys against the (M, D) batch ``z``."""
    t = _check_embeddings("negatives", negatives)
    if t.shape[1] != z.shape[1]:
        raise ValueError(
            f"negatives must have the embeddings' width {z.shape[1]}, got shape {tuple(t.shape)}"
        )
    if t.device != z.device:
        raise ValueError(f"negatives are on {t.device} but the embeddings are on {z.device}")
    return t


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
    """NT-Xent (SimCLR) / SupCon loss, functional form. See :class:`NTXentLoss`."""
    temperature = _check_temperature(temperature)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if positives not in _POSITIVES:
        raise ValueError(f"positives must be one of {_POSITIVES}, got {positives!r}")
    if not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    distributed = gather_distributed and world_size() > 1
    if labels is None and negatives is None and positives == "out" and not distributed:
        fused = _fused_views(views, backend, temperature, reduction, eps, check_finite)
        if fused is not None:
            return fused
    z, lab = _as_batch(views, labels, check_positive=not distributed)
    if negatives is not None:
        negatives = check_negatives(negatives, z)
    if check_finite and not torch.compiler.is_compiling():
        _check_finite(z)
        if negatives is not None:
            _check_finite(negatives)
    name = resolve_backend(backend, z.device, z.dtype)
    if name == "reference" and not distributed:
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
    return _reduce(rows.lse - pos_term, n_pos > 0, reduction).to(z.dtype)


def _fused_views(
    views: tuple[Tensor, ...],
    backend: str,
    temperature: float,
    reduction: str,
    eps: float,
    check_finite: bool,
) -> Tensor | None:
    """The triton backend's whole-loss op for V ≥ 2 views (fastclr.ops.triton_fused), or None
    where it does not apply (then the general path below validates and computes)."""
    first = views[0] if views else None
    if len(views) < 2 or not isinstance(first, Tensor) or first.dim() != 2:
        return None
    same = (first.shape, first.dtype, first.device)
    if any(not isinstance(v, Tensor) or (v.shape, v.dtype, v.device) != same for v in views):
        return None
    if first.dtype not in _FLOAT_DTYPES or first.numel() == 0:
        return None
    if resolve_backend(backend, first.device, first.dtype) != "triton":
        return None
    from fastclr.ops import triton_fused

    out = triton_fused.views_loss(views, temperature, reduction, eps)
    if out is None:
        return None
    if check_finite and not torch.compiler.is_compiling() and bool(out[1]):
        raise ValueError(_NON_FINITE)
    return out[0]


def _positive_logits_rect(
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


def _views_positive_logits(zhat: Tensor, n_views: int, temperature: float) -> tuple[Tensor, Tensor]:
    """The same segment sum for V stacked views: the class of row ``v·N + i`` is sample ``i``."""
    m, d = zhat.shape
    per_view = zhat.view(n_views, m // n_views, d)
    class_sum = per_view.sum(dim=0)  # (N, D)
    pos_sum = class_sum.unsqueeze(0) - per_view  # (V, N, D)
    pos_mean = (per_view * pos_sum).sum(dim=2).reshape(m) / (temperature * (n_views - 1))
    n_pos = torch.full((m,), n_views - 1, device=zhat.device, dtype=torch.long)
    return pos_mean, n_pos


class NTXentLoss(nn.Module):
    r"""NT-Xent loss (SimCLR, Chen et al. 2020), with SupCon labels (Khosla et al. 2020).

    Never builds the M×M similarity matrix on the fast backends (M = all rows of all views). For
    anchor ``a`` with positives ``P(a)`` (the other views of its sample, or the other rows with its
    label), ``s_ak = ẑ_a·ẑ_k / τ`` and ``ẑ = z / max(‖z‖₂, eps)``, the default
    (``positives="out"``, SupCon's L_out) is::

        loss_a = logsumexp_{k ≠ a} s_ak − mean_{p ∈ P(a)} s_ap

    and ``positives="in"`` (SupCon's L_in) takes the mean of the positives inside the log::

        loss_a = logsumexp_{k ≠ a} s_ak − log mean_{p ∈ P(a)} exp(s_ap)

    The two agree whenever every anchor has exactly one positive (two views). Every positive also
    sits in the denominator (the sum over all ``k ≠ a``). With two views this is the paper's Eq. 1
    and lightly's ``NTXentLoss`` at the same τ (google-research/simclr reports twice this value).
    The loss reproducing another library exactly (its defaults, its multi-positive rule, its
    memory bank) is in :mod:`fastclr.compat`: ``fastclr.compat.lightly``, ``fastclr.compat.pml``,
    ``fastclr.compat.solo`` and ``fastclr.compat.supcon``.

    Args:
        temperature: τ > 0 (paper: 0.5 for CIFAR-size batches, 0.1 for large ImageNet batches).
        reduction: ``"mean"`` over anchors with a positive, ``"sum"`` over them, or ``"none"``
            for (M,) per-anchor losses (0 where an anchor has no positive).
        backend: ``"auto"`` (Triton for CUDA tensors, native C++ for CPU tensors, the reference
            for float64 inputs or where the fast backend is missing), ``"triton"``, ``"native"``
            or ``"reference"``. The fast backends accumulate in float32 whatever the input dtype.
        gather_distributed: under ``torch.distributed``, the rows of every rank are keys of the
            local anchors (gradients flow back through the gather). Each rank's loss is the mean
            over ITS anchors; the mean of the ranks' losses (what DDP's gradient averaging
            optimises) equals the single-process loss on the concatenated batch.
        eps: smallest row norm used in the normalisation; a zero row gives a zero vector.
        check_finite: raise ``ValueError`` on NaN/Inf embeddings (costs one device sync; turn it
            off in tight loops once inputs are trusted). Inside ``torch.compile`` the check is
            skipped, since a compiled graph cannot branch on data; NaN inputs then give a NaN
            loss.
        positives: ``"out"`` (default) or ``"in"``, the multi-positive rule above. ``"in"`` needs
            every positive pair: M·(V−1) for V views, Σ n_c² over classes with labels.
        memory_bank_size: K > 0 keeps a queue of the last K samples' keys (the normalised rows of
            the LAST view of each training call, every rank's under ``gather_distributed``) and
            adds them to every anchor's denominator as negatives (``negatives=`` below). The queue
            starts empty and is pushed only when an input requires grad (evaluation leaves it
            alone); views only. lightly's MoCo form, which differs, is
            ``fastclr.compat.lightly.NTXentLoss``.

    The functional :func:`ntxent` also takes ``negatives=`` (K, D): extra keys in every anchor's
    log-sum-exp (a memory bank), normalised like the embeddings, never positives, no gradient.
    They go through the rectangular kernel (anchors against batch + K keys), without the
    M×(M+K) matrix.

    Shape:
        - views: ``forward(z_i, z_j, *more_views)``, each (N, D), V ≥ 2 views, M = V·N.
        - labels: ``forward(z, labels=labels)`` with z (M, D) and integer labels (M,).
        - output: scalar, or (M,) with ``reduction="none"``, in the input dtype.

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> z_i, z_j = torch.randn(8, 128), torch.randn(8, 128)
        >>> loss = loss_fn(z_i, z_j)
    """

    def __init__(
        self,
        temperature: float = 0.5,
        reduction: Reduction = "mean",
        backend: BackendName = "auto",
        gather_distributed: bool = False,
        eps: float = 1e-8,
        check_finite: bool = True,
        positives: Positives = "out",
        memory_bank_size: int = 0,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if (
            isinstance(memory_bank_size, bool)
            or not isinstance(memory_bank_size, int)
            or memory_bank_size < 0
        ):
            raise ValueError(f"memory_bank_size must be an int >= 0, got {memory_bank_size!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if positives not in _POSITIVES:
            raise ValueError(f"positives must be one of {_POSITIVES}, got {positives!r}")
        self.reduction: Reduction = reduction
        self.backend: BackendName = backend
        self.gather_distributed = gather_distributed
        self.eps = eps
        self.check_finite = check_finite
        self.positives: Positives = positives
        self.memory_bank_size = memory_bank_size
        # the queue's filled rows, oldest first once full (ring order starts at self._ptr)
        self.bank: Tensor
        self.register_buffer("bank", torch.empty(0, 0), persistent=False)
        self._ptr = 0

    def forward(self, *views: Tensor, labels: Tensor | None = None) -> Tensor:
        banked = self.memory_bank_size > 0
        if banked and labels is not None:
            raise ValueError(
                "memory_bank_size needs views (forward(z_i, z_j, ...)): the bank holds past "
                "samples' keys, which have no place among labels"
            )
        negatives = self.bank if banked and self.bank.shape[0] > 0 else None
        loss = ntxent(
            *views,
            labels=labels,
            temperature=self.temperature,
            reduction=self.reduction,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
            eps=self.eps,
            check_finite=self.check_finite,
            positives=self.positives,
            negatives=negatives,
        )
        if banked and torch.is_grad_enabled() and any(v.requires_grad for v in views):
            self._enqueue(views[-1])
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Push the normalised rows of the last view (all ranks' under a gather); keep the newest
        ``memory_bank_size`` rows."""
        keys = l2_normalize(keys.detach().float(), self.eps)
        if self.gather_distributed and world_size() > 1:
            keys = all_gather_no_grad(keys)
        k = self.memory_bank_size
        keys = keys[-k:]
        if self.bank.shape[0] < k:  # still filling: append, then the ring starts at row 0
            self.bank = torch.cat([self.bank.to(keys).reshape(-1, keys.shape[1]), keys])[-k:]
            self._ptr = 0
            return
        idx = (self._ptr + torch.arange(keys.shape[0], device=keys.device)) % k
        self.bank[idx] = keys
        self._ptr = (self._ptr + keys.shape[0]) % k

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}, gather_distributed={self.gather_distributed}, "
            f"positives={self.positives!r}, memory_bank_size={self.memory_bank_size}"
        )
