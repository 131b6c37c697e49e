"""NT-Xent (SimCLR) and SupCon losses: the public ``NTXentLoss`` module and ``ntxent`` functional.

The loss is split the way ../shared/DESIGN.md describes:

* the positive term ``mean_{p ∈ P(a)} s_ap`` is an O(M·D) segment sum over labels, done here in
  plain torch (autograd handles its gradient);
* the log-sum-exp over every ``k ≠ a`` is the only part that needs all M² pairs; a backend computes
  it without storing the M×M matrix (Triton on CUDA, native C++ on CPU) as a torch custom op.

``backend="reference"`` evaluates the definition in :mod:`fastclr.reference` instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastclr.reference import ntxent_lse_reference, ntxent_reference, views_to_batch

__all__ = ["NTXentLoss", "available_backends", "ntxent", "resolve_backend"]

Reduction = Literal["mean", "sum", "none"]
BackendName = Literal["auto", "reference", "native", "triton"]
_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = ("auto", "reference", "native", "triton")
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


_warned_native_fallback = False


def _native_backend() -> LSEBackend | None:
    from fastclr import _native

    if not _native.available():
        return None
    try:
        from fastclr.ops import native_ntxent
    except ImportError:  # the native kernel's glue is not part of this build yet
        return None
    return native_ntxent.BACKEND


def _triton_backend() -> LSEBackend | None:
    try:
        from fastclr.ops import triton_ntxent
    except ImportError:
        return None
    return triton_ntxent.BACKEND


def available_backends() -> list[str]:
    """Names of the loss backends usable in this process (``reference`` always is)."""
    names = ["reference"]
    if _native_backend() is not None:
        names.append("native")
    if _triton_backend() is not None:
        names.append("triton")
    return names


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend ``backend="auto"`` picks for tensors on ``device`` of ``dtype``.

    CUDA tensors go to Triton, CPU tensors to the native C++ kernel; where that is missing the
    reference is used, with one warning that says how to get the fast path. float64 inputs stay
    on the reference: the fused kernels accumulate in float32, and asking for float64 is asking
    for its precision (pass ``backend="native"``/``"triton"`` to trade it for speed).
    """
    global _warned_native_fallback
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if dtype == torch.float64:
        return "reference"
    if device.type == "cuda" and _triton_backend() is not None:
        return "triton"
    if device.type == "cpu":
        if _native_backend() is not None:
            return "native"
        if not _warned_native_fallback:
            _warned_native_fallback = True
            warnings.warn(
                "fastclr: the native CPU NT-Xent kernel is unavailable, so the loss falls back to "
                "the (slow, O(M²)-memory) reference. Rebuild it with `pip install -e .` (or "
                "`make setup`) in the repository.",
                RuntimeWarning,
                stacklevel=3,
            )
    return "reference"


def _get_lse_backend(name: str) -> LSEBackend:
    if name == "reference":
        return _ReferenceLSE()
    found = _native_backend() if name == "native" else _triton_backend()
    if found is None:
        hint = (
            "rebuild the native library with `pip install -e .`"
            if name == "native"
            else "install triton (`pip install triton`)"
        )
        raise RuntimeError(f"backend={name!r} is not available in this process: {hint}")
    return found


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


def _check_finite(z: Tensor) -> None:
    if not bool(torch.isfinite(z).all()):
        raise ValueError(
            "embeddings contain NaN or Inf; NT-Xent of such inputs is undefined "
            "(pass check_finite=False to skip this check and its device sync)"
        )


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


