"""The kernels around the NT-Xent log-sum-exp, for V ≥ 2 views (pure ``@triton.jit``).

Launchers in fastclr.ops.triton_fused. With them one forward + backward of the views loss is five
kernel launches: prep → LSE (ntxent.py) → finalize, then the row backward (ntxent_bwd.py) → post.

Rows: the batch has M = V·N rows; row ``v·N + i`` is view v of sample i, read from ``Z0`` (v = 0)
or ``Z1 + (v − 1)·view_stride`` (v ≥ 1), each view with strides (stride_m, stride_d). Sample i's
class is its V rows, so the positive term is a sum over views, done per sample block here.

Normalisation, exact for any finite input (also beyond fp32's square root): per row s is the
power of two at or below max_k |z_k| (1 for a zero row; dividing by it is exact, as in
fastclr.reference.l2_normalize), u = z / s, ‖z‖ = s·‖u‖, and ẑ = u / ‖u‖ when ‖z‖ ≥ eps, else
z / eps — the same function as z / max(‖z‖, eps), without squaring z. Its backward, for
‖z‖ ≥ eps: dz = (dẑ − ẑ (ẑ·dẑ)) / ‖u‖ / s; else dz = dẑ / eps. float64 inputs are scaled in
float64 before the fp32 arithmetic, so 1e300 rows are exact too.

Positive term (views): with C_i = Σ_v ẑ_{v,i}, pos_a = ẑ_a·(C_i − ẑ_a) / (τ (V − 1)), and its
gradient for upstream g: dẑ_b = (g_b C_i + G_i − 2 g_b ẑ_b) / (τ (V − 1)), with
G_i = Σ_v g_{v,i} ẑ_{v,i}.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .ntxent import _round_to

# Partial sums the last finalize program adds per step (P ≤ 64 at M = 65,536 and BLOCK = 1024).
PARTIAL_BLOCK: tl.constexpr = tl.constexpr(64)


@triton.jit
def _view_ptrs(Z0, Z1, v: tl.constexpr, offs_s, offs_d, stride_m, stride_d, view_stride):
    if v == 0:
        base = Z0
    else:
        base = Z1 + (v - 1) * view_stride
    return base + offs_s[:, None] * stride_m + offs_d[None, :] * stride_d


@triton.jit
def _sample_block(N, D, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program id, its BLOCK_S samples (int64), their real ones, the columns, and the mask of the
    (BLOCK_S, BLOCK_D) tile of real samples and columns: the per-sample kernels' rows."""
    pid = tl.program_id(0).to(tl.int64)
    offs_s = pid * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < N
    offs_d = tl.arange(0, BLOCK_D)
    return pid, offs_s, mask_s, offs_d, mask_s[:, None] & (offs_d < D)[None, :]


@triton.jit
def _normalise(Z0, Z1, v: tl.constexpr, offs_s, mask, offs_d, stride_m, stride_d, view_stride, eps):
    """(ẑ fp32, ‖u‖, s, big) of view v's rows offs_s (zero rows outside ``mask``)."""
    x = tl.load(
        _view_ptrs(Z0, Z1, v, offs_s, offs_d, stride_m, stride_d, view_stride), mask=mask, other=0.0
    )
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    # s: a power of two at or below max_k |z_k| (dividing by it is exact; 1 for a zero row)
    s = tl.exp2(tl.floor(tl.log2(tl.max(tl.abs(x), axis=1))))
    s = tl.where((s > 0) & (s < float("inf")), s, 1.0)
    u = x / s[:, None]
    nu = tl.sqrt(tl.sum(u * u, axis=1))
    big = (s * nu) >= eps  # ‖z‖ ≥ eps (s·‖u‖ may round to inf: still ≥ eps)
    zh = tl.where(big[:, None], u, x) / tl.where(big, nu, eps)[:, None]
    return zh.to(tl.float32), nu, s, big


