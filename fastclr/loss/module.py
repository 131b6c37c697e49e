"""``NTXentLoss``: the NT-Xent (SimCLR) / SupCon loss as an ``nn.Module`` (with an optional
memory bank of past samples' keys, :mod:`fastclr.loss.bank`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastclr.loss.bank import push_keys
from fastclr.loss.checks import POSITIVES, REDUCTIONS, check_choice, check_temperature
from fastclr.loss.functional import Positives, Reduction, ntxent
from fastclr.loss.registry import BACKENDS, BackendName

__all__ = ["NTXentLoss"]


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
        self.temperature = check_temperature(temperature)
        if (
            isinstance(memory_bank_size, bool)
            or not isinstance(memory_bank_size, int)
            or memory_bank_size < 0
        ):
            raise ValueError(f"memory_bank_size must be an int >= 0, got {memory_bank_size!r}")
        check_choice("reduction", reduction, REDUCTIONS)
        BACKENDS.check_name(backend)
        check_choice("positives", positives, POSITIVES)
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

    def _enqueue(self, keys: Tensor) -> None:
        """Push the normalised rows of the last view (all ranks' under a gather)."""
        self.bank, self._ptr = push_keys(
            self.bank, self._ptr, keys, self.memory_bank_size, self.eps, self.gather_distributed
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}, gather_distributed={self.gather_distributed}, "
            f"positives={self.positives!r}, memory_bank_size={self.memory_bank_size}"
        )
