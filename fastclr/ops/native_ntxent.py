"""Native CPU NT-Xent log-sum-exp as torch custom ops (kernel: ../../kernels/cpu/ntxent.h).

Layer two of the op: this module checks devices, converts inputs to contiguous fp32, calls the C++
kernels on raw storage and registers autograd and fake (meta) implementations, so
``torch.compile(fullgraph=True)`` traces a loss that uses them without graph breaks.

Ops (all return / take fp32 LSE, natural log):

* ``fastclr::native_lse_sym(zhat, temperature) -> (M,)``: ``logsumexp_{k≠a} ẑ_a·ẑ_k / τ``;
* ``fastclr::native_lse_rect(q, k, q_offset, temperature) -> (Mq,)``: query ``i`` is key
  ``q_offset + i`` (excluded);
* ``fastclr::native_lse_sym_backward`` / ``fastclr::native_lse_rect_backward``: their gradients
  (recomputing the tiles; nothing M×M is stored).

Inputs may be fp32/fp64/bf16/fp16 and non-contiguous; the kernels compute in fp32 and gradients
are returned in the inputs' dtype. Rows must already be L2-normalised (the loss does that). Each
call uses ``torch.get_num_threads()`` OpenMP threads; results are bitwise reproducible for a given
thread count. Double backward is not supported.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from fastclr import _native

__all__ = [
    "BACKEND",
    "NativeLSE",
    "native_lse_rect",
    "native_lse_rect_backward",
    "native_lse_sym",
    "native_lse_sym_backward",
    "uses_constant_shift",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _lib() -> ModuleType:
    mod = _native.load()
    if mod is None:
        raise RuntimeError(
            f"fastclr native CPU library unavailable ({_native.load_error()}); rebuild it with "
            "`pip install --no-build-isolation -e .` or use backend='reference'"
        )
    return mod


def _check(name: str, t: Tensor) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f"fastclr native NT-Xent runs on CPU tensors only, but {name} is on {t.device}; "
            "use backend='triton' for CUDA tensors (or move them with .cpu())"
        )
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def _check_rows(name: str, t: Tensor) -> None:
    _check(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")


def _f32(t: Tensor) -> Tensor:
    """Contiguous fp32 copy-or-view the kernels can read through ``data_ptr()``."""
    return t.detach().to(torch.float32).contiguous()


def _inv_tau(temperature: float) -> float:
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return 1.0 / temperature


def _threads() -> int:
    return max(1, torch.get_num_threads())


def uses_constant_shift(temperature: float) -> bool:
    """Whether ``native_lse_sym`` takes the constant-shift path (2/τ ≤ 80) at this τ."""
    return bool(_lib().ntxent_uses_constant_shift(_inv_tau(temperature)))


# ------------------------------------------------------------------------------------------------
# symmetric op


@torch.library.custom_op("fastclr::native_lse_sym", mutates_args=())
def native_lse_sym(zhat: Tensor, temperature: float) -> Tensor:
    """(M,) fp32 ``logsumexp_{k≠a} ẑ_a·ẑ_k / τ`` of unit rows ``zhat`` (M, D)."""
    _check_rows("zhat", zhat)
    z = _f32(zhat)
    m, d = z.shape
    out = torch.empty(m, dtype=torch.float32)
    _lib().ntxent_lse_sym_fwd_f32(
        z.data_ptr(), m, d, _inv_tau(temperature), out.data_ptr(), _threads()
    )
    return out


@native_lse_sym.register_fake
def _native_lse_sym_fake(zhat: Tensor, temperature: float) -> Tensor:
    return zhat.new_empty((zhat.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastclr::native_lse_sym_backward", mutates_args=())
def native_lse_sym_backward(grad: Tensor, zhat: Tensor, lse: Tensor, temperature: float) -> Tensor:
    """dL/dẑ = (W + Wᵀ) ẑ / τ with ``W_ak = grad_a · softmax_ak``, in ``zhat``'s dtype."""
    _check_rows("zhat", zhat)
    _check("grad", grad)
    z, g, lse32 = _f32(zhat), _f32(grad), _f32(lse)
    m, d = z.shape
    dz = torch.empty(m, d, dtype=torch.float32)
    _lib().ntxent_lse_sym_bwd_f32(
        z.data_ptr(),
        m,
        d,
        _inv_tau(temperature),
        lse32.data_ptr(),
        g.data_ptr(),
        dz.data_ptr(),
        _threads(),
    )
    return dz.to(zhat.dtype)


