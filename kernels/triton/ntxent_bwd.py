"""Backward kernel of the fused NT-Xent log-sum-exp (pure ``@triton.jit``; maths in ntxent.py).

The row-block backward: program (i, s) computes Σ_n P_in Y_n for row block i over the s-th key
range, with no atomics (bitwise deterministic). Helpers and constants are ntxent.py's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .ntxent import (
    _TUNE_KEY,
    LOG2_PSCALE,
    LOG2E,
    ROW_BWD_CONFIGS,
    _ex2,
    _key_plan,
    _load_full,
    _load_rows,
    _prune,
    _round_to,
    _sim_tile,
)


@triton.jit
def _bwd_p(
    s2,
    r_x,
    l_x,
    g_x,
    QY,
    LY,
    GY,
    offs_n,
    mask_n,
    stride_g,
    g_col,
    c2,
    ONLINE: tl.constexpr,
    ROW_TERM: tl.constexpr,
    COL_TERM: tl.constexpr,
    MASKED: tl.constexpr,
):
    """σP of one tile (before the self/ragged mask). Not ONLINE: one exp per element times the
    per-row r_x plus the per-key r_y = g_y·q_y·(σ/τ) (q = e^{c − LSE}, an O(M) vector made once:
    no exp per key here). ONLINE: two exps per element, each of s − LSE ≤ 0."""
    if COL_TERM:
        if MASKED:
            g_y = tl.load(GY + offs_n * stride_g, mask=mask_n, other=0.0).to(tl.float32) * g_col
        else:
            g_y = tl.load(GY + offs_n * stride_g).to(tl.float32) * g_col
    if ONLINE:
        p = tl.zeros(s2.shape, dtype=tl.float32)
        # s − LSE ≤ 0 on every valid pair; the clamp keeps masked pairs from overflowing.
        if ROW_TERM:
            p += g_x[:, None] * _ex2(tl.minimum(s2 - (l_x * LOG2E)[:, None], 0.0))
        if COL_TERM:
            if MASKED:
                l_y = tl.load(LY + offs_n, mask=mask_n, other=0.0)
            else:
                l_y = tl.load(LY + offs_n)
            p += g_y[None, :] * _ex2(tl.minimum(s2 - (l_y * LOG2E)[None, :], 0.0))
    else:
        if ROW_TERM and COL_TERM:
            if MASKED:
                q_y = tl.load(QY + offs_n, mask=mask_n, other=0.0)
            else:
                q_y = tl.load(QY + offs_n)
            p = _ex2(s2 - c2) * (r_x[:, None] + (g_y * q_y)[None, :])
        elif ROW_TERM:
            p = _ex2(s2 - c2) * r_x[:, None]
        else:
            if MASKED:
                q_y = tl.load(QY + offs_n, mask=mask_n, other=0.0)
            else:
                q_y = tl.load(QY + offs_n)
            p = _ex2(s2 - c2) * (g_y * q_y)[None, :]
    return p


@triton.jit
def _p_bound(
    GX,
    GY,
    offs_i,
    mask_i,
    stride_g,
    g_scale,
    inv_tau,
    n_lo,
    n_hi,
    ROW_TERM: tl.constexpr,
    COL_TERM: tl.constexpr,
    G_UNIFORM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """(g_x·σ/τ, σ): σ = 2^⌊14 − log2 B⌋ with B ≥ |P| over this program's tiles (see the kernel)."""
    bound = tl.zeros((), dtype=tl.float32)
    g_x = tl.zeros(offs_i.shape, dtype=tl.float32)
    if ROW_TERM:
        g_x = tl.load(GX + offs_i * stride_g, mask=mask_i, other=0.0).to(tl.float32) * g_scale
        bound += tl.max(tl.abs(g_x), axis=0) * inv_tau
    if COL_TERM:
        if G_UNIFORM:  # one upstream value for every row (a mean or sum reduction)
            g_max = tl.abs(tl.load(GY).to(tl.float32) * g_scale)
        else:
            g_max = tl.zeros((), dtype=tl.float32)
            for n0 in range(n_lo, n_hi, BLOCK_N):
                offs_n = tl.arange(0, BLOCK_N).to(tl.int64) + n0
                g_n = tl.load(GY + offs_n * stride_g, mask=offs_n < n_hi, other=0.0)
                g_max = tl.maximum(g_max, tl.max(tl.abs(g_n.to(tl.float32)), axis=0))
            g_max = g_max * g_scale
        bound += g_max * inv_tau
    # (tensor first: constexpr − tensor would wrap the tensor in a constexpr in the interpreter)
    sigma = tl.exp2(tl.floor(-tl.log2(tl.maximum(bound, 1.0e-30)) + LOG2_PSCALE))
    return g_x * (inv_tau * sigma), sigma


