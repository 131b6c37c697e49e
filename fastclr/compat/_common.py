"""What the compatible entry points share: input checks whose messages name the peer's argument,
and the dtype each peer's loss returns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.loss import check_embeddings


def check_rows(name: str, t: Any) -> Tensor:
    """A 2-D floating tensor (rows, dim), or a clear error naming ``name``."""
    return check_embeddings(name, t)


def check_labels(
    name: str, labels: Any, rows: int, embeddings: Tensor, *, any_shape: bool = False
) -> Tensor:
    """Labels as integer class ids of shape (rows,) on the embeddings' device, or a clear error.

    Integer, bool and floating labels are accepted, as the peers accept them (they compare labels
    with ``==``): floating labels are mapped to class ids by equality, so ``[0.5, 0.5, 2.0]`` is
    ``[0, 0, 1]``. NaN, which equals nothing, is refused by name. ``any_shape=True`` takes any
    shape holding ``rows`` labels (SupContrast reshapes its labels to (bsz, 1) itself).
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of labels, got {type(labels).__name__}")
    if labels.dtype.is_complex:
        raise TypeError(f"{name} must be an integer or floating tensor, got {labels.dtype}")
    shape_ok = labels.numel() == rows if any_shape else labels.dim() == 1
    if not shape_ok or labels.numel() != rows:
        want = f"{rows} labels" if any_shape else f"shape ({rows},)"
        raise ValueError(f"{name} must have {want}, got shape {tuple(labels.shape)}")
    labels = labels.reshape(rows).to(embeddings.device)
    if labels.dtype.is_floating_point:
        if not torch.compiler.is_compiling() and bool(labels.isnan().any()):
            raise ValueError(f"{name} contain NaN, which matches no label (not even itself)")
        labels = torch.unique(labels, return_inverse=True)[1]
    return labels


def reject(peer: str, what: str, **given: Any) -> None:
    """Raise for peer options that the compatible entry point does not implement."""
    used = [k for k, v in given.items() if v is not None]
    if used:
        raise TypeError(
            f"{peer}: {', '.join(used)} {'is' if len(used) == 1 else 'are'} not supported by "
            f"fastclr's compatible loss ({what}); use the original library for that"
        )


# --------------------------------------------------------------------------------------------
# the dtype each peer returns
#
# Under autocast a peer's output dtype follows from the last ops of its loss and from autocast's
# op lists, which differ by device and torch version (CUDA runs exp, log and sum in float32, the
# CPU does not; both run cross_entropy in float32). Rather than copy those lists, the ops that
# decide the dtype are run once on a 2×2 tensor like the input, and the answer is cached per
# (peer, dtype, device type, autocast state). Checked against lightly 1.6, pytorch-metric-learning
# 2.9, SupContrast and solo-learn under CPU autocast (tests/test_compat_*.py).


def _autocast_state(like: Tensor) -> tuple[bool, torch.dtype]:
    kind = like.device.type
    try:
        return torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except RuntimeError:  # a device type autocast does not know: no autocast there
        return False, like.dtype


def full_precision(like: Tensor) -> contextlib.AbstractContextManager[object]:
    """Autocast off on ``like``'s device for the loss's own arithmetic (float32 accumulation, or
    float64 for float64 inputs, whatever the caller's autocast); the result is then cast to the
    peer's dtype (:func:`peer_dtype`)."""
    if not _autocast_state(like)[0]:
        return contextlib.nullcontext()
    return torch.autocast(like.device.type, enabled=False)


def _lightly_ops(x: Tensor) -> Tensor:
    # normalised rows, an einsum (a matmul), then CrossEntropyLoss
    y = F.normalize(x, dim=1)
    return F.cross_entropy(y @ y.T, torch.zeros(2, dtype=torch.long, device=x.device))


def _supcontrast_ops(x: Tensor) -> Tensor:
    # matmul, exp, then products with its float32 masks, log, mean
    mask = torch.ones(2, 2, dtype=torch.float32, device=x.device)
    return (mask * torch.log((torch.exp(x @ x.T) * mask).sum(1, keepdim=True))).mean()


def _exp_log_ops(x: Tensor) -> Tensor:
    # solo-learn and PML's NTXentLoss: normalised rows, matmul, exp, sum, log, mean
    y = F.normalize(x, dim=-1)
    return torch.log(torch.exp(y @ y.T).sum(1)).mean()


def _logsumexp_ops(x: Tensor) -> Tensor:
    # PML's SupConLoss: normalised rows, matmul, logsumexp, a product with its masks, mean
    y = F.normalize(x, dim=1)
    s = y @ y.T
    return (torch.zeros_like(s) * (s - torch.logsumexp(s, dim=1, keepdim=True))).sum(1).mean()


_PEER_OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "lightly": _lightly_ops,
    "supcontrast": _supcontrast_ops,
    "solo": _exp_log_ops,
    "pml_ntxent": _exp_log_ops,
    "pml_supcon": _logsumexp_ops,
}
_DTYPE_CACHE: dict[tuple[str, torch.dtype, str, bool, torch.dtype], torch.dtype] = {}


def peer_dtype(peer: str, like: Tensor) -> torch.dtype:
    """The dtype ``peer``'s loss returns for inputs like ``like`` under the current autocast.

    Args:
        peer: ``"lightly"``, ``"supcontrast"``, ``"solo"``, ``"pml_ntxent"`` or ``"pml_supcon"``.
        like: the loss's input (its dtype and device matter).

    Returns:
        e.g. float32 for lightly under bf16 autocast (its cross-entropy runs in float32), the
        input's dtype without autocast; float32 for SupContrast on bfloat16 features (its
        masks are float32), with or without autocast.
    """
    enabled, low = _autocast_state(like)
    key = (peer, like.dtype, like.device.type, enabled, low)
    cached = _DTYPE_CACHE.get(key)
    if cached is not None:
        return cached
    with torch.no_grad():
        probe = torch.eye(2, dtype=like.dtype, device=like.device)
        dtype = _PEER_OPS[peer](probe).dtype
    if not torch.compiler.is_compiling():
        _DTYPE_CACHE[key] = dtype
    return dtype
