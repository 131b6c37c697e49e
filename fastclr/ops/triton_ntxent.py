"""Launchers and torch custom ops for the fused Triton NT-Xent log-sum-exp (the ``triton`` backend).

Ops (registered with ``torch.library.custom_op``, so ``torch.compile`` sees them as single nodes):

* ``fastclr::triton_lse_sym(zhat, temperature) -> (M,) fp32``: ``logsumexp_{k≠a} ẑ_a·ẑ_k / τ``;
* ``fastclr::triton_lse_rect(q, k, q_offset, temperature) -> (Mq,) fp32``: queries against keys,
  query ``i`` being key ``q_offset + i`` (used with ``gather_distributed=True``);

each with a backward op and autograd registration. Rows must already be L2-normalised; dtypes
fp32, bf16, fp16 (fp64 is computed in fp32). The kernels live in ``fastclr.kernels.triton.ntxent``.

Extra memory is O(M·D + M): nothing M×M is ever allocated. The launchers allocate only the
buffers listed by :func:`workspace_bytes` (fp32 row sums and fp32 gradient accumulators) and record
what they allocated in :data:`LAST_WORKSPACE` so tests can check it.

Paths. The symmetric kernels (one exp per unordered pair, fp32 atomics for the transposed
contributions) run when τ ≥ 1/32 (2/τ ≤ ``CONST_SHIFT_LIMIT``, a rule on τ alone) and
``torch.are_deterministic_algorithms_enabled()`` is False. Otherwise the row-block kernels run:
no atomics (bitwise reproducible), and with an online running max when τ < 1/32 so that exp
never underflows fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from fastclr.kernels.triton import ntxent as _k

__all__ = [
    "BACKEND",
    "LAST_WORKSPACE",
    "TritonLSE",
    "select_path",
    "triton_lse_rect",
    "triton_lse_sym",
    "workspace_bytes",
]

# Op name -> bytes of workspace (every buffer other than the op's own output) of its last call.
LAST_WORKSPACE: dict[str, int] = {}

_F32 = 4  # bytes per fp32 element


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Path:
    """Which kernels a call uses: ``symmetric`` (atomics) or rows; ``online`` running max."""

    symmetric: bool
    online: bool


def select_path(temperature: float, deterministic: bool | None = None) -> Path:
    """The data-independent path rule (see the module docstring)."""
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    online = 2.0 / temperature > _k.CONST_SHIFT_LIMIT
    return Path(symmetric=not online and not deterministic, online=online)


def workspace_bytes(m: int, d: int, op: str, path: Path) -> int:
    """Bytes the launcher of ``op`` allocates besides its output, for an (m, d) input.

    ``op`` is one of "lse_sym", "lse_sym_backward", "lse_rect", "lse_rect_backward" (for rect,
    ``m`` is Mq + Mk rows in total). Always ≤ 2·m·d·4 + 2·m·4 bytes: O(M·D + M).
    """
    if op == "lse_sym":
        return 2 * m * _F32 if path.symmetric else 0  # row sums + transposed (atomic) sums
    if op == "lse_sym_backward":
        # fp32 gradient accumulators (two for the symmetric split) + fp32 upstream gradient copy
        return (2 if path.symmetric else 1) * m * d * _F32 + m * _F32
    if op == "lse_rect":
        return 0
    if op == "lse_rect_backward":
        return m * d * _F32 + m * _F32  # dq and dk accumulators (Mq + Mk rows) + gradient copy
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------------------------
# launch helpers


def _check_input(name: str, t: Tensor) -> Tensor:
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if t.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"the Triton NT-Xent kernel needs CUDA tensors ({name} is on {t.device}); on CPU use "
            "backend='native' or 'reference', or set TRITON_INTERPRET=1 before importing triton"
        )
    if t.dtype == torch.float64:
        t = t.float()
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    return t


@dataclass(frozen=True)
class _Meta:
    """Compile-time parameters shared by every kernel of one call."""

    block_d: int
    single_chunk: bool
    upcast: bool
    dot_prec: str
    m_key: int
    d_key: int

    def kwargs(self) -> dict[str, object]:
        return {
            "M_KEY": self.m_key,
            "D_KEY": self.d_key,
            "BLOCK_D": self.block_d,
            "SINGLE_CHUNK": self.single_chunk,
            "UPCAST": self.upcast,
            "DOT_PREC": self.dot_prec,
        }


def _meta(m: int, d: int, dtype: torch.dtype) -> _Meta:
    single = d <= _k.MAX_SINGLE_CHUNK_D
    block_d = max(_k.MIN_DOT, triton.next_power_of_2(d)) if single else _k.MULTI_CHUNK_D
    return _Meta(
        block_d=block_d,
        single_chunk=single,
        # The interpreter's bf16 tl.dot is wrong (DESIGN.md, build notes): upcast tiles there.
        upcast=_interpreting() and dtype == torch.bfloat16,
        dot_prec="ieee",  # fp32 operands stay fp32 (no TF32); ignored for bf16/fp16 operands
        m_key=max(_k.MIN_DOT, triton.next_power_of_2(m)),
        d_key=max(_k.MIN_DOT, triton.next_power_of_2(d)),
    )


def _grid_rows(m: int):  # type: ignore[no-untyped-def]
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)


def _lse_sym_forward(zhat: Tensor, temperature: float) -> Tensor:
    z = _check_input("zhat", zhat)
    m, d = z.shape
    path = select_path(temperature)
    meta = _meta(m, d, z.dtype)
    inv_tau = 1.0 / temperature
    lse = torch.empty(m, device=z.device, dtype=torch.float32)
    if path.symmetric:
        sum_row = torch.empty(m, device=z.device, dtype=torch.float32)
        sum_col = torch.zeros(m, device=z.device, dtype=torch.float32)
        LAST_WORKSPACE["lse_sym"] = sum_row.nbytes + sum_col.nbytes
        _k.ntxent_sym_fwd_kernel[_grid_rows(m)](
            z, sum_row, sum_col, m, d, z.stride(0), z.stride(1), inv_tau, inv_tau, **meta.kwargs()
        )
        torch.add(sum_row, sum_col, out=lse)
        lse.log_().add_(inv_tau)
        return lse
    LAST_WORKSPACE["lse_sym"] = 0
    _rows_forward(z, z, lse, 0, temperature, path.online, meta)
    return lse


def _rows_forward(
    q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float, online: bool, meta: _Meta
) -> None:
    mq, d = q.shape
    inv_tau = 1.0 / temperature
    _k.ntxent_rows_fwd_kernel[_grid_rows(mq)](
        q, k, lse, mq, k.shape[0], d, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_offset, inv_tau, inv_tau, ONLINE=online, **meta.kwargs(),
    )  # fmt: skip


def _rows_backward(
    x: Tensor,
    y: Tensor,
    lx: Tensor,
    gx: Tensor,
    ly: Tensor,
    gy: Tensor,
    dx: Tensor,
    offsets: tuple[int, int],
    terms: tuple[bool, bool],
    temperature: float,
    online: bool,
    meta: _Meta,
) -> None:
    mx, d = x.shape
    inv_tau = 1.0 / temperature
    _k.ntxent_rows_bwd_kernel[_grid_rows(mx)](
        x, y, lx, gx, ly, gy, dx, mx, y.shape[0], d, x.stride(0), x.stride(1), y.stride(0),
        y.stride(1), offsets[0], offsets[1], inv_tau, inv_tau, ONLINE=online,
        ROW_TERM=terms[0], COL_TERM=terms[1], **meta.kwargs(),
    )  # fmt: skip


def _lse_sym_backward(zhat: Tensor, lse: Tensor, grad: Tensor, temperature: float) -> Tensor:
    z = _check_input("zhat", zhat)
    m, d = z.shape
    path = select_path(temperature)
    meta = _meta(m, d, z.dtype)
    inv_tau = 1.0 / temperature
    g = grad.to(torch.float32).contiguous().clone()  # an owned, dense fp32 copy (may be expanded)
    lse = lse.contiguous()
    if path.symmetric:
        dz_row = torch.zeros(m, d, device=z.device, dtype=torch.float32)
        dz_col = torch.zeros(m, d, device=z.device, dtype=torch.float32)
        LAST_WORKSPACE["lse_sym_backward"] = dz_row.nbytes + dz_col.nbytes + g.nbytes
        _k.ntxent_sym_bwd_kernel[_grid_rows(m)](
            z, lse, g, dz_row, dz_col, m, d, z.stride(0), z.stride(1), inv_tau, inv_tau,
            **meta.kwargs(),
        )  # fmt: skip
        dz_row += dz_col
        return dz_row.to(zhat.dtype)
    dz = torch.zeros(m, d, device=z.device, dtype=torch.float32)
    LAST_WORKSPACE["lse_sym_backward"] = dz.nbytes + g.nbytes
    _rows_backward(z, z, lse, g, lse, g, dz, (0, 0), (True, True), temperature, path.online, meta)
    return dz.to(zhat.dtype)


def _lse_rect_forward(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    qq, kk = _check_input("q", q), _check_input("k", k)
    if qq.dtype != kk.dtype or qq.shape[1] != kk.shape[1]:
        raise ValueError(
            f"q and k must share dtype and width, got {qq.dtype} {tuple(qq.shape)} and "
            f"{kk.dtype} {tuple(kk.shape)}"
        )
    if not 0 <= q_offset <= kk.shape[0] - qq.shape[0]:
        raise ValueError(f"q_offset={q_offset} puts the queries outside the {kk.shape[0]} keys")
    mq, d = qq.shape
    path = select_path(temperature, deterministic=True)
    meta = _meta(max(mq, kk.shape[0]), d, qq.dtype)
    lse = torch.empty(mq, device=qq.device, dtype=torch.float32)
    LAST_WORKSPACE["lse_rect"] = 0
    _rows_forward(qq, kk, lse, q_offset, temperature, path.online, meta)
    return lse


def _lse_rect_backward(
    q: Tensor, k: Tensor, lse: Tensor, grad: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    qq, kk = _check_input("q", q), _check_input("k", k)
    mq, d = qq.shape
    mk = kk.shape[0]
    path = select_path(temperature, deterministic=True)
    meta = _meta(max(mq, mk), d, qq.dtype)
    g = grad.to(torch.float32).contiguous().clone()
    lse = lse.contiguous()
    dq = torch.zeros(mq, d, device=qq.device, dtype=torch.float32)
    dk = torch.zeros(mk, d, device=qq.device, dtype=torch.float32)
    LAST_WORKSPACE["lse_rect_backward"] = dq.nbytes + dk.nbytes + g.nbytes
    # dq = W k / τ (row term of the queries); dk = Wᵀ q / τ (column term, keys as the X side).
    _rows_backward(
        qq, kk, lse, g, lse, g, dq, (q_offset, 0), (True, False), temperature, path.online, meta
    )
    _rows_backward(
        kk, qq, lse, g, lse, g, dk, (0, q_offset), (False, True), temperature, path.online, meta
    )
    return dq.to(q.dtype), dk.to(k.dtype)


# --------------------------------------------------------------------------------------------
# custom ops


@torch.library.custom_op("fastclr::triton_lse_sym", mutates_args=())
def triton_lse_sym(zhat: Tensor, temperature: float) -> Tensor:
    """(M,) fp32 natural-log LSE over k ≠ a of ẑ_a·ẑ_k/τ; ``zhat`` rows already normalised."""
    return _lse_sym_forward(zhat, temperature)


@triton_lse_sym.register_fake
def _(zhat: Tensor, temperature: float) -> Tensor:
    return zhat.new_empty((zhat.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastclr::triton_lse_sym_backward", mutates_args=())
def triton_lse_sym_backward(zhat: Tensor, lse: Tensor, grad: Tensor, temperature: float) -> Tensor:
    """Gradient of ``triton_lse_sym`` w.r.t. ``zhat``: (W + Wᵀ) ẑ / τ, W_ak = g_a softmax_ak."""
    return _lse_sym_backward(zhat, lse, grad, temperature)


@triton_lse_sym_backward.register_fake
def _(zhat: Tensor, lse: Tensor, grad: Tensor, temperature: float) -> Tensor:
    return torch.empty_like(zhat)


def _sym_setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    zhat, temperature = inputs
    ctx.save_for_backward(zhat, output)
    ctx.temperature = temperature  # type: ignore[attr-defined]


def _sym_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    zhat, lse = ctx.saved_tensors  # type: ignore[attr-defined]
    return triton_lse_sym_backward(zhat, lse, grad, ctx.temperature), None  # type: ignore[attr-defined]


triton_lse_sym.register_autograd(_sym_backward, setup_context=_sym_setup)


@torch.library.custom_op("fastclr::triton_lse_rect", mutates_args=())
def triton_lse_rect(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    """(Mq,) fp32 LSE of query rows against key rows, query ``i`` being key ``q_offset + i``."""
    return _lse_rect_forward(q, k, q_offset, temperature)


@triton_lse_rect.register_fake
def _(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    return q.new_empty((q.shape[0],), dtype=torch.float32)


@torch.library.custom_op("fastclr::triton_lse_rect_backward", mutates_args=())
def triton_lse_rect_backward(
    q: Tensor, k: Tensor, lse: Tensor, grad: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    """Gradients of ``triton_lse_rect`` w.r.t. ``q`` (W k / τ) and ``k`` (Wᵀ q / τ)."""
    return _lse_rect_backward(q, k, lse, grad, q_offset, temperature)


@triton_lse_rect_backward.register_fake
def _(
    q: Tensor, k: Tensor, lse: Tensor, grad: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k)


def _rect_setup(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    q, k, q_offset, temperature = inputs
    ctx.save_for_backward(q, k, output)
    ctx.q_offset = q_offset  # type: ignore[attr-defined]
    ctx.temperature = temperature  # type: ignore[attr-defined]


def _rect_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
    q, k, lse = ctx.saved_tensors  # type: ignore[attr-defined]
    dq, dk = triton_lse_rect_backward(q, k, lse, grad, ctx.q_offset, ctx.temperature)  # type: ignore[attr-defined]
    return dq, dk, None, None


triton_lse_rect.register_autograd(_rect_backward, setup_context=_rect_setup)


class TritonLSE:
    """The ``triton`` LSE backend used by :func:`fastclr.ntxent` (see ``LSEBackend`` there)."""

    def lse_sym(self, zhat: Tensor, temperature: float) -> Tensor:
        return torch.ops.fastclr.triton_lse_sym(zhat, float(temperature))

    def lse_rect(self, q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
        return torch.ops.fastclr.triton_lse_rect(q, k, int(q_offset), float(temperature))


BACKEND = TritonLSE()
