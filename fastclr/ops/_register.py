"""One registration of the NT-Xent log-sum-exp custom ops for every kernel backend.

A backend (``native`` CPU, ``triton``) hands :func:`register_lse_ops` its four compute functions;
this module defines, for that backend, the four ``torch.library`` custom ops

* ``fastclr::<name>_lse_sym(zhat, temperature) -> (M,) fp32``,
* ``fastclr::<name>_lse_sym_backward(grad, zhat, lse, temperature) -> like zhat``,
* ``fastclr::<name>_lse_rect(q, k, q_offset, temperature) -> (Mq,) fp32``,
* ``fastclr::<name>_lse_rect_backward(grad, q, k, lse, q_offset, temperature) -> (dq, dk)``,

with their fake (meta) kernels and autograd, so ``torch.compile(fullgraph=True)`` traces them as
single nodes. Every backward takes the upstream gradient first, then the forward's inputs and
output. Every op validates its arguments here, so the same mistake raises the same exception
type whichever backend runs: ``ValueError`` for a shape, a device, an offset or a temperature,
``TypeError`` for a dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastclr.loss.checks import FLOAT_DTYPES, check_temperature

__all__ = ["FLOAT_DTYPES", "LSEKernels", "LSEOps", "check_rows", "register_lse_ops"]


@dataclass(frozen=True)
class LSEKernels:
    """What a backend supplies: a device rule and four compute functions (inputs validated).

    ``device_error(name, t)`` returns the message for a tensor on a device the backend cannot
    use, or None. The compute functions get validated tensors; the backward ones return
    gradients in their inputs' dtypes.
    """

    name: str
    device_error: Callable[[str, Tensor], str | None]
    sym: Callable[[Tensor, float], Tensor]
    sym_backward: Callable[[Tensor, Tensor, Tensor, float], Tensor]
    rect: Callable[[Tensor, Tensor, int, float], Tensor]
    rect_backward: Callable[[Tensor, Tensor, Tensor, Tensor, int, float], tuple[Tensor, Tensor]]


def check_rows(name: str, t: Tensor, kernels: LSEKernels) -> None:
    """A 2-D floating tensor on a device ``kernels`` handles, else ValueError/TypeError."""
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    message = kernels.device_error(name, t)
    if message is not None:
        raise ValueError(message)


def _check_rect(q: Tensor, k: Tensor, q_offset: int, kernels: LSEKernels) -> None:
    check_rows("q", q, kernels)
    check_rows("k", k, kernels)
    if q.shape[1] != k.shape[1] or q.dtype != k.dtype:
        raise ValueError(
            f"q and k need the same dim and dtype, got {q.dtype} {tuple(q.shape)} and "
            f"{k.dtype} {tuple(k.shape)}"
        )
    if not 0 <= q_offset <= k.shape[0] - q.shape[0]:
        raise ValueError(
            f"q_offset must place the {q.shape[0]} queries inside the {k.shape[0]} keys, "
            f"got {q_offset}"
        )


class LSEOps:
    """A backend's registered ops; ``lse_sym`` / ``lse_rect`` are what ``fastclr.loss`` calls."""

    def __init__(self, sym: Any, sym_backward: Any, rect: Any, rect_backward: Any) -> None:
        self.sym, self.sym_backward = sym, sym_backward
        self.rect, self.rect_backward = rect, rect_backward

    def lse_sym(self, zhat: Tensor, temperature: float) -> Tensor:
        """(M,) fp32 ``logsumexp_{k≠a} ẑ_a·ẑ_k / τ`` of L2-normalised rows ``zhat``."""
        return self.sym(zhat, float(temperature))

    def lse_rect(self, q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        """(Mq,) fp32 LSE of query rows against key rows, query ``i`` being key ``q_offset+i``."""
        return self.rect(q, k, int(q_offset), float(temperature))


def register_lse_ops(kernels: LSEKernels) -> LSEOps:
    """Define the four ``fastclr::<name>_lse_*`` custom ops of ``kernels`` (module docstring)."""
    prefix = f"fastclr::{kernels.name}_lse"

    @torch.library.custom_op(f"{prefix}_sym", mutates_args=())
    def sym(zhat: Tensor, temperature: float) -> Tensor:
        check_rows("zhat", zhat, kernels)
        check_temperature(temperature)
        return kernels.sym(zhat, temperature)

    @sym.register_fake
    def _(zhat: Tensor, temperature: float) -> Tensor:
        return zhat.new_empty((zhat.shape[0],), dtype=torch.float32)

    @torch.library.custom_op(f"{prefix}_sym_backward", mutates_args=())
    def sym_backward(grad: Tensor, zhat: Tensor, lse: Tensor, temperature: float) -> Tensor:
        check_rows("zhat", zhat, kernels)
        check_temperature(temperature)
        return kernels.sym_backward(grad, zhat, lse, temperature)

    @sym_backward.register_fake
    def _(grad: Tensor, zhat: Tensor, lse: Tensor, temperature: float) -> Tensor:
        return zhat.new_empty(zhat.shape)

    def sym_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        zhat, temperature = inputs
        ctx.save_for_backward(zhat, output)
        ctx.temperature = temperature

    def sym_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        zhat, lse = ctx.saved_tensors
        return sym_backward(grad, zhat, lse, ctx.temperature), None

    sym.register_autograd(sym_grad, setup_context=sym_setup)

    @torch.library.custom_op(f"{prefix}_rect", mutates_args=())
    def rect(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        _check_rect(q, k, q_offset, kernels)
        check_temperature(temperature)
        return kernels.rect(q, k, q_offset, temperature)

    @rect.register_fake
    def _(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        return q.new_empty((q.shape[0],), dtype=torch.float32)

    @torch.library.custom_op(f"{prefix}_rect_backward", mutates_args=())
    def rect_backward(
        grad: Tensor, q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float
    ) -> tuple[Tensor, Tensor]:
        _check_rect(q, k, q_offset, kernels)
        check_temperature(temperature)
        return kernels.rect_backward(grad, q, k, lse, q_offset, temperature)

    @rect_backward.register_fake
    def _(
        grad: Tensor, q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float
    ) -> tuple[Tensor, Tensor]:
        return q.new_empty(q.shape), k.new_empty(k.shape)

    def rect_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        q, k, q_offset, temperature = inputs
        ctx.save_for_backward(q, k, output)
        ctx.q_offset, ctx.temperature = q_offset, temperature

    def rect_grad(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None, None
        q, k, lse = ctx.saved_tensors
        dq, dk = rect_backward(grad, q, k, lse, ctx.q_offset, ctx.temperature)
        return dq, dk, None, None

    rect.register_autograd(rect_grad, setup_context=rect_setup)
    return LSEOps(sym, sym_backward, rect, rect_backward)
