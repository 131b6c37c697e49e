"""Numeric precision of a run: resolving ``auto``, the autocast context and the grad scaler.

``auto`` is bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing) and fp32 on CPU;
``fp32``, ``bf16`` and ``fp16`` force one.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

__all__ = ["AMP_DTYPES", "PRECISIONS", "Precision", "autocast", "make_scaler", "resolve_precision"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the resolved ``precision`` (no context at all for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (a pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
