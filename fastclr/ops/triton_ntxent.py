"""Launchers and torch custom ops for the fused Triton NT-Xent log-sum-exp (the ``triton`` backend).

Ops (registered with ``torch.library.custom_op``, so ``torch.compile`` sees them as single nodes):

* ``fastclr::triton_lse_sym(zhat, temperature) -> (M,) fp32``: ``logsumexp_{k≠a} ẑ_a·ẑ_k / τ``;
* ``fastclr::triton_lse_rect(q, k, q_offset, temperature) -> (Mq,) fp32``: queries against keys,
  query ``i`` being key ``q_offset + i`` (used with ``gather_distributed=True``);

each with a backward op (``grad`` first, then the forward's inputs and output) and autograd,
all defined by ``fastclr.ops._register`` exactly as for the native backend (the same
validation and exception types). Rows must already be L2-normalised; dtypes
fp32, bf16, fp16 (fp64 is computed in fp32). The kernels live in ``fastclr.kernels.triton.ntxent``.

Extra memory is O(M·D + M): nothing M×M is ever allocated. The launchers allocate only the
buffers listed by :func:`workspace_bytes` (fp32 row sums and fp32 gradient accumulators) and record
what they allocated in :data:`LAST_WORKSPACE` so tests can check it.

Paths. The forward takes the symmetric kernel (one exp per unordered pair, relaxed fp32 atomics
for the transposed sums) when τ ≥ 1/32 (2/τ ≤ ``CONST_SHIFT_LIMIT``, a rule on τ alone) and
``torch.are_deterministic_algorithms_enabled()`` is False; otherwise the row-block kernel (no
atomics, bitwise reproducible; with an online running max when τ < 1/32 so that exp never
underflows fp32). Every backward is the row-block kernel split over key ranges (no atomics).

Launches. One forward+backward of ``triton_lse_sym`` is at most ``10`` kernel launches whatever
M: forward = zero the column sums, the kernel, the sum over splits, + column sums, log, + c;
backward = the fp32 gradient copy (when it is not one already), the kernel, the sum over splits
(S > 1), the cast to the input dtype (16-bit inputs). Every buffer's shape depends on M, D and
the device's SM count only, and nothing reads a value back to the host, so it captures in a CUDA
graph (tests/test_triton_ntxent.py checks both).
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from fastclr.kernels.triton import ntxent as _k
from fastclr.kernels.triton import ntxent_bwd as _kb
from fastclr.kernels.triton import ntxent_rows as _kr
from fastclr.ops._register import LSEKernels, register_lse_ops

__all__ = [
    "BACKEND",
    "KERNELS",
    "LAST_WORKSPACE",
    "select_path",
    "triton_lse_rect",
    "triton_lse_sym",
    "workspace_bytes",
]

# Op name -> bytes of workspace (every buffer other than the op's own output) of its last call.
LAST_WORKSPACE: dict[str, int] = {}
# Triton kernel launches made by this module since import, by kernel name (bounded: a counter).
LAUNCHES: Counter[str] = Counter()

# The dot precision of fp32 operands: three TF32 tensor-core products per product (a = a_hi +
# a_lo, both TF32; a·b ≈ a_hi b_hi + a_hi b_lo + a_lo b_hi). Each product's error is at most
# FP32_DOT_REL_ERR·|a||b| (the dropped a_lo b_lo ≤ 2^-22, plus the TF32 rounding of the two cross
# terms ≤ 2·2^-11·2^-11; TF32 keeps 10 mantissa bits, rounding error ≤ 2^-11 relative), so for
# unit rows |Δ(ẑ_a·ẑ_k)| ≤ FP32_DOT_REL_ERR + the fp32 accumulation (tests/test_triton_ntxent.py
# checks this bound against an emulation of the rounding).
FP32_DOT_PRECISION = "tf32x3"
FP32_DOT_REL_ERR = 3.0 * 2.0**-22
# Multiprocessors of the target GPU (H200/H100 SXM), used to size splits under the interpreter.
H200_SMS = 132
# At most this many key-range splits (the (S, M, D) fp32 partial buffer is S·M·D·4 bytes).
MAX_SPLIT = 8
# Each split covers at least this many keys (one 128-row key block).
SPLIT_ROWS = 128
# Splits are sized for this row-block height (the bf16/fp16 configs' largest BLOCK_M).
SPLIT_BLOCK_M = 128

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


def workspace_bytes(m: int, d: int, op: str, path: Path, splits: int = 1) -> int:
    """Bytes the launcher of ``op`` allocates besides its output, for an (m, d) input.

    ``op`` is one of "lse_sym", "lse_sym_backward", "lse_rect", "lse_rect_backward" (for rect,
    ``m`` is Mq + Mk rows in total); ``splits`` is the op's key-range split count S
    (:func:`split_count`). Not counted: a dense fp32 copy of the upstream gradient (m·4 bytes)
    when it arrives expanded or in another dtype. At most ``MAX_SPLIT``·m·d·4 + (S + 1)·m·4:
    O(M·D + M), nothing M×M.
    """
    if op == "lse_sym":
        return (splits + 1) * m * _F32 if path.symmetric else 0  # split row sums + column sums
    if op in ("lse_sym_backward", "lse_rect_backward"):
        return splits * m * d * _F32  # the (S, M, D) fp32 partial gradients
    if op == "lse_rect":
        return 0
    raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------------------------
# launch helpers


def _device_error(name: str, t: Tensor) -> str | None:
    if t.device.type == "cuda" or (t.device.type == "cpu" and _interpreting()):
        return None
    return (
        f"the Triton NT-Xent kernel needs CUDA tensors ({name} is on {t.device}); on CPU use "
        "backend='native' or 'reference', or set TRITON_INTERPRET=1 before importing triton"
    )


def _check_input(name: str, t: Tensor) -> Tensor:
    """The tensor the kernels read (validated by the op layer): fp64 is computed in fp32."""
    return t.float() if t.dtype == torch.float64 else t


@dataclass(frozen=True)
class _Meta:
    """Compile-time parameters shared by every kernel of one call."""

    block_d: int
    single_chunk: bool
    even_d: bool
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
            "EVEN_D": self.even_d,
            "UPCAST": self.upcast,
            "DOT_PREC": self.dot_prec,
        }


def _meta(m: int, d: int, dtype: torch.dtype) -> _Meta:
    single = d <= _k.MAX_SINGLE_CHUNK_D
    block_d = max(_k.MIN_DOT, triton.next_power_of_2(d)) if single else _k.MULTI_CHUNK_D
    return _Meta(
        block_d=block_d,
        single_chunk=single,
        even_d=single and d == block_d,
        # The interpreter's bf16 tl.dot is wrong (docs/design.md, build notes): upcast tiles there.
        upcast=_interpreting() and dtype == torch.bfloat16,
        # fp32 operands go through the tensor cores as three TF32 products (hi·hi + hi·lo + lo·hi,
        # error bound in FP32_DOT_REL_ERR); ignored for bf16/fp16 operands
        dot_prec=FP32_DOT_PRECISION,
        m_key=max(_k.MIN_DOT, triton.next_power_of_2(m)),
        d_key=max(_k.MIN_DOT, triton.next_power_of_2(d)),
    )


def _grid_rows(m: int, splits: int = 1):  # type: ignore[no-untyped-def]
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), splits)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _sm_count_cuda(device.index if device.index is not None else 0)
    return H200_SMS  # the interpreter: split as the target GPU would


@functools.cache
def _sm_count_cuda(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def split_count(row_blocks: int, key_rows: int, sms: int) -> int:
    """Key-range splits S for ``row_blocks`` programs per split: fill ``sms`` multiprocessors.

    Picks the S ≤ ``MAX_SPLIT`` (and ≤ one split per ``SPLIT_ROWS`` keys) whose programs
    ``row_blocks·S`` waste the least of their last wave (one program per SM: the bf16/fp16
    configs hold 8 warps per SM at BLOCK_M = 128), the smallest S among equals. Depends on the
    shape and the device only, never on data.
    """
    most = max(1, min(MAX_SPLIT, key_rows // SPLIT_ROWS))
    if row_blocks >= sms:
        return 1

    def waste(s: int) -> float:
        programs = row_blocks * s
        waves = -(-programs // sms)
        return 1.0 - programs / (waves * sms)

    return min(range(1, most + 1), key=lambda s: (round(waste(s), 2), s))


def _launch(kernel, grid, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    """Every Triton launch of this module goes through here (counted in :data:`LAUNCHES`)."""
    LAUNCHES[kernel.fn.__name__] += 1
    kernel[grid](*args, **kwargs)


def _splits(m_rows: int, m_keys: int, device: torch.device) -> int:
    return split_count(triton.cdiv(m_rows, SPLIT_BLOCK_M), m_keys, _sm_count(device))


def _lse_sym_forward(zhat: Tensor, temperature: float) -> Tensor:
    z = _check_input("zhat", zhat)
    m, d = z.shape
    path = select_path(temperature)
    meta = _meta(m, d, z.dtype)
    inv_tau = 1.0 / temperature
    if path.symmetric:
        # each program visits about T/2 key blocks, so split as for half the keys
        splits = _splits(m, m // 2, z.device)
        sum_row = torch.empty(splits, m, device=z.device, dtype=torch.float32)
        sum_col = torch.zeros(m, device=z.device, dtype=torch.float32)
        LAST_WORKSPACE["lse_sym"] = sum_row.nbytes + sum_col.nbytes
        _launch(
            _k.ntxent_sym_fwd_kernel,
            _grid_rows(m, splits),
            z,
            sum_row,
            sum_col,
            m,
            d,
            z.stride(0),
            z.stride(1),
            inv_tau,
            inv_tau,
            **meta.kwargs(),
        )
        lse = torch.sum(sum_row, dim=0)
        lse.add_(sum_col).log_().add_(inv_tau)
        return lse
    lse = torch.empty(m, device=z.device, dtype=torch.float32)
    LAST_WORKSPACE["lse_sym"] = 0
    _rows_forward(z, z, lse, 0, temperature, path.online, meta)
    return lse


def _rows_forward(
    q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float, online: bool, meta: _Meta
) -> None:
    mq, d = q.shape
    inv_tau = 1.0 / temperature
    _launch(
        _kr.ntxent_rows_fwd_kernel,
        _grid_rows(mq),
        q,
        k,
        lse,
        mq,
        k.shape[0],
        d,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        q_offset,
        inv_tau,
        inv_tau,
        ONLINE=online,
        **meta.kwargs(),
    )


def q_factor(lse: Tensor, temperature: float) -> Tensor:
    """e^{c − LSE} (c = 1/τ), the backward's per-row factor of the constant-shift path: one
    O(M) vector, so the backward tiles need no exp per key (≤ e^{2/τ} ≤ e^64, finite in fp32)."""
    return torch.exp(1.0 / temperature - lse)


def _rows_backward(
    x: Tensor,
    y: Tensor,
    stats: tuple[Tensor, Tensor, Tensor, Tensor],
    grad: tuple[Tensor, float],
    offsets: tuple[int, int],
    terms: tuple[bool, bool],
    temperature: float,
    online: bool,
    meta: _Meta,
) -> tuple[Tensor, int]:
    """The rows backward kernel's (S, MX, D) fp32 split partials and their bytes.

    ``stats`` = (LX, QX, LY, QY): the LSE of each side and its e^{c − LSE} (the Q of an online
    call are not read; pass the LSE). ``grad`` = (g, scale): row a's upstream value is
    g[a]·scale, read with g's own stride and dtype (stride 0 for a broadcast scalar).
    """
    mx, d = x.shape
    splits = _splits(mx, y.shape[0], x.device)
    alloc = torch.empty if meta.single_chunk else torch.zeros  # chunked D read-modify-writes
    part = alloc(splits, mx, d, device=x.device, dtype=torch.float32)
    inv_tau = 1.0 / temperature
    g, g_scale = grad
    stride_g = g.stride(0) if g.dim() else 0
    lx, qx, ly, qy = stats
    _launch(
        _kb.ntxent_rows_bwd_kernel,
        _grid_rows(mx, splits),
        x,
        y,
        lx,
        qx,
        g,
        ly,
        qy,
        g,
        part,
        mx,
        y.shape[0],
        d,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        stride_g,
        g_scale,
        offsets[0],
        offsets[1],
        inv_tau,
        inv_tau,
        ONLINE=online,
        ROW_TERM=terms[0],
        COL_TERM=terms[1],
        G_UNIFORM=stride_g == 0,
        **meta.kwargs(),
    )
    return part, part.nbytes


def _split_sum(part: Tensor, dtype: torch.dtype) -> Tensor:
    total = part[0] if part.shape[0] == 1 else part.sum(dim=0)  # fp32 sum of the splits
    return total.to(dtype)


def _lse_sym_backward(grad: Tensor, zhat: Tensor, lse: Tensor, temperature: float) -> Tensor:
    z = _check_input("zhat", zhat)
    m, d = z.shape
    path = select_path(temperature)
    meta = _meta(m, d, z.dtype)
    lse = lse.contiguous()
    q = lse if path.online else q_factor(lse, temperature)
    # P is symmetric, so the row-block kernel with both terms gives (W + Wᵀ) ẑ / τ with no atomics
    part, nbytes = _rows_backward(
        z, z, (lse, q, lse, q), (grad, 1.0), (0, 0), (True, True), temperature, path.online, meta
    )
    LAST_WORKSPACE["lse_sym_backward"] = nbytes
    return _split_sum(part, zhat.dtype)


def _lse_rect_forward(q: Tensor, k: Tensor, q_offset: int, temperature: float) -> Tensor:
    qq, kk = _check_input("q", q), _check_input("k", k)
    mq, d = qq.shape
    path = select_path(temperature, deterministic=True)
    meta = _meta(max(mq, kk.shape[0]), d, qq.dtype)
    lse = torch.empty(mq, device=qq.device, dtype=torch.float32)
    LAST_WORKSPACE["lse_rect"] = 0
    _rows_forward(qq, kk, lse, q_offset, temperature, path.online, meta)
    return lse


def _lse_rect_backward(
    grad: Tensor, q: Tensor, k: Tensor, lse: Tensor, q_offset: int, temperature: float
) -> tuple[Tensor, Tensor]:
    qq, kk = _check_input("q", q), _check_input("k", k)
    mq, d = qq.shape
    mk = kk.shape[0]
    path = select_path(temperature, deterministic=True)
    meta = _meta(max(mq, mk), d, qq.dtype)
    lse = lse.contiguous()
    qf = lse if path.online else q_factor(lse, temperature)
    stats = (lse, qf, lse, qf)
    # dq = W k / τ (row term of the queries); dk = Wᵀ q / τ (column term, keys as the X side).
    dq, nq = _rows_backward(
        qq, kk, stats, (grad, 1.0), (q_offset, 0), (True, False), temperature, path.online, meta
    )
    dk, nk = _rows_backward(
        kk, qq, stats, (grad, 1.0), (0, q_offset), (False, True), temperature, path.online, meta
    )
    LAST_WORKSPACE["lse_rect_backward"] = nq + nk
    return _split_sum(dq, q.dtype), _split_sum(dk, k.dtype)


# --------------------------------------------------------------------------------------------
# custom ops (defined by fastclr.ops._register, shared with the native backend)

KERNELS = LSEKernels(
    "triton",
    _device_error,
    _lse_sym_forward,
    _lse_sym_backward,
    _lse_rect_forward,
    _lse_rect_backward,
)
BACKEND = register_lse_ops(KERNELS)
"""The ``triton`` LSE backend used by :func:`fastclr.ntxent` (see ``LSEBackend`` there)."""

triton_lse_sym = BACKEND.sym
triton_lse_sym_backward = BACKEND.sym_backward
triton_lse_rect = BACKEND.rect
triton_lse_rect_backward = BACKEND.rect_backward
