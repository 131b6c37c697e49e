"""Optional dependencies, imported lazily in one place (a leaf module: no fastclr imports but
:mod:`fastclr.errors`), so that augmentation and data code ask the same question the same way.

NVIDIA DALI (the ``dali`` extra) is the only optional import fastclr's own code needs: kornia is
a dependency, and Triton's absence is handled by the backend registry (:mod:`fastclr.backends`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from fastclr.errors import MissingDependencyError

__all__ = ["DALI_INSTALL", "dali_available", "import_dali"]

DALI_INSTALL = "`pip install fastclr[dali]` (the nvidia-dali-cuda120 wheel)"


def dali_available() -> bool:
    """Whether ``nvidia.dali`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def import_dali() -> tuple[Any, Any, Any, Any, Any]:
    """(fn, types, math, pipeline_def, pytorch plugin) of NVIDIA DALI, or a
    :class:`~fastclr.errors.MissingDependencyError` naming the extra to install."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.plugin.pytorch as dali_torch
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            f"fastclr's DALI paths need NVIDIA DALI: {DALI_INSTALL}. Import failed with: {e}"
        ) from e
    return fn, types, dmath, pipeline_def, dali_torch
