"""Fused NT-Xent log-sum-exp kernels (pure ``@triton.jit``; launchers in fastclr.ops.triton_ntxent).

Maths (the loss's definition is in fastclr/reference.py). Rows ẑ_a are already L2-normalised, so
``s_ak = ẑ_a·ẑ_k / τ`` lies in [−1/τ, 1/τ]. The kernels compute, never storing anything M×M:

    forward   LSE_a = log Σ_{k≠a} exp(s_ak)                (natural log, base e, stored in fp32)
    backward  dẑ = (W + Wᵀ) ẑ / τ,   W_ak = g_a · exp(s_ak − LSE_a)     (g = upstream gradient)

Two ways to keep exp() in range:

* constant shift c = 1/τ ≥ max s. Then e_ak = exp(s_ak − c) ∈ [exp(−2/τ), 1] is one number for
  (a,k) and (k,a), so a tile (I, J) feeds the rows of I *and* of J with one exp per element, and
  ``(W + Wᵀ)_ak = e_ak (r_a + r_k)`` with ``r_a = g_a exp(c − LSE_a)``. Valid while 2/τ stays far
  from fp32's exp underflow (~87): the launcher uses it iff 2/τ ≤ ``CONST_SHIFT_LIMIT`` (64, so
  e ≥ 1.6e−28 and r ≤ g·6e27 stay finite), i.e. τ ≥ 1/32. The rule depends on τ only, never data.
* online running max (``ONLINE``): flash-attention's m/l recurrence per row; any τ > 0.

Kernels:

* ``ntxent_sym_fwd_kernel``: symmetric forward, constant shift. Row block ``i`` has the
  T//2 + 1 blocks J = (i + d) mod T, d = 0..T//2 (when T is even, the pair at d = T//2 is taken
  by the lower of its two blocks only), so every unordered block pair is visited exactly once
  and every row block has the same work; a second grid axis splits that list into S shares
  (enough programs for 132 SMs at M = 8192). Sums into its own rows stay in registers and go to
  the split's own slot; sums into the rows of J (the transposed tile) are fp32 atomic adds with
  ``sem="relaxed"``: a plain L2 reduction with no memory fence (the default acq_rel put a
  GPU-wide MEMBAR before every atomic). Their order of arrival sets the last bits (not bitwise
  deterministic).
* ``ntxent_rows_fwd_kernel``: one program per query row block, all key blocks, no atomics
  (bitwise deterministic). Used for the rectangular (distributed) op, under
  ``torch.use_deterministic_algorithms(True)``, and whenever the online path is needed.
* ``ntxent_rows_bwd_kernel``: every backward. Program (i, s) takes row block i against the s-th
  key range and writes its own (S, M, D) fp32 slot; the launcher sums the S slots. No atomics,
  so the backward is bitwise deterministic; P is symmetric, so the symmetric loss needs only this
  row-side product (2·M²·D multiply-adds and M² exps instead of the symmetric 1.5·M²·D and
  M²/2, but no M²·D/BLOCK_M atomic traffic to L2 and no fences).

Inside the tile loops the logits are base 2 (s2 = ẑ_a·ẑ_k·log2(e)/τ from one FFMA on the dot,
then one ``ex2.approx.ftz`` per element); the stored LSE stays natural-log. Tiles are
``BLOCK_M × BLOCK_M`` (symmetric) or ``BLOCK_M × BLOCK_N`` (rows). The feature dimension
D is either one padded chunk (``SINGLE_CHUNK``, BLOCK_D = next power of two ≥ D: operand tiles and
the gradient accumulator live in registers) or a loop over BLOCK_D chunks for large D (the row-side
gradient is then read-modify-written in global memory by the program that owns those rows).

``UPCAST``: under the Triton interpreter (CPU CI) ``tl.dot`` of two bf16 tiles is wrong (triton
3.8/3.9), so the launcher sets UPCAST=True there for bf16 and the tiles are cast to fp32 before
every ``tl.dot``; on a GPU it is False and bf16 goes to the tensor cores. The backward's softmax
tile P is always rounded to the input dtype first (``p.to(Z.dtype.element_ty)``), so the upcast
interpreter run sees the same rounding as the GPU's bf16 dot (products of bf16 values are exact
in fp32; only the accumulation order differs). ``DOT_PREC`` is the launcher's fp32 precision
("tf32x3": three TF32 tensor-core products per product, error bound in
fastclr.ops.triton_ntxent.FP32_DOT_REL_ERR) and ignored for 16-bit operands. Accumulation is
always fp32.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# FASTCLR_TRITON_AUTOTUNE=0 pins one config per kernel (scripts/gpu_check.sh sets it for tests).
AUTOTUNE = os.environ.get("FASTCLR_TRITON_AUTOTUNE", "1") != "0"

# 2/τ above this switches to the online path: exp(−64) = 1.6e−28 is far above fp32's smallest
# normal (1.2e−38), and the backward's r = σ·g/τ·exp(c − LSE) ≤ 2^14·e^64 = 1e32 stays finite
# (σ·g/τ ≤ 2^14 by the P scale; fp32 overflows at 3.4e38 ≈ 2^14·e^79). The native CPU kernel
# (kernels/cpu/ntxent.h, kConstShiftMaxSpan) switches at 80 instead: its fp32 backward has no P
# scale, so it may go closer to the limit; both sides of each switch are tested.
CONST_SHIFT_LIMIT = 64.0
# Largest D handled as one register-resident chunk; above it D is looped in MULTI_CHUNK_D pieces.
MAX_SINGLE_CHUNK_D = 256
MULTI_CHUNK_D = 128 if INTERPRET else 64
# Smallest tile side tl.dot accepts.
MIN_DOT = 16
# Tiles work in base 2: s2 = s·log2(e), e^s = 2^s2, so one FFMA (dot·k2 − c2) feeds one MUFU.EX2.
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
# On a GPU 2^x is one ex2.approx.ftz (tl.exp2 adds a compare and two multiplies per element to
# keep subnormal results, which no sum here needs); the interpreter cannot run inline PTX.
FAST_EXP2: tl.constexpr = tl.constexpr(not INTERPRET)
# The interpreter rounds fp32 → bf16 by truncation (compiled code rounds to nearest-even).
INTERPRET_BF16_RNE: tl.constexpr = tl.constexpr(INTERPRET)
# The backward scales its softmax tile P so that |σP| ≤ 2^LOG2_PSCALE before rounding it to the
# operand dtype: 2^14 leaves a factor 4 below fp16's largest finite value (65504), and entries down
# to 2^-28 of the largest stay in fp16's normal range (see ntxent_rows_bwd_kernel).
LOG2_PSCALE: tl.constexpr = tl.constexpr(14.0)


def _configs(blocks: list[tuple[int, int, int, int, int, bool]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, warps, stages, largest single-chunk BLOCK_D, fits the chunked path)."""
    out = []
    for bm, bn, w, s, max_d, chunked in blocks:
        cfg = triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        FITS[id(cfg)] = (max_d, chunked)
        out.append(cfg)
    return out


