"""pytorch-metric-learning's ``NTXentLoss`` and ``SupConLoss`` on fastclr's fused backends.

Change ``from pytorch_metric_learning.losses import NTXentLoss`` to
``from fastclr.compat.pml import NTXentLoss``; the call stays ``loss(embeddings, labels)``.

Reproduced (PML 2.x with its default ``CosineSimilarity`` distance and default reducers):

* defaults: ``NTXentLoss(temperature=0.07)``, ``SupConLoss(temperature=0.1)``;
* ``NTXentLoss``: every positive pair ``(a, p)`` is one term, and its denominator holds that
  positive and the anchor's NEGATIVES only (the anchor's other positives are left out)::

      loss_ap = −log( exp(s_ap) / (exp(s_ap) + Σ_{n : label n ≠ label a} exp(s_an)) )

  averaged over all positive pairs. For two views (one positive per anchor) this is NT-Xent and
  equals ``fastclr.NTXentLoss``; with several positives per anchor it is larger than SupCon.
* ``SupConLoss``: SupCon's L_out, ``logsumexp_{k≠a} s_ak − mean_{p ∈ P(a)} s_ap``, averaged over
  the anchors with a positive (PML: over the non-zero per-anchor losses, which are the same
  anchors unless a loss rounds to exactly 0);
* a batch with no positive pair or no negative pair gives 0 (still attached to the graph, so
  ``backward()`` works), where ``fastclr.ntxent`` raises.

PML's constructor arguments are accepted at their default values —
``distance=CosineSimilarity()``, ``reducer=MeanReducer()`` (NTXent) / ``AvgNonZeroReducer()``
(SupCon), ``embedding_regularizer=None`` with any ``embedding_reg_weight``, any ``collect_stats``
— and the losses have PML's ``.distance``,
``.reducer`` and ``.collect_stats``. Where pytorch-metric-learning is installed they extend its
``BaseMetricLossFunction``, so its wrappers take them: ``DistributedLossWrapper(loss)`` gathers
every rank's rows and computes this loss on them, as for PML's own losses. Labels may be integer,
bool or floating (compared by equality, as PML does). The loss is returned in PML's dtype (under
autocast that of its last ops on that device: bfloat16 on a CPU, float32 on CUDA) and computed in
float32 (float64 for float64 inputs).

Not reproduced, with a clear ``TypeError``: miners (``indices_tuple``, which also rules out
``DistributedLossWrapper(efficient=True)``), ``ref_emb``/``ref_labels``, any other distance,
reducer or an embedding regularizer, and a distance or reducer with ``collect_stats=True`` (no
statistics are recorded). PML adds the dtype's smallest normal number inside the log of each
pair; that changes a pair's loss only above about 87 (float32) or 9.7 (float16), and is left out.

How the pair form is computed without the M×M matrix: the fused kernel gives
``L_a = logsumexp_{k≠a} s_ak``; the positive pairs (M·(V−1) for V views, Σ n_c² for classes of
n_c rows) give ``P_a = logsumexp_{p∈P(a)} s_ap``; the negatives' log-sum-exp is
``L_a + log(1 − exp(P_a − L_a))``. An anchor with one positive needs no subtraction
(``loss = L_a − s_ap`` exactly); with several, the subtraction costs precision only when the
negatives hold a tiny part of the anchor's mass (absolute error about float32 epsilon times
``Σ_p' exp(s_ap') / exp(s_ap)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from fastclr.compat._common import check_labels, check_rows, full_precision, peer_dtype, reject
from fastclr.loss import (
    BackendName,
    FusedRows,
    check_temperature,
    fused_rows,
    positive_mean,
    positive_pairs,
    require_finite,
    resolve_backend,
    segment_logsumexp,
)

__all__ = ["NTXentLoss", "SupConLoss"]

_PML_EPS = 1e-12  # PML normalises with torch.nn.functional.normalize's default eps


def _prepare(loss: str, embeddings: Any, labels: Any) -> tuple[Tensor, Tensor] | None:
    """Validate a PML-style call; None when PML would return 0 (no positive or no negative pair)."""
    if labels is None:
        raise ValueError(
            f"{loss}(embeddings, labels): labels are required (PML's miner-only form, "
            "indices_tuple without labels, is not supported)"
        )
    z = check_rows("embeddings", embeddings)
    lab = check_labels("labels", labels, z.shape[0], z)  # integer, bool or floating, as PML
    if z.shape[0] < 2:
        return None
    _, counts = torch.unique(lab, return_counts=True)
    if counts.numel() < 2 or int(counts.max()) < 2:
        return None  # every row its own class, or a single class: PML's "no valid pairs"
    return z, lab


def _zero(embeddings: Tensor) -> Tensor:
    """PML's zero loss: 0, attached to the graph so that backward() works."""
    return (embeddings * 0).sum()


