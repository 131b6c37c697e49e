"""The checks every loss entry point applies to its inputs, in one place.

:func:`ntxent`, :class:`~fastclr.loss.NTXentLoss`, the op layer (:mod:`fastclr.ops`) and the
drop-ins of :mod:`fastclr.compat` all import these, so the same mistake gets the same message
wherever it is made: wrong shapes, dtypes and devices, a temperature that is not finite and
> 0, NaN/Inf embeddings, labels that give no anchor a positive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fastclr.reference import views_to_batch

__all__ = [
    "FLOAT_DTYPES",
    "POSITIVES",
    "REDUCTIONS",
    "as_batch",
    "check_choice",
    "check_embeddings",
    "check_negatives",
    "check_temperature",
    "require_finite",
]

POSITIVES = ("out", "in")
REDUCTIONS = ("mean", "sum", "none")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float; ``TypeError``/``ValueError`` unless a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive float, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return t


def check_embeddings(name: str, t: object) -> Tensor:
    """``t`` if it is a 2-D floating tensor with at least one column, else one error naming it."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {t.dtype}"
        )
    if t.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least one feature column, got shape {tuple(t.shape)}"
        )
    return t


def require_finite(z: Tensor) -> None:
    """``ValueError`` when ``z`` holds NaN or Inf (one device sync)."""
    if not bool(torch.isfinite(z).all()):
        raise ValueError(
            "embeddings contain NaN or Inf; NT-Xent of such inputs is undefined "
            "(pass check_finite=False to skip this check and its device sync)"
        )


def as_batch(
    views: tuple[Tensor, ...], labels: Tensor | None, check_positive: bool = True
) -> tuple[Tensor, Tensor]:
    """Validate the inputs and return one (M, D) batch and its (M,) integer labels.

    ``check_positive=False`` skips the "some anchor has a positive" check on labels (under
    ``gather_distributed`` the positives of a local row may live on other ranks).
    """
    if len(views) == 0:
        raise TypeError("ntxent() needs embeddings: ntxent(z_i, z_j, ...) or ntxent(z, labels=...)")
    for i, v in enumerate(views):
        check_embeddings(f"views[{i}]" if len(views) > 1 else "z", v)
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


def check_negatives(negatives: object, z: Tensor) -> Tensor:
    """Validate extra negative keys against the (M, D) batch ``z``."""
    t = check_embeddings("negatives", negatives)
    if t.shape[1] != z.shape[1]:
        raise ValueError(
            f"negatives must have the embeddings' width {z.shape[1]}, got shape {tuple(t.shape)}"
        )
    if t.device != z.device:
        raise ValueError(f"negatives are on {t.device} but the embeddings are on {z.device}")
    return t
