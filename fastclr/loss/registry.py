"""The loss's backends: what a fast backend provides, and the registry that picks one.

A backend computes one op, the per-row log-sum-exp over every other row (``lse_sym``) or over a
set of keys (``lse_rect``), without the M×M matrix; the rest of the loss is plain torch
(:mod:`fastclr.loss.fused`). ``"auto"`` prefers Triton on CUDA, then the native C++ kernel on the
CPU, then the reference, which is always available; the rule and its fallback warning are
:mod:`fastclr.backends`'s, shared with the augmentation.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

from fastclr.backends import Impl, Registry, native_impl, triton_impl
from fastclr.reference import ntxent_lse_reference

__all__ = [
    "BACKENDS",
    "BackendName",
    "LSEBackend",
    "available_backends",
    "lse_backend",
    "resolve_backend",
]

BackendName = Literal["auto", "reference", "native", "triton"]


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
    """The definition, as an LSE backend: it computes in its inputs' precision (float64 stays
    float64; the registry declares it ``exact``)."""

    def lse_sym(self, zhat: Tensor, temperature: float) -> Tensor:
        return ntxent_lse_reference(zhat, zhat, temperature)

    def lse_rect(self, q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        return ntxent_lse_reference(q, k, temperature, q_offset=q_offset)


def _load_native() -> LSEBackend:
    from fastclr.ops import native_ntxent

    return native_ntxent.BACKEND


def _load_triton() -> LSEBackend:
    from fastclr.ops import triton_ntxent

    return triton_ntxent.BACKEND


# The fused kernels accumulate in float32: "auto" keeps float64 inputs on the reference (asking
# for float64 is asking for its precision; pass backend="native"/"triton" to trade it for speed).
_FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: The loss backends; "auto" prefers Triton on CUDA, then the native kernel on CPU, then the
#: reference, which is always available.
BACKENDS: Registry[LSEBackend] = Registry(
    "the NT-Xent loss",
    [
        Impl("reference", _ReferenceLSE, exact=True),
        native_impl(_load_native, dtypes=_FAST_DTYPES),
        triton_impl(_load_triton, dtypes=_FAST_DTYPES, fused_views=True),
    ],
)


def available_backends() -> list[str]:
    """Names of the loss backends usable in this process (``reference`` always is)."""
    return BACKENDS.available()


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend ``backend="auto"`` picks for tensors on ``device`` of ``dtype``.

    CUDA tensors go to Triton, CPU tensors to the native C++ kernel; where that is missing the
    reference is used, with one warning that says how to get the fast path
    (:mod:`fastclr.backends` holds the rule). float64 inputs stay on the reference: the fused
    kernels accumulate in float32, and asking for float64 is asking for its precision (pass
    ``backend="native"``/``"triton"`` to trade it for speed).
    """
    return BACKENDS.resolve(backend, device, dtype)


def lse_backend(name: str) -> LSEBackend:
    """The loaded implementation of the resolved backend ``name``."""
    return BACKENDS.get(name)