@triton.jit
def ntxent_prep_kernel(
    Z0,  # view 0, (N, D), any float dtype, strides (stride_m, stride_d)
    Z1,  # view 1; view v ≥ 1 starts at Z1 + (v − 1)·view_stride
    ZK,  # (M, D) out, contiguous: ẑ in the kernels' operand dtype (bf16/fp16/fp32)
    POS,  # (M,) fp32 out: the positive term pos_a (a NaN marks a non-finite input row)
    SUM_COL,  # (M,) fp32 out: zeroed here for the symmetric forward's atomics (ZERO_COL)
    TICKET,  # (1,) int32 out: zeroed here for ntxent_finalize_kernel
    N,
    D,
    stride_m,
    stride_d,
    view_stride,
    inv_tau,
    eps,
    V: tl.constexpr,
    ZERO_COL: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Normalise every row; write ẑ, the positive term and zeroed column sums.

    Grid: cdiv(N, BLOCK_S).
    """
    pid, offs_s, mask_s, offs_d, mask = _sample_block(N, D, BLOCK_S, BLOCK_D)
    if pid == 0:
        tl.store(TICKET, 0)
    c = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    for v in tl.static_range(V):
        zh, _, _, _ = _normalise(
            Z0, Z1, v, offs_s, mask, offs_d, stride_m, stride_d, view_stride, eps
        )
        c += zh
    for v in tl.static_range(V):  # normalise again (cheaper than holding V tiles in registers)
        zh, _, _, _ = _normalise(
            Z0, Z1, v, offs_s, mask, offs_d, stride_m, stride_d, view_stride, eps
        )
        rows = v * N + offs_s
        tl.store(
            ZK + rows[:, None] * D + offs_d[None, :], _round_to(zh, ZK.dtype.element_ty), mask=mask
        )
        pos = tl.sum(zh * (c - zh), axis=1) * (inv_tau / (V - 1))
        tl.store(POS + rows, pos, mask=mask_s)
        if ZERO_COL:
            tl.store(SUM_COL + rows, tl.zeros((BLOCK_S,), dtype=tl.float32), mask=mask_s)


@triton.jit
def ntxent_finalize_kernel(
    SUM_ROW,  # (S, M) fp32: the symmetric forward's split row sums (FROM_SUMS)
    SUM_COL,  # (M,) fp32: its column sums (FROM_SUMS)
    LSE,  # (M,) fp32: written (FROM_SUMS: c + log Σ) or read (the row kernel wrote it)
    Q,  # (M,) fp32 out: e^{c − LSE}, the backward's per-row factor (WRITE_Q)
    POS,  # (M,) fp32: the positive term
    OUT,  # the loss in the input dtype: (M,) per row (PER_ROW), else one value
    PARTIAL,  # (P,) fp32 scratch: each program's loss sum
    NBAD,  # (P,) int32 scratch: each program's count of non-finite rows
    TICKET,  # (1,) int32, zeroed by ntxent_prep_kernel: programs that have finished
    BAD,  # (1,) int32 out: how many rows have a non-finite input
    M,
    S,
    shift,
    out_scale,  # 1/M for a mean, 1 for a sum
    FROM_SUMS: tl.constexpr,
    WRITE_Q: tl.constexpr,
    PER_ROW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """loss_a = LSE_a − pos_a over BLOCK rows per program. Grid: P = cdiv(M, BLOCK).

    The last program to finish (an acq_rel ticket, once per program, outside any loop) adds the P
    partial sums in program order, so the mean is bitwise repeatable whatever the timing.
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    if FROM_SUMS:
        acc = tl.load(SUM_COL + offs, mask=mask, other=1.0)
        for s in range(0, S):
            acc += tl.load(SUM_ROW + s * M + offs, mask=mask, other=0.0)
        lse = shift + tl.log(acc)
        tl.store(LSE + offs, lse, mask=mask)
    else:
        lse = tl.load(LSE + offs, mask=mask, other=0.0)
    if WRITE_Q:
        tl.store(Q + offs, tl.exp(shift - lse), mask=mask)
    pos = tl.load(POS + offs, mask=mask, other=0.0)
    loss = lse - pos
    if PER_ROW:
        tl.store(OUT + offs, _round_to(loss, OUT.dtype.element_ty), mask=mask)
    tl.store(PARTIAL + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
    tl.store(NBAD + pid, tl.sum(tl.where(mask & (pos != pos), 1, 0), axis=0))
    programs = tl.num_programs(0)
    if tl.atomic_add(TICKET, 1, sem="acq_rel") == programs - 1:  # every partial is visible now
        total = tl.zeros((PARTIAL_BLOCK,), dtype=tl.float32)
        bad = tl.zeros((PARTIAL_BLOCK,), dtype=tl.int32)
        for p0 in range(0, programs, PARTIAL_BLOCK):
            offs_p = p0 + tl.arange(0, PARTIAL_BLOCK)
            mask_p = offs_p < programs
            total += tl.load(PARTIAL + offs_p, mask=mask_p, other=0.0, volatile=True)
            bad += tl.load(NBAD + offs_p, mask=mask_p, other=0, volatile=True)
        if not PER_ROW:
            tl.store(OUT, _round_to(tl.sum(total, axis=0) * out_scale, OUT.dtype.element_ty))
        tl.store(BAD, tl.sum(bad, axis=0))


@triton.jit
def ntxent_post_kernel(
    Z0,  # the forward's inputs (as in ntxent_prep_kernel)
    Z1,
    PART,  # (S, M, D) fp32: the row backward's split gradients w.r.t. ẑ of the LSE term
    G,  # upstream gradient of the loss: row a's at G + a·stride_g (stride 0: one value)
    DZ0,  # (N, D) out, view 0's gradient in the input dtype, contiguous
    DZ1,  # view v ≥ 1's gradient at DZ1 + (v − 1)·N·D, contiguous
    N,
    D,
    S,
    stride_m,
    stride_d,
    view_stride,
    stride_g,
    g_scale,
    inv_tau,
    eps,
    V: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dz = normalisation backward of (Σ_s PART[s] − the positive term's gradient).

    Grid: cdiv(N, BLOCK_S).
    """
    _, offs_s, mask_s, offs_d, mask = _sample_block(N, D, BLOCK_S, BLOCK_D)
    m = V * N
    c = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    gz = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    for v in tl.static_range(V):
        zh, _, _, _ = _normalise(
            Z0, Z1, v, offs_s, mask, offs_d, stride_m, stride_d, view_stride, eps
        )
        g = tl.load(G + (v * N + offs_s) * stride_g, mask=mask_s, other=0.0).to(tl.float32)
        c += zh
        gz += (g * g_scale)[:, None] * zh
    k = inv_tau / (V - 1)
    for v in tl.static_range(V):
        zh, nu, s, big = _normalise(
            Z0, Z1, v, offs_s, mask, offs_d, stride_m, stride_d, view_stride, eps
        )
        rows = v * N + offs_s
        g = tl.load(G + rows * stride_g, mask=mask_s, other=0.0).to(tl.float32) * g_scale
        dzh = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
        for sp in range(0, S):
            dzh += tl.load(
                PART + (sp * m + rows)[:, None] * D + offs_d[None, :], mask=mask, other=0.0
            )
        dzh -= (g[:, None] * (c - 2.0 * zh) + gz) * k
        radial = tl.sum(zh * dzh, axis=1)
        unit = (dzh - zh * radial[:, None]) / tl.where(big, nu, 1.0)[:, None]
        if Z0.dtype.element_ty == tl.float64:
            unit = unit.to(tl.float64)
        dz = tl.where(big[:, None], unit / tl.where(big, s, 1.0)[:, None], dzh / eps)
        if v == 0:
            dst = DZ0 + offs_s[:, None] * D + offs_d[None, :]
        else:
            dst = DZ1 + ((v - 1) * N + offs_s)[:, None] * D + offs_d[None, :]
        if Z0.dtype.element_ty == tl.float64:
            tl.store(dst, dz, mask=mask)
        else:
            tl.store(dst, _round_to(dz, DZ0.dtype.element_ty), mask=mask)