# id(config) -> (largest BLOCK_D it holds in registers without spilling in bf16/fp16, whether the
# chunked-D path fits too). Measured by ptxas for sm_90 (bench/results/triton-sm90.md; make
# aot-check fails if a kept bf16/fp16 config spills, so a wrong entry cannot go unnoticed).
FITS: dict[int, tuple[int, bool]] = {}

if INTERPRET:
    # The interpreter runs each program in numpy: few, mid-sized programs are fastest; one config.
    SYM_CONFIGS = _configs([(32, 32, 1, 1, 4096, True)])
    ROW_CONFIGS = _configs([(32, 32, 1, 1, 4096, True)])
    ROW_BWD_CONFIGS = ROW_CONFIGS
elif not AUTOTUNE:
    # Compiled tests touch dozens of shapes: one config each avoids minutes of tuning (where the
    # keep rule drops it, its fallback runs the same config).
    SYM_CONFIGS = _configs([(64, 64, 4, 2, 128, True)])
    ROW_CONFIGS = _configs([(64, 64, 4, 2, 256, True)])
    ROW_BWD_CONFIGS = _configs([(64, 64, 4, 2, 128, True)])
else:
    # Symmetric tiles are square (BLOCK_N unused there). A 128-key backward tile spills (a 128 ×
    # 128 P tile beside the BLOCK_M × D accumulator), so the backward keeps BLOCK_N ≤ 64.
    SYM_CONFIGS = _configs(
        [
            (64, 64, 4, 2, 128, True),
            (64, 64, 8, 2, 256, True),
            (64, 64, 4, 3, 128, False),
            (32, 32, 4, 2, 256, True),
        ]
    )
    ROW_CONFIGS = _configs(
        [
            (64, 64, 4, 3, 256, True),
            (64, 128, 4, 3, 128, True),
            (128, 64, 8, 3, 128, True),
            (128, 128, 8, 2, 128, False),
            (32, 64, 4, 2, 256, True),
        ]
    )
    ROW_BWD_CONFIGS = _configs(
        [
            (64, 64, 4, 3, 128, False),
            (64, 64, 8, 3, 128, True),
            (128, 64, 8, 3, 128, False),
            (64, 32, 8, 2, 256, False),
            (32, 64, 4, 2, 256, True),
        ]
    )