def _positive_logits(zhat: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Mean positive logit per anchor and the number of positives, by an O(M·D) segment sum.

    ``Σ_{p ∈ P(a)} ẑ_p = (sum of ẑ over a's class) − ẑ_a``; no M×M matrix is formed. The anchors
    are the keys themselves (offset 0).
    """
    return _positive_logits_rect(zhat, zhat, labels, 0, temperature)


def _views_positive_logits(zhat: Tensor, n_views: int, temperature: float) -> tuple[Tensor, Tensor]:
    """The same segment sum for V stacked views: the class of row ``v·N + i`` is sample ``i``."""
    m, d = zhat.shape
    per_view = zhat.view(n_views, m // n_views, d)
    class_sum = per_view.sum(dim=0)  # (N, D)
    pos_sum = class_sum.unsqueeze(0) - per_view  # (V, N, D)
    pos_mean = (per_view * pos_sum).sum(dim=2).reshape(m) / (temperature * (n_views - 1))
    n_pos = torch.full((m,), n_views - 1, device=zhat.device, dtype=torch.long)
    return pos_mean, n_pos


def _reduce(per_anchor: Tensor, has_pos: Tensor, reduction: str) -> Tensor:
    per_anchor = torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor))
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum()
    if reduction == "sum":
        return total
    return total / has_pos.sum().clamp(min=1)


def _gather(t: Tensor) -> tuple[Tensor, int]:
    """All rows of every rank (with gradient) and this rank's row offset in them."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=t.device))
    if any(int(s.item()) != t.shape[0] for s in sizes):
        raise ValueError(
            "gather_distributed=True needs the same number of rows on every rank, got "
            f"{[int(s.item()) for s in sizes]}"
        )
    parts = dist_fn.all_gather(t)
    return torch.cat(list(parts), dim=0), rank * t.shape[0]


def ntxent(
    *views: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.5,
    reduction: Reduction = "mean",
    backend: BackendName = "auto",
    gather_distributed: bool = False,
    eps: float = 1e-8,
    check_finite: bool = True,
) -> Tensor:
    """NT-Xent (SimCLR) / SupCon loss, functional form. See :class:`NTXentLoss`."""
    temperature = _check_temperature(temperature)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    distributed = gather_distributed and _distributed_world() > 1
    z, lab = _as_batch(views, labels, check_positive=not distributed)
    if check_finite and not torch.compiler.is_compiling():
        _check_finite(z)
    name = resolve_backend(backend, z.device, z.dtype)
    if name == "reference" and not distributed:
        return ntxent_reference(z, lab, temperature, reduction, eps=eps, upcast=False)

    lse_backend = _get_lse_backend(name)
    zhat32 = F.normalize(z.float(), dim=1, eps=eps)
    # The kernels read ẑ in the input's dtype (tensor cores for bf16/fp16) and accumulate in fp32.
    zhat_k = zhat32 if z.dtype in (torch.float32, torch.float64) else zhat32.to(z.dtype)
    if distributed:
        keys32, offset = _gather(zhat32)
        key_labels = _gather_labels(lab, views, labels is None)
        keys_k = keys32 if keys32.dtype == zhat_k.dtype else keys32.to(zhat_k.dtype)
        lse = lse_backend.lse_rect(zhat_k, keys_k, offset, temperature)
        pos_mean, n_pos = _positive_logits_rect(zhat32, keys32, key_labels, offset, temperature)
    else:
        lse = lse_backend.lse_sym(zhat_k, temperature)
        if labels is None:
            pos_mean, n_pos = _views_positive_logits(zhat32, len(views), temperature)
        else:
            pos_mean, n_pos = _positive_logits(zhat32, lab, temperature)
    return _reduce(lse - pos_mean, n_pos > 0, reduction).to(z.dtype)


def _distributed_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_labels(labels: Tensor, views: tuple[Tensor, ...], from_views: bool) -> Tensor:
    """Global labels of the gathered keys; for views, sample indices are offset per rank."""
    import torch.distributed as dist

    if from_views:
        n = views[0].shape[0]
        labels = labels + dist.get_rank() * n
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels)
    return torch.cat(parts)


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


class NTXentLoss(nn.Module):
    r"""NT-Xent loss (SimCLR, Chen et al. 2020), with SupCon labels (Khosla et al. 2020, L_out).

    A drop-in for lightly's, pytorch-metric-learning's and solo-learn's NT-Xent losses that never
    builds the M×M similarity matrix on the fast backends (M = all rows of all views).

    For anchor ``a`` with positives ``P(a)`` (the other views of its sample, or rows with its
    label)::

        loss_a = logsumexp_{k ≠ a} s_ak − mean_{p ∈ P(a)} s_ap,    s_ak = ẑ_a·ẑ_k / τ

    where ``ẑ = z / max(‖z‖₂, eps)``. With two views this equals the paper's Eq. 1 and lightly's
    ``NTXentLoss`` at the same τ (google-research/simclr reports twice this value).

    Args:
        temperature: τ > 0 (paper: 0.5 for CIFAR-size batches, 0.1 for large ImageNet batches).
        reduction: ``"mean"`` over anchors with a positive, ``"sum"`` over them, or ``"none"``
            for (M,) per-anchor losses (0 where an anchor has no positive).
        backend: ``"auto"`` (Triton for CUDA tensors, native C++ for CPU tensors, the reference
            for float64 inputs or where the fast backend is missing), ``"triton"``, ``"native"``
            or ``"reference"``. The fast backends accumulate in float32 whatever the input dtype.
        gather_distributed: under ``torch.distributed``, use every rank's rows as keys (local
            anchors against all keys, gradients flow back through the gather).
        eps: smallest row norm used in the normalisation; a zero row gives a zero vector.
        check_finite: raise ``ValueError`` on NaN/Inf embeddings (costs one device sync; turn it
            off in tight loops once inputs are trusted). Inside ``torch.compile`` the check is
            skipped, since a compiled graph cannot branch on data; NaN inputs then give a NaN
            loss.

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
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.reduction: Reduction = reduction
        self.backend: BackendName = backend
        self.gather_distributed = gather_distributed
        self.eps = eps
        self.check_finite = check_finite

    def forward(self, *views: Tensor, labels: Tensor | None = None) -> Tensor:
        return ntxent(
            *views,
            labels=labels,
            temperature=self.temperature,
            reduction=self.reduction,
            backend=self.backend,
            gather_distributed=self.gather_distributed,
            eps=self.eps,
            check_finite=self.check_finite,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}, gather_distributed={self.gather_distributed}"
        )
