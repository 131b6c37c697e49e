"""NT-Xent (SimCLR) and SupCon losses: the ``NTXentLoss`` module and the ``ntxent`` functional.

The loss is split in two parts:

* the positive term ``mean_{p ∈ P(a)} s_ap`` is an O(M·D) segment sum over labels, done in plain
  torch (autograd handles its gradient);
* the log-sum-exp over every ``k ≠ a`` is the only part that needs all M² pairs; a backend computes
  it without storing the M×M matrix (Triton on CUDA, native C++ on CPU) as a torch custom op.

``backend="reference"`` evaluates the definition in :mod:`fastclr.reference` instead.

One module a job, after Liger-Kernel's layout:

* :mod:`~fastclr.loss.checks` — the input checks every entry point (and :mod:`fastclr.ops`,
  :mod:`fastclr.compat`) applies;
* :mod:`~fastclr.loss.registry` — the backends and the rule that picks one;
* :mod:`~fastclr.loss.fused` — the loss from a backend's log-sum-exp: normalised rows, keys,
  positive terms (the pieces :mod:`fastclr.compat` builds its drop-ins from);
* :mod:`~fastclr.loss.functional` — :func:`ntxent`;
* :mod:`~fastclr.loss.module` — :class:`NTXentLoss`; :mod:`~fastclr.loss.bank`, its memory bank.
"""

from fastclr.loss.checks import (
    as_batch,
    check_embeddings,
    check_negatives,
    check_temperature,
    require_finite,
)
from fastclr.loss.functional import Positives, Reduction, ntxent
from fastclr.loss.fused import (
    FusedRows,
    fused_rows,
    lse_all_keys,
    positive_logits_rect,
    positive_lse,
    positive_mean,
    positive_pairs,
    reduce_anchors,
    segment_logsumexp,
)
from fastclr.loss.module import NTXentLoss
from fastclr.loss.registry import (
    BACKENDS,
    BackendName,
    LSEBackend,
    available_backends,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "BackendName",
    "FusedRows",
    "LSEBackend",
    "NTXentLoss",
    "Positives",
    "Reduction",
    "as_batch",
    "available_backends",
    "check_embeddings",
    "check_negatives",
    "check_temperature",
    "fused_rows",
    "lse_all_keys",
    "ntxent",
    "positive_logits_rect",
    "positive_lse",
    "positive_mean",
    "positive_pairs",
    "reduce_anchors",
    "require_finite",
    "resolve_backend",
    "segment_logsumexp",
]