def _run(
    loss: str,
    peer: str,
    form: Callable[[Tensor, Tensor, float, str], Tensor],
    embeddings: Tensor,
    labels: Tensor | None,
    temperature: float,
    backend: BackendName,
    check_finite: bool,
) -> Tensor:
    """What both losses do around their maths: the checks, PML's zero without pairs, the
    backend, full precision inside, PML's output dtype outside."""
    temperature = check_temperature(temperature)
    ready = _prepare(loss, embeddings, labels)
    if ready is None:
        return _zero(embeddings)
    z, lab = ready
    if check_finite and not torch.compiler.is_compiling():
        require_finite(z)
    name = resolve_backend(backend, z.device, z.dtype)
    out_dtype = peer_dtype(peer, z)
    with full_precision(z):
        return form(z, lab, temperature, name).to(out_dtype)


def pml_ntxent(
    embeddings: Tensor,
    labels: Tensor | None,
    temperature: float = 0.07,
    backend: BackendName = "auto",
    check_finite: bool = True,
) -> Tensor:
    """Functional form of :class:`NTXentLoss` (see the module docstring for the maths)."""
    return _run(
        "NTXentLoss",
        "pml_ntxent",
        _pair_form,
        embeddings,
        labels,
        temperature,
        backend,
        check_finite,
    )


def _pair_form(z: Tensor, lab: Tensor, temperature: float, name: str) -> Tensor:
    """The mean over positive pairs of ``logaddexp(s_ap, N_a) − s_ap`` (N_a: negatives' LSE)."""
    rows = fused_rows(z, lab, temperature, name, _PML_EPS)
    m = z.shape[0]
    a, p = positive_pairs(lab, 0, m)
    s_pair = (rows.q[a] * rows.keys[p]).sum(dim=1) / temperature
    n_pos = torch.bincount(a, minlength=m)
    lse = rows.lse.to(s_pair.dtype)
    pos_lse = segment_logsumexp(s_pair, a, m)
    # log Σ_negatives = L + log(1 − exp(P − L)); P ≤ L up to rounding, so clamp just below 0.
    tiny = torch.finfo(lse.dtype).eps
    gap = torch.where(n_pos > 1, pos_lse - lse, torch.full_like(lse, -1.0)).clamp(max=-tiny)
    neg_lse = lse + torch.log(-torch.expm1(gap))
    neg_lse = _exact_where_ill_conditioned(
        neg_lse, pos_lse, s_pair, a, n_pos, rows, lab, temperature
    )
    single = n_pos[a] == 1
    pair_loss = torch.where(single, lse[a] - s_pair, torch.logaddexp(s_pair, neg_lse[a]) - s_pair)
    return pair_loss.mean()


# The subtraction above multiplies the kernel's relative error (~1e-7) by at most this factor
# before an anchor's negatives are recomputed exactly: the loss error stays below ~1e-5.
_MAX_AMPLIFICATION = 64.0
# Anchors recomputed exactly are taken this many at a time (a chunk × M block of logits).
_EXACT_CHUNK = 256