def keep(
    config: triton.Config, block_d: int, single_chunk: bool, m: int, elem_bytes: int = 2
) -> bool:
    """Drop configs that spill at this head dimension or whose row block exceeds the batch.

    bf16/fp16: the measured limits in :data:`FITS`. fp32 (3×TF32 holds a hi and a lo copy of
    each operand, and spills in every config at D ≥ 64): the configs whose row-block operand
    tile takes at most 64 registers per thread, the least spilling.
    """
    bm = config.kwargs["BLOCK_M"]
    if bm > max(MIN_DOT, triton.next_power_of_2(m)):
        return False
    max_d, chunked = FITS.get(id(config), (128, True))
    if not single_chunk:
        return chunked
    if elem_bytes == 4:
        return bm * block_d * 2 / (config.num_warps * 32) <= 64
    return block_d <= max_d


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    args = {**named_args, **kwargs}
    m = int(args["M_KEY"])  # type: ignore[call-overload]
    first = next(v for k, v in args.items() if k in ("Z", "Q", "X"))  # the operand rows
    size = first.element_size() if hasattr(first, "element_size") else 2
    block_d, single = int(args["BLOCK_D"]), bool(args["SINGLE_CHUNK"])  # type: ignore[call-overload]
    kept = [c for c in configs if keep(c, block_d, single, m, size)]
    return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"], -c.num_warps))]


# Autotune keys: power-of-two buckets of M and D (computed by the launcher), so each new batch size
# does not re-tune; dtypes are added to the key by the autotuner itself.
_TUNE_KEY = ["M_KEY", "D_KEY", "SINGLE_CHUNK"]
# Row counts and offsets are not specialised (``do_not_specialize``): triton would otherwise compile
# a variant per divisibility class of each (the compiled tests needed ~85 compiles, now ~75). D,
# the row strides and the unit column stride stay specialised: D % 16 == 0 lets the D masks and
# loads vectorise (without it the hot loops lose cp.async and grow ~30% in instructions).