# Not split: one tile: the load, the dot, σP, the mask and the second dot, single- chunk or
# chunked D, with 38 arguments. A jit helper cannot take a tuple of constexprs (triton 3.6 and 3.9
# reject it), so each call passes its values one per line as ruff formats them; the logic is
# already in helpers (_bwd_p, _load_full, _load_rows, _sim_tile).
# longer than a screen: the reasons are in the comment just above.
@triton.jit
def _bwd_tile(
    acc,
    x,
    X,
    Y,
    offs_i,
    mask_i,
    n0,
    n_hi,
    diag,
    offs_d,
    mask_d,
    D,
    stride_xm,
    stride_xd,
    stride_ym,
    stride_yd,
    r_x,
    l_x,
    g_x,
    QY,
    LY,
    GY,
    stride_g,
    g_col,
    k2,
    c2,
    out,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    ONLINE: tl.constexpr,
    ROW_TERM: tl.constexpr,
    COL_TERM: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    MASKED: tl.constexpr,
):
    """acc += σP·Y over the key tile starting at n0 (single chunk), or read-modify-write of the
    program's rows of its slot per D chunk (chunked). MASKED: the self pair and keys ≥ n_hi."""
    # the tile's keys relative to n0 (int32; the int64 base n0 is added to the pointers once)
    rows_n = tl.arange(0, BLOCK_N)
    mask_n = rows_n < n_hi - n0
    Yn = Y + n0 * stride_ym
    if SINGLE_CHUNK:
        if MASKED:
            y = _load_rows(Yn, rows_n, mask_n, offs_d, mask_d, stride_ym, stride_yd, UPCAST)
        else:
            y = _load_full(Yn, rows_n, offs_d, mask_d, stride_ym, stride_yd, UPCAST, EVEN_D)
        s2 = tl.dot(x, tl.trans(y), input_precision=DOT_PREC) * k2
    else:
        s2 = _sim_tile(
            X,
            Yn,
            offs_i,
            mask_i,
            rows_n,
            mask_n,
            D,
            stride_xm,
            stride_xd,
            stride_ym,
            stride_yd,
            k2,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            UPCAST,
            DOT_PREC,
        )
    p = _bwd_p(
        s2,
        r_x,
        l_x,
        g_x,
        QY + n0,
        LY + n0,
        GY + n0 * stride_g,
        rows_n,
        mask_n,
        stride_g,
        g_col,
        c2,
        ONLINE,
        ROW_TERM,
        COL_TERM,
        MASKED,
    )
    if MASKED:
        # keep = not the self pair and a real key, in int32 on the (i − n) tile: row i meets key
        # n as itself iff i − n equals this tile's diagonal offset (clamped: any value outside
        # (−BLOCK_N, BLOCK_M) matches nothing). Padding rows (≥ MX) need no mask: their
        # gradient rows are never stored and stay finite (their g is 0).
        rel = tl.arange(0, BLOCK_M)[:, None] - tl.arange(0, BLOCK_N)[None, :]
        dg = tl.minimum(tl.maximum(n0 - diag, -BLOCK_N), BLOCK_M).to(tl.int32)
        keep = (rel != dg) & (tl.arange(0, BLOCK_N) < n_hi - n0)[None, :]
        p = tl.where(keep, p, 0.0)
    if SINGLE_CHUNK:
        acc = tl.dot(_round_to(p, Y.dtype.element_ty).to(y.dtype), y, acc, input_precision=DOT_PREC)
    else:
        for d0 in range(0, D, BLOCK_D):
            offs_dc = d0 + tl.arange(0, BLOCK_D)
            mask_dc = offs_dc < D
            yc = _load_rows(Yn, rows_n, mask_n, offs_dc, mask_dc, stride_ym, stride_yd, UPCAST)
            out_ptr = out + offs_i[:, None] * D + offs_dc[None, :]
            out_mask = mask_i[:, None] & mask_dc[None, :]
            part = tl.load(out_ptr, mask=out_mask, other=0.0)
            pc = _round_to(p, Y.dtype.element_ty).to(yc.dtype)
            part = tl.dot(pc, yc, part, input_precision=DOT_PREC)
            tl.store(out_ptr, part, mask=out_mask)
    return acc


