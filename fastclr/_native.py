"""Loader for the native CPU library (``fastclr._cpu``, C++ built by CMakeLists.txt).

fastclr imports without it: :func:`available` is then False, one warning says how to rebuild, and
the loss falls back to the reference. Set ``FASTCLR_DISABLE_NATIVE=1`` to behave as if it were
missing (the fallback test does).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import torch
from torch import Tensor

__all__ = ["available", "load", "load_error", "normalize_rows"]

_module: ModuleType | None = None
_error: str | None = None
_loaded = False


def load() -> ModuleType | None:
    """The native extension module, or None (with one warning) when it cannot be imported."""
    global _module, _error, _loaded
    if _loaded:
        return _module
    _loaded = True
    if os.environ.get("FASTCLR_DISABLE_NATIVE", "") not in ("", "0"):
        _error = "disabled by FASTCLR_DISABLE_NATIVE"
        return None
    try:
        from fastclr import _cpu  # type: ignore[attr-defined]
    except ImportError as exc:
        _error = str(exc)
        warnings.warn(
            f"fastclr: the native CPU library could not be loaded ({exc}); CPU losses fall back "
            "to the slow reference. Rebuild it with `pip install -e .` (needs cmake and a C++17 "
            "compiler) or `make setup`.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    _module = _cpu
    return _module


def available() -> bool:
    """True when the native CPU library is built and loadable."""
    return load() is not None


def load_error() -> str | None:
    """Why the native library is unavailable (None when it is loaded)."""
    load()
    return _error


def _require() -> ModuleType:
    mod = load()
    if mod is None:
        raise RuntimeError(f"fastclr native CPU library unavailable: {_error}")
    return mod


def normalize_rows(z: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Row-wise L2 normalisation of a CPU fp32 (M, D) tensor by the native kernel.

    Returns ``(z / max(‖z‖, eps), max(‖z‖, eps))``. A small, real use of the library that tests
    the build end to end; the loss kernels share its calling convention.
    """
    if z.device.type != "cpu":
        raise ValueError(f"z must be a CPU tensor, got device {z.device}")
    if z.dtype != torch.float32:
        raise TypeError(f"z must be float32, got {z.dtype}")
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D, got shape {tuple(z.shape)}")
    mod = _require()
    src = z.contiguous()
    out = torch.empty_like(src)
    norms = torch.empty(src.shape[0], dtype=torch.float32)
    mod.normalize_rows_f32(
        src.data_ptr(), out.data_ptr(), norms.data_ptr(), src.shape[0], src.shape[1], float(eps)
    )
    return out, norms
