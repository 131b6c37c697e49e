"""The NT-Xent loss of V ≥ 2 views in five Triton launches (the ``triton`` backend's fast path).

``fastclr.ntxent(z_1, …, z_V)`` with the triton backend, no labels, no extra negatives, no
distributed gather and the default ``positives="out"`` comes here (fastclr.loss asks
:func:`views_loss`). One custom op does the forward and one the backward:

* forward (3 launches): ``ntxent_prep_kernel`` normalises every row (exactly, for any finite
  scale), writes ẑ in the operand dtype and the positive term, and zeroes the column sums; the LSE
  kernel (symmetric, or row-block when deterministic or online); ``ntxent_finalize_kernel`` turns
  the sums into LSE, e^{c − LSE}, the per-row loss and its mean or sum, and counts non-finite rows;
* backward (2 launches): ``ntxent_rows_bwd_kernel`` (the upstream gradient read in place, 1/M
  applied inside), then ``ntxent_post_kernel``: the sum over key splits, the positive term's
  gradient and the normalisation's backward, written in the input dtype.

V > 2 views are concatenated first (one more launch); D > ``_k.MAX_SINGLE_CHUNK_D`` adds the
zeroing of the chunked backward's partials. Nothing reads a value back to the host (the
non-finite count is returned for the caller to check), and every buffer's shape depends on M, D
and the device only, so a step captures in a CUDA graph. Kernels: kernels/triton/ntxent_fused.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
from torch import Tensor

from fastclr.kernels.triton import ntxent as _k
from fastclr.kernels.triton import ntxent_fused as _kf
from fastclr.ops import triton_ntxent as _t

__all__ = ["FUSED_MAX_D", "REDUCTIONS", "views_loss"]

# Rows are normalised in one register tile of BLOCK_S × next_pow2(D) fp32 values; beyond this D
# the general path (fastclr.loss.fused_rows) is used instead.
FUSED_MAX_D = 2048
# Elements per prep/post program tile (BLOCK_S rows × BLOCK_D columns), and the finalize block.
TILE_ELEMS = 2048
FINAL_BLOCK = 1024
REDUCTIONS = ("mean", "sum", "none")


def _geometry(d: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(max(d, 1))
    return max(1, TILE_ELEMS // block_d), block_d


def _view_stride(z0: Tensor) -> int:
    """Elements between views 1, 2, … inside ``z1`` (the kernels' addressing): z1 stacks V − 1
    views of z0's shape with z0's strides."""
    return z0.shape[0] * z0.stride(0)


def _forward(
    z0: Tensor, z1: Tensor, n_views: int, temperature: float, eps: float, reduction: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    n, d = z0.shape
    m = n * n_views
    kdtype = z0.dtype if z0.dtype in (torch.float16, torch.bfloat16) else torch.float32
    path = _t.select_path(temperature)
    meta = _t._meta(m, d, kdtype)
    dev, f32 = z0.device, torch.float32
    zk = torch.empty(m, d, device=dev, dtype=kdtype)
    pos, lse, q = (torch.empty(m, device=dev, dtype=f32) for _ in range(3))  # q: not online
    splits = _t._splits(m, m // 2, dev) if path.symmetric else 1
    sum_row = torch.empty(splits if path.symmetric else 0, m, device=dev, dtype=f32)
    sum_col = torch.empty(m if path.symmetric else 0, device=dev, dtype=f32)
    ticket = torch.empty(1, device=dev, dtype=torch.int32)
    block_s, block_d = _geometry(d)
    inv_tau = 1.0 / temperature
    ptrs = (z0, z1, zk, pos, sum_col, ticket)
    sizes = (n, d, z0.stride(0), z0.stride(1), _view_stride(z0), inv_tau, eps)
    tiles = {"V": n_views, "ZERO_COL": path.symmetric, "BLOCK_S": block_s, "BLOCK_D": block_d}
    _t._launch(_kf.ntxent_prep_kernel, (triton.cdiv(n, block_s),), *ptrs, *sizes, **tiles)
    if path.symmetric:
        sym = (m, d, zk.stride(0), zk.stride(1), inv_tau, inv_tau)
        grid = _t._grid_rows(m, splits)
        _t._launch(_k.ntxent_sym_fwd_kernel, grid, zk, sum_row, sum_col, *sym, **meta.kwargs())
    else:
        _t._rows_forward(zk, zk, lse, 0, temperature, path.online, meta)
    out = torch.empty(m if reduction == 2 else (), device=dev, dtype=z0.dtype)
    bad = _finalize(
        (sum_row, sum_col, lse, q, pos, out, ticket), splits, path, temperature, reduction
    )
    _t.LAST_WORKSPACE["views"] = zk.nbytes + pos.nbytes + sum_row.nbytes + sum_col.nbytes
    return out, zk, lse, q, bad


def _finalize(
    bufs: tuple[Tensor, ...], splits: int, path: _t.Path, temperature: float, reduction: int
) -> Tensor:
    """Launch ntxent_finalize_kernel on (sum_row, sum_col, lse, q, pos, out, ticket); returns the
    non-finite row count (a device tensor)."""
    sum_row, sum_col, lse, q, pos, out, ticket = bufs
    m, dev = pos.shape[0], pos.device
    programs = triton.cdiv(m, FINAL_BLOCK)
    partial = torch.empty(programs, device=dev, dtype=torch.float32)
    nbad = torch.empty(programs, device=dev, dtype=torch.int32)
    bad = torch.empty(1, device=dev, dtype=torch.int32)
    ptrs = (sum_row, sum_col, lse, q, pos, out, partial, nbad, ticket, bad)
    scale = 1.0 / m if reduction == 0 else 1.0
    flags = {"FROM_SUMS": path.symmetric, "WRITE_Q": not path.online, "PER_ROW": reduction == 2}
    grid = (programs,)
    args = (m, splits, 1.0 / temperature, scale)
    _t._launch(_kf.ntxent_finalize_kernel, grid, *ptrs, *args, **flags, BLOCK=FINAL_BLOCK)
    return bad


# --------------------------------------------------------------------------------------------
# custom ops


@torch.library.custom_op("fastclr::triton_ntxent_views", mutates_args=())
def ntxent_views(
    z0: Tensor, z1: Tensor, n_views: int, temperature: float, eps: float, reduction: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, ẑ, LSE, q, non-finite count) of V views; reduction 0 mean, 1 sum, 2 none.

    ``z0`` is view 0 (N, D); ``z1`` the other V − 1 views stacked ((V − 1)·N, D), with z0's
    strides (for V = 2, view 1 itself).
    """
    return _forward(z0, z1, n_views, temperature, eps, reduction)


@ntxent_views.register_fake
def _(z0: Tensor, z1: Tensor, n_views: int, temperature: float, eps: float, reduction: int):  # type: ignore[no-untyped-def]
    m = z0.shape[0] * n_views
    kdtype = z0.dtype if z0.dtype in (torch.float16, torch.bfloat16) else torch.float32
    f32 = torch.float32
    out = z0.new_empty((m,) if reduction == 2 else ())
    q = z0.new_empty((m,), dtype=f32)
    return (
        out,
        z0.new_empty((m, z0.shape[1]), dtype=kdtype),
        z0.new_empty((m,), dtype=f32),
        q,
        (z0.new_empty((1,), dtype=torch.int32)),
    )


@torch.library.custom_op("fastclr::triton_ntxent_views_backward", mutates_args=())
def ntxent_views_backward(
    grad: Tensor,
    z0: Tensor,
    z1: Tensor,
    zk: Tensor,
    lse: Tensor,
    q: Tensor,
    n_views: int,
    temperature: float,
    eps: float,
    reduction: int,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`ntxent_views`'s loss w.r.t. ``z0`` and ``z1`` (contiguous)."""
    n = z0.shape[0]
    m, d = zk.shape
    path = _t.select_path(temperature)
    meta = _t._meta(m, d, zk.dtype)
    g_scale = 1.0 / m if reduction == 0 else 1.0
    g = grad if reduction == 2 else grad.reshape(1).expand(m)  # a view: stride 0
    stats, terms = (lse, q, lse, q), (True, True)
    part, nbytes = _t._rows_backward(
        zk, zk, stats, (g, g_scale), (0, 0), terms, temperature, path.online, meta
    )
    dz0 = torch.empty(n, d, device=z0.device, dtype=z0.dtype)
    dz1 = torch.empty(z1.shape, device=z0.device, dtype=z0.dtype)  # contiguous
    block_s, block_d = _geometry(d)
    ptrs = (z0, z1, part, g, dz0, dz1)
    sizes = (n, d, part.shape[0], z0.stride(0), z0.stride(1), _view_stride(z0), g.stride(0))
    scalars = (g_scale, 1.0 / temperature, eps)
    tiles = {"V": n_views, "BLOCK_S": block_s, "BLOCK_D": block_d}
    grid = (triton.cdiv(n, block_s),)
    _t._launch(_kf.ntxent_post_kernel, grid, *ptrs, *sizes, *scalars, **tiles)
    _t.LAST_WORKSPACE["views_backward"] = nbytes
    return dz0, dz1


@ntxent_views_backward.register_fake
def _(grad, z0, z1, zk, lse, q, n_views, temperature, eps, reduction):  # type: ignore[no-untyped-def]
    return z0.new_empty(z0.shape), z1.new_empty(z1.shape)


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    z0, z1, n_views, temperature, eps, reduction = inputs
    _, zk, lse, q, _ = output
    ctx.save_for_backward(z0, z1, zk, lse, q)
    ctx.args = (n_views, temperature, eps, reduction)
    ctx.set_materialize_grads(False)


def _grad(ctx: Any, grad: Tensor | None, *_: Any) -> tuple[Any, ...]:
    z0, z1, zk, lse, q = ctx.saved_tensors
    if grad is None:
        return None, None, None, None, None, None
    dz0, dz1 = ntxent_views_backward(grad, z0, z1, zk, lse, q, *ctx.args)
    return dz0, dz1, None, None, None, None


ntxent_views.register_autograd(_grad, setup_context=_setup)


def views_loss(
    views: tuple[Tensor, ...], temperature: float, reduction: str, eps: float
) -> tuple[Tensor, Tensor] | None:
    """(loss, non-finite row count) of V ≥ 2 validated views, or None where this path does not
    apply (D > FUSED_MAX_D, no rows). The caller raises on a non-zero count if it checks inputs.
    """
    n, d = views[0].shape
    if d > FUSED_MAX_D or n < 1 or not math.isfinite(1.0 / temperature):
        return None
    red = REDUCTIONS.index(reduction)
    v = len(views)
    z0 = views[0]
    z1 = views[1] if v == 2 else torch.cat(views[1:])  # V > 2: one more launch
    if z0.stride() != z1.stride():
        z0, z1 = z0.contiguous(), z1.contiguous()
    out = ntxent_views(z0, z1, v, temperature, eps, red)
    return out[0], out[4]
