"""Loader for the native CPU library (``fastclr._cpu``, C++ built by CMakeLists.txt).

fastclr imports without it: :func:`available` is then False, and the loss and the augmentation
fall back to slower backends with one warning (raised by :mod:`fastclr.backends` when an op first
falls back, not here). Set ``FASTCLR_DISABLE_NATIVE=1`` to behave as if it were missing (the
fallback tests do).
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["NATIVE_HINT", "NATIVE_LIBRARY", "available", "check", "load", "load_error", "require"]

#: The requirement, in words, for messages (the backend registry's ``requires``).
NATIVE_LIBRARY = "the native CPU library (fastclr._cpu)"
#: How to get it.
NATIVE_HINT = (
    "Rebuild it with `pip install -e .` (needs cmake and a C++17 compiler) or `make setup` in the "
    "repository."
)

_module: ModuleType | None = None
_error: str | None = None
_loaded = False


def load() -> ModuleType | None:
    """The native extension module, or None when it cannot be imported (see :func:`load_error`)."""
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
        _error = str(exc) or type(exc).__name__
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


def check() -> None:
    """RuntimeError carrying only the reason the library is missing (for backend loaders)."""
    if load() is None:
        raise RuntimeError(str(_error))


def require() -> ModuleType:
    """The native module; RuntimeError with the reason and :data:`NATIVE_HINT` when missing."""
    mod = load()
    if mod is None:
        raise RuntimeError(f"{NATIVE_LIBRARY} is unavailable ({_error}). {NATIVE_HINT}")
    return mod