def _exact_where_ill_conditioned(
    neg_lse: Tensor,
    pos_lse: Tensor,
    s_pair: Tensor,
    a: Tensor,
    n_pos: Tensor,
    rows: FusedRows,
    labels: Tensor,
    temperature: float,
) -> Tensor:
    """Recompute ``neg_lse`` directly for anchors whose subtraction lost precision.

    The error of a pair's loss from the subtraction is about the kernel's relative error times
    ``Σ_{p'} exp(s_ap') / (exp(N_a) + exp(s_ap))`` (the other positives' mass against this pair's
    denominator). Where that factor exceeds ``_MAX_AMPLIFICATION`` for the anchor's weakest
    positive, its negatives' log-sum-exp is recomputed from its row of logits, masked by label,
    in chunks of rows (no M×M matrix). Well-separated batches (the usual case) recompute nothing.
    """
    weakest = torch.full_like(neg_lse, float("inf")).scatter_reduce(
        0, a, s_pair.detach(), "amin", include_self=True
    )
    denom = torch.logaddexp(neg_lse.detach(), weakest)
    amplification = (pos_lse.detach() - denom).exp()
    bad = torch.nonzero((n_pos > 1) & (amplification > _MAX_AMPLIFICATION)).flatten()
    if bad.numel() == 0:
        return neg_lse
    exact = []
    for start in range(0, bad.numel(), _EXACT_CHUNK):
        idx = bad[start : start + _EXACT_CHUNK]
        logits = rows.q[idx] @ rows.keys.T / temperature
        same = labels[idx, None] == labels[None, :]
        exact.append(torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1))
    return neg_lse.index_put((bad,), torch.cat(exact).to(neg_lse.dtype))


def pml_supcon(
    embeddings: Tensor,
    labels: Tensor | None,
    temperature: float = 0.1,
    backend: BackendName = "auto",
    check_finite: bool = True,
) -> Tensor:
    """Functional form of :class:`SupConLoss` (SupCon's L_out, PML's zero-when-no-pair)."""
    return _run(
        "SupConLoss",
        "pml_supcon",
        _supcon_form,
        embeddings,
        labels,
        temperature,
        backend,
        check_finite,
    )


def _supcon_form(z: Tensor, lab: Tensor, temperature: float, name: str) -> Tensor:
    rows = fused_rows(z, lab, temperature, name, _PML_EPS)
    pos_mean, n_pos = positive_mean(rows, temperature)
    has_pos = n_pos > 0
    per_anchor = torch.where(has_pos, rows.lse.to(pos_mean.dtype) - pos_mean, 0.0)
    return per_anchor.sum() / has_pos.sum()


def _pml_base() -> Any:
    """PML's ``BaseMetricLossFunction`` where PML is installed (its wrappers check for it)."""
    try:
        from pytorch_metric_learning.losses import BaseMetricLossFunction
    except ImportError:
        return nn.Module
    return BaseMetricLossFunction


if TYPE_CHECKING:
    _Base = nn.Module
else:
    _Base = _pml_base()
_PML_INSTALLED = _Base is not nn.Module
_PML_ARGS = (
    "collect_stats",
    "reducer",
    "distance",
    "embedding_regularizer",
    "embedding_reg_weight",
)


def _default_cosine(distance: Any) -> bool:
    from pytorch_metric_learning.distances import CosineSimilarity

    return (
        type(distance) is CosineSimilarity
        and distance.p == 2
        and distance.power == 1
        and distance.normalize_embeddings
    )


def _default_reducer(reducer: Any, name: str) -> bool:
    from pytorch_metric_learning import reducers

    want = getattr(reducers, name)
    if type(reducer) is not want:
        return False
    return name != "AvgNonZeroReducer" or (reducer.low == 0 and reducer.high is None)


def _unsupported(loss: str, reducer_name: str, given: dict[str, Any]) -> list[str]:
    """The PML arguments in ``given`` that differ from PML's defaults, described."""
    if not _PML_INSTALLED:
        return [
            f"{k}={v!r} (pytorch-metric-learning is not installed)"
            for k, v in given.items()
            if k in ("reducer", "distance", "embedding_regularizer") and v is not None
        ]
    out = []
    distance, reducer = given.get("distance"), given.get("reducer")
    if distance is not None and not _default_cosine(distance):
        out.append(f"distance={distance!r} (only CosineSimilarity() with p=2, power=1)")
    if reducer is not None and not _default_reducer(reducer, reducer_name):
        out.append(f"reducer={reducer!r} (only {reducer_name}(), {loss}'s default)")
    if given.get("embedding_regularizer") is not None:
        out.append("embedding_regularizer (none is supported)")
    for key, obj in (("distance", distance), ("reducer", reducer)):
        if obj is not None and getattr(obj, "collect_stats", False):
            out.append(f"{key} with collect_stats=True (no statistics are recorded)")
    return out