@native_lse_sym_backward.register_fake
def _native_lse_sym_backward_fake(
    grad: Tensor, zhat: Tensor, lse: Tensor, temperature: float
) -> Tensor:
    return zhat.new_empty(zhat.shape)


def _sym_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    zhat, temperature = inputs
    ctx.save_for_backward(zhat, output)
    ctx.temperature = temperature


def _sym_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
    zhat, lse = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    return native_lse_sym_backward(grad, zhat, lse, ctx.temperature), None


native_lse_sym.register_autograd(_sym_backward, setup_context=_sym_setup)


# ------------------------------------------------------------------------------------------------
# rectangular op (queries against gathered keys)


def _check_rect(q: Tensor, k: Tensor, q_offset: int) -> None:
    _check_rows("q", q)
    _check_rows("k", k)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k need the same dim, got {tuple(q.shape)} and {tuple(k.shape)}")
    if not 0 <= q_offset <= k.shape[0] - q.shape[0]:
        raise ValueError(
            f"q_offset must place the {q.shape[0]} queries inside the {k.shape[0]} keys, "
            f"got {q_offset}"
        )


@torch.library.custom_op("fastclr::native_lse_rect", mutates_args=())
def native_lse_rect(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    """(Mq,) fp32 ``logsumexp_{j ≠ q_offset+i} q_i·k_j / τ`` (online running max)."""
    _check_rect(q, k, q_offset)
    q32, k32 = _f32(q), _f32(k)
    out = torch.empty(q32.shape[0], dtype=torch.float32)
    _lib().ntxent_lse_rect_fwd_f32(
        q32.data_ptr(),
        q32.shape[0],
        k32.data_ptr(),
        k32.shape[0],
        q32.shape[1],
        q_offset,
        _inv_tau(temperature),
        out.data_ptr(),
        _threads(),
    )
    return out


@native_lse_rect.register_fake
def _native_lse_rect_fake(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    return q.new_empty((q.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastclr::native_lse_rect_backward", mutates_args=())
def native_lse_rect_backward(
    grad: Tensor, q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """(dq, dk) = (W k / τ, Wᵀ q / τ), ``W_ij = grad_i · softmax_ij``, in q's / k's dtypes."""
    _check_rect(q, k, q_offset)
    _check("grad", grad)
    q32, k32, g, lse32 = _f32(q), _f32(k), _f32(grad), _f32(lse)
    dq = torch.empty(q32.shape, dtype=torch.float32)
    dk = torch.empty(k32.shape, dtype=torch.float32)
    _lib().ntxent_lse_rect_bwd_f32(
        q32.data_ptr(),
        q32.shape[0],
        k32.data_ptr(),
        k32.shape[0],
        q32.shape[1],
        q_offset,
        _inv_tau(temperature),
        lse32.data_ptr(),
        g.data_ptr(),
        dq.data_ptr(),
        dk.data_ptr(),
        _threads(),
    )
    return dq.to(q.dtype), dk.to(k.dtype)


@native_lse_rect_backward.register_fake
def _native_lse_rect_backward_fake(
    grad: Tensor, q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rect_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    q, k, q_offset, temperature = inputs
    ctx.save_for_backward(q, k, output)
    ctx.q_offset = q_offset
    ctx.temperature = temperature


def _rect_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
    q, k, lse = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None
    dq, dk = native_lse_rect_backward(grad, q, k, lse, ctx.q_offset, ctx.temperature)
    return dq, dk, None, None


native_lse_rect.register_autograd(_rect_backward, setup_context=_rect_setup)


# ------------------------------------------------------------------------------------------------
# the backend object fastclr.loss uses


class NativeLSE:
    """The LSE backend of ``NTXentLoss(backend="native")`` (see ``fastclr.loss.LSEBackend``)."""

    def lse_sym(self, zhat: Tensor, temperature: float) -> Tensor:
        return native_lse_sym(zhat, float(temperature))

    def lse_rect(self, q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        return native_lse_rect(q, k, int(q_offset), float(temperature))


BACKEND = NativeLSE()
