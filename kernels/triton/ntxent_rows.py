"""Row-block forward of the fused NT-Xent log-sum-exp (pure ``@triton.jit``; maths in ntxent.py).

One program per query row block scans every key block, with no atomics (bitwise deterministic):
the deterministic forward, the online (small τ) forward and the rectangular (distributed) op.
Helpers and constants are ntxent.py's.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .ntxent import (
    _TUNE_KEY,
    LN2,
    LOG2E,
    ROW_CONFIGS,
    _ex2,
    _key_plan,
    _load_full,
    _load_rows,
    _prune,
    _sim_tile,
)


# Not split: one tile of the row forward, single-chunk or chunked D, constant shift or online,
# with 30 arguments. A jit helper cannot take a tuple of constexprs (triton 3.6 and 3.9 reject
# it), so each call passes its values one per line as ruff formats them; the logic is already in
# helpers (_load_full, _load_rows, _sim_tile, _ex2).
# longer than a screen: the reasons are in the comment just above.
@triton.jit
def _rows_fwd_tile(
    m_i,
    l_i,
    q,
    Q,
    K,
    offs_i,
    mask_i,
    self_i,
    n0,
    MK,
    D,
    offs_d,
    mask_d,
    stride_qm,
    stride_qd,
    stride_km,
    stride_kd,
    k2,
    c2,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    ONLINE: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    MASKED: tl.constexpr,
):
    """One key tile of the row-block forward: the running (m, l) of every row, updated."""
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64) + n0
    mask_n = offs_n < MK
    if SINGLE_CHUNK:
        rows_n = tl.arange(0, BLOCK_N)  # int32 tile offsets on an int64 base
        if MASKED:
            k = _load_rows(
                K + n0 * stride_km,
                rows_n,
                rows_n < MK - n0,
                offs_d,
                mask_d,
                stride_km,
                stride_kd,
                UPCAST,
            )
        else:
            k = _load_full(
                K + n0 * stride_km, rows_n, offs_d, mask_d, stride_km, stride_kd, UPCAST, EVEN_D
            )
        s2 = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * k2
    else:
        s2 = _sim_tile(
            Q,
            K,
            offs_i,
            mask_i,
            offs_n,
            mask_n,
            D,
            stride_qm,
            stride_qd,
            stride_km,
            stride_kd,
            k2,
            BLOCK_M,
            BLOCK_N,
            BLOCK_D,
            UPCAST,
            DOT_PREC,
        )
    if MASKED:
        valid = mask_i[:, None] & mask_n[None, :] & (self_i[:, None] != offs_n[None, :])
    if ONLINE:  # m_i in base-2 units
        if MASKED:
            s2 = tl.where(valid, s2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, axis=1))
        l_i = l_i * _ex2(m_i - m_new) + tl.sum(_ex2(s2 - m_new[:, None]), axis=1)
        m_i = m_new
    elif MASKED:
        l_i += tl.sum(tl.where(valid, _ex2(s2 - c2), 0.0), axis=1)
    else:
        l_i += tl.sum(_ex2(s2 - c2), axis=1)
    return m_i, l_i


# Not split: the kernel's 24 arguments, its docstring and the tile loops (single chunk: an interior
# and a masked pass; chunked D: every tile masked). A jit helper cannot take a tuple of constexprs
# (triton 3.6 and 3.9 reject it), so each call passes its values one per line as ruff formats them;
# the logic is already in helpers (_key_plan, _rows_fwd_tile).
# longer than a screen: the reasons are in the comment just above.
@triton.autotune(
    configs=ROW_CONFIGS, key=[*_TUNE_KEY, "ONLINE"], prune_configs_by={"early_config_prune": _prune}
)
@triton.jit(do_not_specialize=["MQ", "MK", "q_offset", "M_KEY", "D_KEY"])
def ntxent_rows_fwd_kernel(
    Q,  # (MQ, D) query rows ẑ, fp32/bf16/fp16, strides (stride_qm, stride_qd)
    K,  # (MK, D) key rows, same dtype, strides (stride_km, stride_kd)
    LSE,  # (MQ,) fp32 out: logsumexp_{k ≠ q_offset + i} s_ik (natural log)
    MQ,
    MK,
    D,
    stride_qm,
    stride_qd,
    stride_km,
    stride_kd,
    q_offset,  # query i is key q_offset + i (its self term is excluded)
    inv_tau,
    shift,  # constant shift c = 1/τ (used when not ONLINE)
    M_KEY,
    D_KEY,
    BLOCK_D: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr,
    EVEN_D: tl.constexpr,
    ONLINE: tl.constexpr,  # running max instead of the constant shift (small τ)
    UPCAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Row-block LSE, no atomics. Grid: (cdiv(MQ, BLOCK_M),); each program scans all key blocks.

    ONLINE: m ← max(m, max_k s_ik), l ← l·e^{m_old − m} + Σ_k e^{s_ik − m}, LSE = m + log l.
    Otherwise l ← l + Σ_k e^{s_ik − c}, LSE = c + log l. Interior key tiles run unmasked, then
    the self-pair band and the ragged last tile masked (:func:`_key_plan`).
    """
    pid = tl.program_id(0).to(tl.int64)
    k2 = inv_tau * LOG2E  # base-2 logits s2 = dot·k2, shift c2
    c2 = shift * LOG2E
    offs_i = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_i = offs_i < MQ
    self_i = offs_i + q_offset
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)  # finite: a fully masked tile gives no NaN
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q = tl.zeros((BLOCK_M, BLOCK_D), dtype=Q.dtype.element_ty)
    if SINGLE_CHUNK:
        q = _load_rows(Q, offs_i, mask_i, offs_d, mask_d, stride_qm, stride_qd, UPCAST)
        band = pid * BLOCK_M + q_offset
        ua_f, ub_f, n_int, ua, ub, n_sp, u_rag = _key_plan(0, MK, band, band + BLOCK_M, BLOCK_N)
        # MASKED = 0: the interior key tiles, then MASKED = 1: the self-pair band and the ragged
        # last tile (unrolled: each pass compiles its own loop, as two loops written out would)
        for MASKED in tl.static_range(2):
            for t in range(0, n_sp if MASKED else n_int):
                if MASKED:
                    u = tl.where(t < ub - ua, ua + t, u_rag)
                else:
                    u = tl.where(t >= ua_f, t + (ub_f - ua_f), t)
                m_i, l_i = _rows_fwd_tile(
                    m_i,
                    l_i,
                    q,
                    Q,
                    K,
                    offs_i,
                    mask_i,
                    self_i,
                    u * BLOCK_N,
                    MK,
                    D,
                    offs_d,
                    mask_d,
                    stride_qm,
                    stride_qd,
                    stride_km,
                    stride_kd,
                    k2,
                    c2,
                    BLOCK_M,
                    BLOCK_N,
                    BLOCK_D,
                    SINGLE_CHUNK,
                    EVEN_D,
                    ONLINE,
                    UPCAST,
                    DOT_PREC,
                    MASKED,
                )
    else:
        for n0 in range(0, MK, BLOCK_N):
            m_i, l_i = _rows_fwd_tile(
                m_i,
                l_i,
                q,
                Q,
                K,
                offs_i,
                mask_i,
                self_i,
                n0,
                MK,
                D,
                offs_d,
                mask_d,
                stride_qm,
                stride_qd,
                stride_km,
                stride_kd,
                k2,
                c2,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                SINGLE_CHUNK,
                EVEN_D,
                ONLINE,
                UPCAST,
                DOT_PREC,
                True,
            )
    l_i = tl.where(mask_i, l_i, 1.0)  # padding rows: keep log() finite (they are not stored)
    if ONLINE:
        lse = m_i * LN2 + tl.log(l_i)
    else:
        lse = shift + tl.log(l_i)
    tl.store(LSE + offs_i, lse, mask=mask_i)