# Not split: the kernel's 37 arguments, its docstring, the bound σ, the tile loops (single chunk: an
# interior and a masked pass; chunked D: every tile masked) and the epilogue. A jit helper cannot
# take a tuple of constexprs (triton 3.6 and 3.9 reject it), so each call passes its values one per
# line as ruff formats them; the logic is already in helpers (_p_bound, _key_plan, _bwd_tile).
# longer than a screen: the reasons are in the comment just above.
@triton.autotune(
    configs=ROW_BWD_CONFIGS,
    key=[*_TUNE_KEY, "ONLINE", "ROW_TERM", "COL_TERM", "G_UNIFORM"],
    prune_configs_by={"early_config_prune": _prune},
    reset_to_zero=["DX"],
)
@triton.jit(do_not_specialize=["MX", "MY", "x_self_off", "y_self_off", "M_KEY", "D_KEY"])
def ntxent_rows_bwd_kernel(
    X,  # (MX, D) rows whose gradient this computes, strides (stride_xm, stride_xd)
    Y,  # (MY, D) the other side, same dtype, strides (stride_ym, stride_yd)
    LX,  # (MX,) fp32 LSE of X rows (read when ROW_TERM and ONLINE)
    QX,  # (MX,) fp32 e^{c − LX} (read when ROW_TERM and not ONLINE)
    GX,  # upstream gradient of LX: element i at GX + i·stride_g, any float dtype (ROW_TERM)
    LY,  # (MY,) fp32 LSE of Y rows (read when COL_TERM and ONLINE)
    QY,  # (MY,) fp32 e^{c − LY} (read when COL_TERM and not ONLINE)
    GY,  # upstream gradient of LY, element n at GY + n·stride_g (COL_TERM)
    DX,  # (S, MX, D) fp32 out, contiguous: split s's share; zero-initialised unless SINGLE_CHUNK
    MX,
    MY,
    D,
    stride_xm,
    stride_xd,
    stride_ym,
    stride_yd,
    stride_g,  # 0: one upstream value for all rows (G_UNIFORM)
    g_scale,  # every upstream value is multiplied by this (1/M for a mean)
    x_self_off,  # X row i and Y row n are the same sample iff i + x_self_off == n + y_self_off
    y_self_off,
    inv_tau,
    shift,
    M_KEY,
    D_KEY,
    BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    ONLINE: tl.constexpr,
    ROW_TERM: tl.constexpr,
    COL_TERM: tl.constexpr,
    G_UNIFORM: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """DX[s, i] = Σ_{n in split s} P_in Y_n; no atomics. Grid: (cdiv(MX, BLOCK_M), S).

    P_in = [ROW_TERM] GX_i e^{s_in − LX_i} / τ + [COL_TERM] GY_n e^{s_in − LY_n} / τ, self pairs 0.
    Not ONLINE: e^{s − L} = e^{s − c}·q with q = e^{c − L} read from QX/QY, one exp per element.
    ONLINE: two exps, each ≤ 1.
      symmetric dẑ (X = Y = ẑ):     ROW_TERM and COL_TERM → (W + Wᵀ) ẑ / τ
      rectangular dq (X = q, Y = k): ROW_TERM            → W k / τ
      rectangular dk (X = k, Y = q): COL_TERM            → Wᵀ q / τ
    Program (i, s) covers the s-th contiguous range of key blocks, so S splits multiply the
    programs (enough to fill the GPU at moderate M) and the launcher sums the S slots. Interior
    key tiles run unmasked; the self-pair band and the ragged last tile follow, masked.

    Scaling before the cast: every e^{s − L} ≤ 1 (L is the log-sum over the same s), so
    |P_in| ≤ B = (max|GX_I| + max|GY_range|) / τ. P is multiplied by σ = 2^⌊14 − log2 B⌋
    (``LOG2_PSCALE`` = 14) before it is rounded to the operand dtype, so |σP| ≤ 2^14 sits in
    fp16's range whatever M and the upstream gradient are (P ~ g/(M τ) would otherwise flush to
    zero in fp16 at large M); the fp32 accumulator is divided by σ before it is stored.
    """
    pid = tl.program_id(0).to(tl.int64)
    sid = tl.program_id(1).to(tl.int64)
    k2 = inv_tau * LOG2E  # base-2 logits s2 = dot·k2, shift c2
    c2 = shift * LOG2E
    offs_i = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_i = offs_i < MX
    per = tl.cdiv(tl.cdiv(MY, BLOCK_N), tl.num_programs(1)) * BLOCK_N
    n_lo = sid * per
    n_hi = tl.minimum(n_lo + per, MY)
    g_x, sigma = _p_bound(
        GX,
        GY,
        offs_i,
        mask_i,
        stride_g,
        g_scale,
        inv_tau,
        n_lo,
        n_hi,
        ROW_TERM,
        COL_TERM,
        G_UNIFORM,
        BLOCK_N,
    )
    g_col = g_scale * inv_tau * sigma
    l_x = tl.zeros((BLOCK_M,), dtype=tl.float32)
    r_x = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if ROW_TERM:
        if ONLINE:
            l_x = tl.load(LX + offs_i, mask=mask_i, other=0.0)
        else:
            r_x = g_x * tl.load(QX + offs_i, mask=mask_i, other=0.0)
    out = DX + sid * MX * D
    diag = pid * BLOCK_M + x_self_off - y_self_off  # key of row 0 of this block as itself
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    x = tl.zeros((BLOCK_M, BLOCK_D), dtype=X.dtype.element_ty)
    if SINGLE_CHUNK:
        x = _load_rows(X, offs_i, mask_i, offs_d, mask_d, stride_xm, stride_xd, UPCAST)
        ua_f, ub_f, n_int, ua, ub, n_sp, u_rag = _key_plan(
            n_lo, n_hi, diag, diag + BLOCK_M, BLOCK_N
        )
        # MASKED = 0: the interior key tiles, then MASKED = 1: the self-pair band and the ragged
        # last tile (unrolled: each pass compiles its own loop, as two loops written out would)
        for MASKED in tl.static_range(2):
            for t in range(0, n_sp if MASKED else n_int):
                if MASKED:
                    u = tl.where(t < ub - ua, ua + t, u_rag)
                else:
                    u = tl.where(t >= ua_f, t + (ub_f - ua_f), t)
                acc = _bwd_tile(
                    acc,
                    x,
                    X,
                    Y,
                    offs_i,
                    mask_i,
                    n_lo + u * BLOCK_N,
                    n_hi,
                    diag,
                    offs_d,
                    mask_d,
                    D,
                    stride_xm,
                    stride_xd,
                    stride_ym,
                    stride_yd,
                    r_x,
                    l_x,
                    g_x,
                    QY,
                    LY,
                    GY,
                    stride_g,
                    g_col,
                    k2,
                    c2,
                    out,
                    BLOCK_M,
                    BLOCK_N,
                    BLOCK_D,
                    SINGLE_CHUNK,
                    EVEN_D,
                    ONLINE,
                    ROW_TERM,
                    COL_TERM,
                    UPCAST,
                    DOT_PREC,
                    MASKED,
                )
        tl.store(
            out + offs_i[:, None] * D + offs_d[None, :],
            acc * (1.0 / sigma),
            mask=mask_i[:, None] & mask_d[None, :],
        )
    else:
        for n0 in range(n_lo, n_hi, BLOCK_N):
            acc = _bwd_tile(
                acc,
                x,
                X,
                Y,
                offs_i,
                mask_i,
                n0,
                n_hi,
                diag,
                offs_d,
                mask_d,
                D,
                stride_xm,
                stride_xd,
                stride_ym,
                stride_yd,
                r_x,
                l_x,
                g_x,
                QY,
                LY,
                GY,
                stride_g,
                g_col,
                k2,
                c2,
                out,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                SINGLE_CHUNK,
                EVEN_D,
                ONLINE,
                ROW_TERM,
                COL_TERM,
                UPCAST,
                DOT_PREC,
                True,
            )
        inv_sigma = 1.0 / sigma  # undo the scale on this program's rows of its slot
        for d0 in range(0, D, BLOCK_D):
            offs_dc = d0 + tl.arange(0, BLOCK_D)
            out_ptr = out + offs_i[:, None] * D + offs_dc[None, :]
            out_mask = mask_i[:, None] & (offs_dc < D)[None, :]
            tl.store(out_ptr, tl.load(out_ptr, mask=out_mask, other=0.0) * inv_sigma, mask=out_mask)