@triton.jit
def _load_rows(
    P, offs_r, mask_r, offs_d, mask_d, stride_m, stride_d, UPCAST: tl.constexpr
):  # (R, BLOCK_D) tile of rows offs_r, columns offs_d; zero outside the masks
    t = tl.load(
        P + offs_r[:, None] * stride_m + offs_d[None, :] * stride_d,
        mask=mask_r[:, None] & mask_d[None, :],
        other=0.0,
    )
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _load_full(
    P, offs_r, offs_d, mask_d, stride_m, stride_d, UPCAST: tl.constexpr, EVEN_D: tl.constexpr
):
    """An interior tile: every row exists, so no row mask (and no mask at all when D = BLOCK_D)."""
    ptrs = P + offs_r[:, None] * stride_m + offs_d[None, :] * stride_d
    if EVEN_D:
        t = tl.load(ptrs)
    else:
        t = tl.load(ptrs, mask=mask_d[None, :], other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _round_to(x, DT: tl.constexpr):
    """fp32 ``x`` rounded to nearest-even in ``DT``. Compiled, ``.to`` does this; the interpreter's
    fp32 → bf16 cast truncates instead, so there the rounding is done on the bits."""
    if INTERPRET_BF16_RNE and DT == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = b + 0x7FFF + ((b >> 16) & 1)
        return (b & 0xFFFF0000).to(tl.float32, bitcast=True).to(DT)
    else:
        return x.to(DT)


@triton.jit
def _ex2(x):
    """2^x; on a GPU one MUFU.EX2 that flushes subnormal results to zero."""
    if FAST_EXP2:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def _sim_tile(
    A,
    B,
    offs_a,
    mask_a,
    offs_b,
    mask_b,
    D,
    stride_am,
    stride_ad,
    stride_bm,
    stride_bd,
    scale,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``scale``·A[offs_a]·B[offs_b]ᵀ as a (BLOCK_A, BLOCK_B) fp32 tile, looping D in BLOCK_D."""
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        a = _load_rows(A, offs_a, mask_a, offs_d, mask_d, stride_am, stride_ad, UPCAST)
        b = _load_rows(B, offs_b, mask_b, offs_d, mask_d, stride_bm, stride_bd, UPCAST)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=DOT_PREC)
    return acc * scale


@triton.jit
def _pair_count(pid, T):
    """How many blocks program ``pid`` visits: J = (pid + d) mod T for d < this count.

    T//2 + 1, except that for even T the pair at d = T//2 is reached from both of its blocks and
    only pid < T//2 keeps it. Integer arithmetic only (no scalar booleans: the triton 3.9
    interpreter turns ``tensor_mask & scalar_bool`` into an int32 mask that tl.load rejects).
    """
    half = T // 2
    return half + 1 - ((T + 1) % 2) * (pid // tl.maximum(half, 1))


@triton.jit
def _key_plan(n_lo, n_hi, band_lo, band_hi, BLOCK_N: tl.constexpr):
    """Which key tiles of [n_lo, n_hi) need masks: the self-pair band and the ragged last tile.

    Tiles u = 0 … U−1 start at n_lo + u·BLOCK_N. The tiles that meet the self-pair band
    [band_lo, band_hi) are [ua, ub); the last one is ragged when the range is not a multiple of
    BLOCK_N. Returns (ua_f, ub_f, n_interior, ua, ub, n_special, u_ragged): interior tile t is
    u = t + (t ≥ ua_f)·(ub_f − ua_f); special tile t is ua + t for t < ub − ua, else u_ragged.
    """
    span = tl.maximum(n_hi - n_lo, 0)
    u_full = span // BLOCK_N
    u_all = tl.cdiv(span, BLOCK_N)
    lo = tl.maximum(band_lo, n_lo)
    hi = tl.minimum(band_hi, n_hi)
    has = hi > lo
    ua = tl.where(has, (lo - n_lo) // BLOCK_N, 0)
    ub = tl.where(has, tl.cdiv(hi - n_lo, BLOCK_N), 0)
    ua_f = tl.minimum(ua, u_full)
    ub_f = tl.minimum(tl.maximum(ub, ua_f), u_full)
    n_int = u_full - (ub_f - ua_f)
    ragged_extra = tl.where((u_all > u_full) & (ub <= u_full), 1, 0)
    return ua_f, ub_f, n_int, ua, ub, (ub - ua) + ragged_extra, u_full


@triton.jit
def _sym_plan(pid, T, M, d_lo, d_hi, BLOCK_M: tl.constexpr):
    """The symmetric forward's masked tiles among d ∈ [d_lo, d_hi): the diagonal d = 0, the ragged
    column block (d = T−1−pid) and, on the ragged row block, every tile. Returns (start, dr,
    dr_in, n_interior, all_special, n_special); interior tile t is d = start + t (+1 past dr)."""
    ragged = (M % BLOCK_M) != 0
    all_sp = ragged & (pid == T - 1)
    start = tl.maximum(d_lo, 1)
    dr = T - 1 - pid
    dr_in = ragged & (dr >= start) & (dr < d_hi)
    n_int = tl.where(all_sp, 0, tl.maximum(d_hi - start, 0) - tl.where(dr_in, 1, 0))
    n_sp_mixed = tl.where(d_lo == 0, 1, 0) + tl.where(dr_in, 1, 0)
    n_sp = tl.where(all_sp, tl.maximum(d_hi - d_lo, 0), n_sp_mixed)
    return start, dr, dr_in, n_int, all_sp, n_sp


@triton.jit
def _sym_tile(
    acc_t,
    Z,
    z_i,
    offs_i,
    mask_i,
    jb,
    M,
    offs_d,
    mask_d,
    stride_zm,
    stride_zd,
    k2,
    c2,
    SUM_COL,
    BLOCK_M: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    EVEN_D: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One symmetric tile (I, J = jb), single D chunk, computed transposed: eᵀ = e^{ẑ_J ẑ_Iᵀ/τ − c}.

    Its sums over I (one per key of J, wanted now, for the relaxed atomics into SUM_COL; none on
    the diagonal tile, whose I-side sums hold both orientations) are row sums of eᵀ: inside a
    thread and its quad, no shared memory. Its sums over J (for the rows of I) are only needed at
    the end: eᵀ is added into ``acc_t`` (returned) and reduced once after the loop.
    """
    j0 = jb * BLOCK_M  # int64 base; the tile's own offsets stay int32
    rows_j = tl.arange(0, BLOCK_M)
    if MASKED:
        offs_j = j0 + rows_j
        mask_j = offs_j < M
        z_j = _load_rows(
            Z + j0 * stride_zm, rows_j, mask_j, offs_d, mask_d, stride_zm, stride_zd, UPCAST
        )
    else:
        z_j = _load_full(
            Z + j0 * stride_zm, rows_j, offs_d, mask_d, stride_zm, stride_zd, UPCAST, EVEN_D
        )
    s2 = tl.dot(z_j, tl.trans(z_i), input_precision=DOT_PREC) * k2
    if MASKED:
        valid = mask_j[:, None] & mask_i[None, :] & (offs_j[:, None] != offs_i[None, :])
        e = tl.where(valid, _ex2(s2 - c2), 0.0)
        off_diag = offs_j != offs_i  # all False on the diagonal tile, else all True
        tl.atomic_add(SUM_COL + offs_j, tl.sum(e, axis=1), mask=mask_j & off_diag, sem="relaxed")
    else:
        e = _ex2(s2 - c2)
        tl.atomic_add(SUM_COL + j0 + rows_j, tl.sum(e, axis=1), sem="relaxed")
    return acc_t + e


@triton.jit
def _sym_tile_chunked(
    Z,
    offs_i,
    mask_i,
    jb,
    M,
    D,
    stride_zm,
    stride_zd,
    k2,
    c2,
    SUM_COL,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """:func:`_sym_tile` for D > MAX_SINGLE_CHUNK_D (D looped in BLOCK_D chunks, always masked)."""
    offs_j = jb * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_j = offs_j < M
    s2 = _sim_tile(
        Z,
        Z,
        offs_i,
        mask_i,
        offs_j,
        mask_j,
        D,
        stride_zm,
        stride_zd,
        stride_zm,
        stride_zd,
        k2,
        BLOCK_M,
        BLOCK_M,
        BLOCK_D,
        UPCAST,
        DOT_PREC,
    )
    valid = mask_i[:, None] & mask_j[None, :] & (offs_i[:, None] != offs_j[None, :])
    e = tl.where(valid, _ex2(s2 - c2), 0.0)
    off_diag = offs_j != offs_i
    tl.atomic_add(SUM_COL + offs_j, tl.sum(e, axis=0), mask=mask_j & off_diag, sem="relaxed")
    return tl.sum(e, axis=1)


# Not split: the kernel's 20 arguments, its docstring, and the tile loop (one pass for the interior
# tiles, one for the masked ones) around one helper call. A jit helper cannot take a tuple of
# constexprs (triton 3.6 and 3.9 reject it), so each call passes its values one per line as ruff
# formats them; the logic is already in helpers (_sym_plan, _sym_tile, _sym_tile_chunked).
# longer than a screen: the reasons are in the comment just above.
@triton.autotune(
    configs=SYM_CONFIGS,
    key=_TUNE_KEY,
    prune_configs_by={"early_config_prune": _prune},
    reset_to_zero=["SUM_COL"],
)
@triton.jit(do_not_specialize=["M", "M_KEY", "D_KEY"])
def ntxent_sym_fwd_kernel(
    Z,  # (M, D) ẑ, fp32/bf16/fp16, strides (stride_zm, stride_zd)
    SUM_ROW,  # (S, M) fp32 out: split s's Σ exp(s_ak − c) over the blocks it visits (plain store)
    SUM_COL,  # (M,) fp32 out, zero-initialised: the transposed contributions (relaxed atomics)
    M,
    D,
    stride_zm,
    stride_zd,
    inv_tau,  # 1/τ
    shift,  # c = 1/τ (the launcher's LSE is c + log(Σ_s SUM_ROW[s] + SUM_COL))
    M_KEY,  # autotune bucket of M (unused in the body)
    D_KEY,  # autotune bucket of D (unused in the body)
    BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,  # D == BLOCK_D: interior tiles load without any mask
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # unused: symmetric tiles are BLOCK_M × BLOCK_M
):
    """Per-row Σ_{k≠a} exp(s_ak − c) with each exp computed once for (a,k) and (k,a).

    Grid: (T, S), T = cdiv(M, BLOCK_M), S splits. Program (i, s) owns rows I and the s-th
    contiguous share of the T//2 + 1 block pairs of row block i; exp tiles e_IJ feed row sums of
    I (registers, stored to split s's slot) and column sums of J (fp32 atomics with relaxed
    ordering: a plain L2 reduction, no memory fence; skipped on the diagonal tile J = I where the
    row sums already cover both orientations). Interior tiles (neither the diagonal nor a ragged
    block) run without masks; the at most two others per program run the masked tile after them.
    """
    pid = tl.program_id(0).to(tl.int64)
    sid = tl.program_id(1).to(tl.int64)
    k2 = inv_tau * LOG2E  # base-2 logits s2 = dot·k2, shift c2
    c2 = shift * LOG2E
    T = tl.cdiv(M, BLOCK_M)
    offs_i = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_i = offs_i < M
    row_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    count = _pair_count(pid, T)
    per = tl.cdiv(count, tl.num_programs(1))
    d_lo = sid * per
    d_hi = tl.minimum(d_lo + per, count)
    if SINGLE_CHUNK:  # the row block's operand tile is loaded once
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        z_i = _load_rows(Z, offs_i, mask_i, offs_d, mask_d, stride_zm, stride_zd, UPCAST)
        start, dr, dr_in, n_int, all_sp, n_sp = _sym_plan(pid, T, M, d_lo, d_hi, BLOCK_M)
        acc_t = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)  # eᵀ summed over the J blocks
        # MASKED = 0: the interior tiles, then MASKED = 1: the at most two masked ones (unrolled:
        # each pass compiles its own loop, as two loops written out would)
        for MASKED in tl.static_range(2):
            for t in range(0, n_sp if MASKED else n_int):
                if MASKED:
                    d = tl.where(all_sp, d_lo + t, tl.where((t == 0) & (d_lo == 0), 0, dr))
                else:
                    d = start + t
                    d = tl.where(dr_in & (d >= dr), d + 1, d)
                jb = pid + d
                jb = tl.where(jb >= T, jb - T, jb)  # (pid + d) mod T without an integer division
                acc_t = _sym_tile(
                    acc_t,
                    Z,
                    z_i,
                    offs_i,
                    mask_i,
                    jb,
                    M,
                    offs_d,
                    mask_d,
                    stride_zm,
                    stride_zd,
                    k2,
                    c2,
                    SUM_COL,
                    BLOCK_M,
                    UPCAST,
                    DOT_PREC,
                    EVEN_D,
                    MASKED,
                )
        row_acc = tl.sum(acc_t, axis=0)
    else:
        for d in range(d_lo, d_hi):
            row_acc += _sym_tile_chunked(
                Z,
                offs_i,
                mask_i,
                (pid + d) % T,
                M,
                D,
                stride_zm,
                stride_zd,
                k2,
                c2,
                SUM_COL,
                BLOCK_M,
                BLOCK_D,
                UPCAST,
                DOT_PREC,
            )
    tl.store(SUM_ROW + sid * M + offs_i, row_acc, mask=mask_i)
