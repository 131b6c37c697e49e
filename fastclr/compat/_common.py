"""Input checks shared by the compatible entry points (messages name the peer's argument)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fastclr.loss import _check_embeddings


def check_rows(name: str, t: Any) -> Tensor:
    """A 2-D floating tensor (rows, dim), or a clear error naming ``name``."""
    return _check_embeddings(name, t)


def check_labels(name: str, labels: Any, rows: int, embeddings: Tensor) -> Tensor:
    """Integer labels of shape (rows,) on the embeddings' device, or a clear error."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(labels)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows},), got {tuple(labels.shape)}")
    return labels.to(embeddings.device)


def reject(peer: str, what: str, **given: Any) -> None:
    """Raise for peer options that the compatible entry point does not implement."""
    used = [k for k, v in given.items() if v is not None]
    if used:
        raise TypeError(
            f"{peer}: {', '.join(used)} {'is' if len(used) == 1 else 'are'} not supported by "
            f"fastclr's compatible loss ({what}); use the original library for that"
        )