class _PMLLoss(_Base):
    """Shared constructor: PML's temperature and constructor arguments, fastclr's options."""

    _name = ""
    _reducer = "MeanReducer"
    #: the functional form each subclass computes (pml_ntxent, pml_supcon)
    _loss: Callable[[Tensor, Tensor | None, float, BackendName, bool], Tensor]

    def __init__(
        self,
        temperature: float,
        *,
        backend: BackendName = "auto",
        check_finite: bool = True,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - set(_PML_ARGS))
        if unknown:
            raise TypeError(
                f"pytorch-metric-learning {self._name}: unexpected argument(s) "
                f"{', '.join(unknown)}; PML's are temperature, {', '.join(_PML_ARGS)}"
            )
        problems = _unsupported(self._name, self._reducer, kwargs)
        if problems:
            raise TypeError(
                f"pytorch-metric-learning {self._name}: fastclr's compatible loss implements "
                f"PML's defaults only; not supported: {'; '.join(problems)}. Use "
                "pytorch-metric-learning itself for these"
            )
        if _PML_INSTALLED:
            super().__init__(**kwargs)  # sets .distance, .reducer, .collect_stats as PML does
        else:
            super().__init__()
            self.collect_stats = bool(kwargs.get("collect_stats") or False)
            self.distance: Any = None
            self.reducer: Any = None
            self.embedding_regularizer = None
            self.embedding_reg_weight = kwargs.get("embedding_reg_weight", 1)
        self.temperature = check_temperature(temperature)
        if _PML_INSTALLED:  # recorded as PML records its own losses' temperature
            record = cast(Any, self).add_to_recordable_attributes
            record(list_of_names=["temperature"], is_stat=False)
        self.backend: BackendName = backend
        self.check_finite = check_finite

    def get_default_distance(self) -> Any:
        """PML's default distance of these losses (called by PML's constructor)."""
        from pytorch_metric_learning.distances import CosineSimilarity

        return CosineSimilarity()

    def get_default_reducer(self) -> Any:
        """PML's default reducer of this loss (called by PML's constructor)."""
        from pytorch_metric_learning import reducers

        return getattr(reducers, self._reducer)()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, backend={self.backend!r}"

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        indices_tuple: Any = None,
        ref_emb: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        reject(
            f"pytorch-metric-learning {self._name}",
            "labels-only calls; with DistributedLossWrapper use efficient=False",
            indices_tuple=indices_tuple,
            ref_emb=ref_emb,
            ref_labels=ref_labels,
        )
        return self._loss(embeddings, labels, self.temperature, self.backend, self.check_finite)


class NTXentLoss(_PMLLoss):
    """pytorch-metric-learning's ``NTXentLoss``: ``loss(embeddings, labels)``, τ = 0.07.

    Args:
        temperature: τ > 0 (PML's default 0.07).
        collect_stats, reducer, distance, embedding_regularizer, embedding_reg_weight: PML's, at
            their defaults (``MeanReducer()``, ``CosineSimilarity()``, no regularizer); anything
            else raises ``TypeError`` naming it.
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Shape: embeddings (M, D), labels (M,) integer, bool or floating; output a scalar in PML's
    dtype (the embeddings' dtype without autocast).

    Example:
        >>> loss_fn = NTXentLoss()
        >>> z, labels = torch.randn(8, 16), torch.arange(4).repeat(2)
        >>> loss = loss_fn(z, labels)
    """

    _name = "NTXentLoss"
    _reducer = "MeanReducer"

    def __init__(self, temperature: float = 0.07, **kwargs: Any) -> None:
        super().__init__(temperature, **kwargs)

    _loss = staticmethod(pml_ntxent)


class SupConLoss(_PMLLoss):
    """pytorch-metric-learning's ``SupConLoss``: ``loss(embeddings, labels)``, τ = 0.1.

    Args:
        temperature: τ > 0 (PML's default 0.1).
        collect_stats, reducer, distance, embedding_regularizer, embedding_reg_weight: PML's, at
            their defaults (``AvgNonZeroReducer()``, ``CosineSimilarity()``, no regularizer);
            anything else raises ``TypeError`` naming it.
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Shape: embeddings (M, D), labels (M,) integer, bool or floating; output a scalar in PML's
    dtype (the embeddings' dtype without autocast).
    """

    _name = "SupConLoss"
    _reducer = "AvgNonZeroReducer"

    def __init__(self, temperature: float = 0.1, **kwargs: Any) -> None:
        super().__init__(temperature, **kwargs)

    _loss = staticmethod(pml_supcon)
