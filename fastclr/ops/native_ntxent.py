"""Native CPU NT-Xent log-sum-exp as torch custom ops (kernel: ../../kernels/cpu/ntxent.h).

Layer two of the op: this module converts inputs to contiguous fp32 and calls the C++ kernels on
raw storage; ``fastclr.ops._register`` defines the custom ops around them (validation, fake
kernels, autograd; the same for the Triton backend), so ``torch.compile(fullgraph=True)`` traces
a loss that uses them without graph breaks.

Ops (all return / take fp32 LSE, natural log):

* ``fastclr::native_lse_sym(zhat, temperature) -> (M,)``: ``logsumexp_{k≠a} ẑ_a·ẑ_k / τ``;
* ``fastclr::native_lse_rect(q, k, q_offset, temperature) -> (Mq,)``: query ``i`` is key
  ``q_offset + i`` (excluded);
* ``fastclr::native_lse_sym_backward(grad, zhat, lse, temperature)`` /
  ``fastclr::native_lse_rect_backward(grad, q, k, lse, q_offset, temperature)``: their gradients
  (recomputing the tiles; nothing M×M is stored).

Inputs may be fp32/fp64/bf16/fp16 and non-contiguous; the kernels compute in fp32 and gradients
are returned in the inputs' dtype. Rows must already be L2-normalised (the loss does that). Each
call uses ``torch.get_num_threads()`` OpenMP threads; results are bitwise reproducible for a given
thread count. Double backward is not supported.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from fastclr import _native
from fastclr.ops._register import LSEKernels, check_rows, register_lse_ops

__all__ = [
    "BACKEND",
    "KERNELS",
    "native_lse_rect",
    "native_lse_rect_backward",
    "native_lse_sym",
    "native_lse_sym_backward",
    "uses_constant_shift",
]


def _lib() -> ModuleType:
    return _native.require()  # RuntimeError with the reason and how to rebuild


def _device_error(name: str, t: Tensor) -> str | None:
    if t.device.type == "cpu":
        return None
    return (
        f"fastclr native NT-Xent runs on CPU tensors only, but {name} is on {t.device}; "
        "use backend='triton' for CUDA tensors (or move them with .cpu())"
    )


def _f32(t: Tensor) -> Tensor:
    """Contiguous fp32 copy-or-view the kernels can read through ``data_ptr()``."""
    return t.detach().to(torch.float32).contiguous()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def uses_constant_shift(temperature: float) -> bool:
    """Whether ``native_lse_sym`` takes the constant-shift path (2/τ ≤ 80) at this τ."""
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return bool(_lib().ntxent_uses_constant_shift(1.0 / temperature))


def _sym(zhat: Tensor, temperature: float) -> Tensor:
    z = _f32(zhat)
    m, d = z.shape
    out = torch.empty(m, dtype=torch.float32)
    _lib().ntxent_lse_sym_fwd_f32(z.data_ptr(), m, d, 1.0 / temperature, out.data_ptr(), _threads())
    return out


def _sym_backward(grad: Tensor, zhat: Tensor, lse: Tensor, temperature: float) -> Tensor:
    z, g, lse32 = _f32(zhat), _f32(grad), _f32(lse)
    m, d = z.shape
    dz = torch.empty(m, d, dtype=torch.float32)
    _lib().ntxent_lse_sym_bwd_f32(
        z.data_ptr(),
        m,
        d,
        1.0 / temperature,
        lse32.data_ptr(),
        g.data_ptr(),
        dz.data_ptr(),
        _threads(),
    )
    return dz.to(zhat.dtype)


def _rect_problem(
    q32: Tensor, k32: Tensor, q_offset: int, temperature: float
) -> tuple[int, int, int, int, int, int, float]:
    """The leading arguments both rectangle kernels take (ntxent.h): q, Mq, k, Mk, D, q_offset,
    inv_tau."""
    mq, d = q32.shape
    return (q32.data_ptr(), mq, k32.data_ptr(), k32.shape[0], d, q_offset, 1.0 / temperature)


def _rect(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    q32, k32 = _f32(q), _f32(k)
    out = torch.empty(q32.shape[0], dtype=torch.float32)
    _lib().ntxent_lse_rect_fwd_f32(
        *_rect_problem(q32, k32, q_offset, temperature), out.data_ptr(), _threads()
    )
    return out


def _rect_backward(
    grad: Tensor, q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    q32, k32, g, lse32 = _f32(q), _f32(k), _f32(grad), _f32(lse)
    dq = torch.empty(q32.shape, dtype=torch.float32)
    dk = torch.empty(k32.shape, dtype=torch.float32)
    _lib().ntxent_lse_rect_bwd_f32(
        *_rect_problem(q32, k32, q_offset, temperature),
        lse32.data_ptr(),
        g.data_ptr(),
        dq.data_ptr(),
        dk.data_ptr(),
        _threads(),
    )
    return dq.to(q.dtype), dk.to(k.dtype)


KERNELS = LSEKernels("native", _device_error, _sym, _sym_backward, _rect, _rect_backward)
BACKEND = register_lse_ops(KERNELS)
"""The LSE backend of ``NTXentLoss(backend="native")`` (see ``fastclr.loss.LSEBackend``)."""

native_lse_sym = BACKEND.sym
native_lse_sym_backward = BACKEND.sym_backward
native_lse_rect = BACKEND.rect
native_lse_rect_backward = BACKEND.rect_backward


def _check_rows(name: str, t: Tensor) -> None:
    check_rows(name, t, KERNELS)
