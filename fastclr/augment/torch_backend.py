"""The batched torch backend (``backend="torch"``): the reference's maths, vectorised, in float32.

Same semantics as :func:`fastclr.augment.reference.apply_reference` for the same parameters; it
differs only by float32 rounding, within :data:`fastclr.testing.AUGMENT_ATOL`. Layout of the
work: the uint8 source goes planar (N·3·H rows of W bytes), then

1. crop + resize, separable. Sources up to ``MATMUL_RESIZE_MAX_SIDE`` px: two matmuls with
   the bilinear matrices, Ry · X · Rxᵀ (on CPU straight from the NHWC uint8,
   ``_crop_resize_nhwc``). Larger ones on CPU: ``F.interpolate`` of each float crop
   (``_crop_resize_each``). Larger ones on CUDA: gather the two source rows of every output
   row (``index_select`` of whole rows: a memcpy), lerp in float32 → (N, 3, S, W); gather the two
   columns of every output column (``gather``), lerp → (N, 3, S, S). The flip is folded into the
   column weights. Ragged batches are first copied into one zero-padded dense tensor (the padding
   is never read: weights outside each crop box are zero).
2. colour jitter in four rounds: in round k every image with ``jitter_apply`` applies op
   ``order[:, k]``. Brightness, contrast and saturation are one blend with per-image
   coefficients over the whole chunk (``_blend_step``); hue runs on the subset of images that
   need it (``x[idx]`` / ``index_put_``) on CPU, and on the whole batch behind a mask
   (``torch.where``) on CUDA, so there is no host sync there (the fused Triton backend is the
   fast CUDA path).
3. grayscale, blur (per-image Gaussian taps with reflect padding folded into an (S, S) matrix B,
   applied as B · x · Bᵀ) and solarize, each on its subset; then normalise while writing the
   (N, 3, S, S) channels_last output in ``config.dtype``.

On CPU the batch is processed in chunks that fit the L2 cache (``CPU_CHUNK_BYTES``), each chunk
with single-threaded ops; with T intra-op threads configured, T Python threads take chunks in
parallel (see ``_single_threaded_ops``). On CUDA the batch goes whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.augment.inputs import checked_apply, to_rgb
from fastclr.augment.params import AugmentConfig, AugmentParams, JitterOp
from fastclr.augment.reference import GRAY_WEIGHTS, gaussian_taps

__all__ = ["apply_torch"]

_Op = Callable[..., Tensor]


def _dense_nhwc(imgs: Tensor | list[Tensor]) -> Tensor:
    """uint8 (N, Hmax, Wmax, 3) RGB copy of the sources (ragged ones zero-padded)."""
    if isinstance(imgs, Tensor):
        return to_rgb(imgs)
    hmax = max(t.shape[0] for t in imgs)
    wmax = max(t.shape[1] for t in imgs)
    out = torch.zeros((len(imgs), hmax, wmax, 3), dtype=torch.uint8, device=imgs[0].device)
    for i, t in enumerate(imgs):
        out[i, : t.shape[0], : t.shape[1]] = to_rgb(t)
    return out


def _dense_planar(imgs: Tensor | list[Tensor]) -> Tensor:
    """uint8 (N, 3, Hmax, Wmax) planar copy of the sources (ragged ones zero-padded)."""
    return _dense_nhwc(imgs).permute(0, 3, 1, 2).contiguous()


def _axis(start: Tensor, length: Tensor, s: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis (align_corners=False, clamped to the crop).

    Returns absolute source indices lo, hi (N, S) int64 and the weight of hi (N, S) float32.
    The coordinate is computed in float64 (as ``F.interpolate`` on the float64 reference).
    """
    o = torch.arange(s, dtype=torch.float64, device=start.device) + 0.5
    length = length.to(torch.float64).unsqueeze(1)
    pos = (o * (length / s) - 0.5).clamp_min(0.0)
    lo = pos.floor()
    w = (pos - lo).float()
    hi = torch.minimum(lo + 1, length - 1)
    base = start.long().unsqueeze(1)
    return lo.long() + base, hi.long() + base, w


def _crop_taps(
    params: AugmentParams, s: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Row and column bilinear taps of every crop box, the flip folded into the column taps."""
    y0, x0, h, w = params.crop.unbind(1)
    ylo, yhi, wy = _axis(y0, h, s)
    xlo, xhi, wx = _axis(x0, w, s)
    flip = params.flip.unsqueeze(1)
    xlo = torch.where(flip, xlo.flip(1), xlo)
    xhi = torch.where(flip, xhi.flip(1), xhi)
    wx = torch.where(flip, wx.flip(1), wx)
    return ylo, yhi, wy, xlo, xhi, wx


#: Sources at most this many pixels on a side are resized by two matmuls with the (sparse,
#: stored dense) bilinear matrices, Ry · X · Rxᵀ: for 32-px images ~6x faster than the gathers
#: (measured, 1 thread); for 288-px sources the gathers win (the matmul does ~H/2 times the work).
MATMUL_RESIZE_MAX_SIDE = 64


def _interp_matrix(lo: Tensor, hi: Tensor, w: Tensor, length: int, scale: float) -> Tensor:
    """(N, S, length) matrix whose row i holds scale·(1 − w) at lo[i] and scale·w at hi[i]."""
    n, s = lo.shape
    m = torch.zeros((n, s, length), dtype=torch.float32, device=lo.device)
    m.scatter_add_(2, lo.unsqueeze(2), ((1.0 - w) * scale).unsqueeze(2))
    return m.scatter_add_(2, hi.unsqueeze(2), (w * scale).unsqueeze(2))


def _crop_resize(src: Tensor, params: AugmentParams, s: int, matmul: bool | None = None) -> Tensor:
    """uint8 planar (N, 3, H, W) → float32 (N, 3, S, S) in [0, 1], flip included.

    ``matmul``: resize by bilinear matrices (True) or row/column gathers (False); None picks by
    :data:`MATMUL_RESIZE_MAX_SIDE`. Both compute the same bilinear weights.
    """
    n, _, hgt, wid = src.shape
    ylo, yhi, wy, xlo, xhi, wx = _crop_taps(params, s)
    if matmul is None:
        matmul = max(hgt, wid) <= MATMUL_RESIZE_MAX_SIDE
    if matmul:
        ry = _interp_matrix(ylo, yhi, wy, hgt, 1.0 / 255.0).unsqueeze(1)  # (N, 1, S, H)
        rx = _interp_matrix(xlo, xhi, wx, wid, 1.0).unsqueeze(1)  # (N, 1, S, W)
        return torch.matmul(torch.matmul(ry, src.float()), rx.transpose(-1, -2))

    rows = src.view(n * 3 * hgt, wid)
    plane = (torch.arange(n * 3, device=src.device) * hgt).view(n, 3, 1)
    top = rows.index_select(0, (plane + ylo.unsqueeze(1)).view(-1)).view(n, 3, s, wid)
    bot = rows.index_select(0, (plane + yhi.unsqueeze(1)).view(-1)).view(n, 3, s, wid)
    # Row lerp straight from uint8 (the multiply promotes to float32), 1/255 in the weights.
    wy = wy.view(n, 1, s, 1)
    inter = torch.mul(top, (1.0 - wy) / 255.0).addcmul_(bot, wy / 255.0)
    cols = torch.cat([xlo, xhi], dim=1).view(n, 1, 1, 2 * s).expand(n, 3, s, 2 * s)
    g = inter.gather(3, cols)
    return torch.lerp(g[..., :s], g[..., s:], wx.view(n, 1, 1, s))


def _gray(x: Tensor) -> Tensor:
    """(n, 3, S, S) → (n, 1, S, S) luma."""
    r, g, b = x.unbind(1)
    return (
        (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])[:, None]
    )


def _col(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """Hue rotation with torchvision's HSV convention, without building HSV explicitly.

    h6 ∈ [0, 6) is the hue in sixths (the channel holding the max decides, R before G before B);
    the output channel c is V − C·clamp(min(k, 4 − k), 0, 1) with k = (n_c + h6') mod 6,
    n = 5, 3, 1 for R, G, B, and C = max − min: the closed form of the sector table.
    """
    r, g, b = x.unbind(1)
    v = x.amax(1)
    c = v - x.amin(1)
    cs = c.clamp_min(1e-12)  # c = 0 ⇒ all channels equal ⇒ numerators 0 and C·(…) = 0
    # h6 + 6·shift, built in place: the sector offset (0, 2, 4) plus (difference / chroma).
    is_r, is_g = v == r, v == g
    h6 = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g)).div_(cs)
    h6 += torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    h6 += shift.view(-1, 1, 1) * 6.0
    # All three channels at once: k = (n_c + h6') mod 6 with n = (5, 3, 1) for (R, G, B).
    n_c = torch.arange(5.0, 0.0, -2.0, dtype=h6.dtype, device=h6.device).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + n_c, 6.0)
    t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = torch.addcmul(v.unsqueeze(1), t, c.unsqueeze(1), value=-1.0)
    # No clamp needed: v − c·t with t ∈ [0, 1] lies in [min, max] ⊂ [0, 1] (fp subtraction is
    # monotone and c = fl(v − min) ≤ v).
    return out


def _masked(x: Tensor, mask: Tensor, fn: _Op, *args: Tensor) -> Tensor:
    """x with ``fn(x[i], args[i])`` for the images where ``mask``; per-image ``args`` (n,)."""
    if x.is_cuda:  # no host sync: compute on all, select
        return torch.where(_col(mask), fn(x, *args), x)
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, *args)
    # Advanced indexing, not index_select: on CPU, index_select of whole (3, S, S) slices went
    # element by element here, ~40x slower than the memcpy-based x[idx].
    return x.index_put_((idx,), fn(x[idx], *(a[idx] for a in args)))


def _to_gray3(x: Tensor) -> Tensor:
    return _gray(x).expand(-1, 3, -1, -1).contiguous()


def _blur_matrix(sigma: Tensor, k: int, s: int) -> Tensor:
    """(n,) σ → (n, S, S) matrices B with (B @ v)[i] = Σ_t taps[t] · v[reflect(i + t − k//2)].

    Reflect padding (edge not repeated) folded into a dense matrix: the blur of an image is then
    B @ x @ Bᵀ, two batched matmuls, much faster on CPU than a per-image grouped conv.
    """
    n = sigma.shape[0]
    taps = gaussian_taps(sigma.to(torch.float64), k).to(torch.float32)  # (n, k)
    i = torch.arange(s, device=sigma.device).view(s, 1)
    j = i + torch.arange(k, device=sigma.device).view(1, k) - k // 2
    j = torch.where(j < 0, -j, j)
    j = torch.where(
        j > s - 1, 2 * (s - 1) - j, j
    )  # (S, k); one reflection suffices: k//2 ≈ S/20 < S
    b = torch.zeros((n, s, s), dtype=torch.float32, device=sigma.device)
    src = taps.view(n, 1, k).expand(n, s, k)
    return b.scatter_add_(2, j.expand(n, s, k), src)


def _blur(x: Tensor, sigma: Tensor, k: int) -> Tensor:
    s = x.shape[-1]
    b = _blur_matrix(sigma, k, s).unsqueeze(1)  # (n, 1, S, S)
    return torch.matmul(torch.matmul(b, x), b.transpose(-1, -2))


def _solarize(x: Tensor, threshold: float) -> Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


#: Working-set budget of one chunk of images (float32 (G, 3, S, S) plus temporaries). Every
#: pixel op streams over the chunk, so a chunk that stays in the CPU's L2 cache makes the ~60
#: elementwise passes cache-resident: measured ~10x faster per pass than full-batch passes for
#: 64×224² on this EPYC. 224-px images go one at a time, 32-px ones ~80 at a time.
CPU_CHUNK_BYTES = 1 << 20


def _chunk_size(n: int, s: int, workers: int) -> int:
    """Images per chunk: fits ``CPU_CHUNK_BYTES`` and gives every worker at least one chunk."""
    return max(1, min(-(-n // workers), CPU_CHUNK_BYTES // (3 * s * s * 4)))


@contextlib.contextmanager
def _single_threaded_ops() -> Iterator[int]:
    """Run torch ops single-threaded inside; yields the caller's intra-op thread count.

    The CPU path parallelises over image chunks with that many Python threads instead (torch
    releases the GIL inside ops). Measured on a shared 2-core box: every op being an OpenMP
    region made 2 threads 50-80x slower than 1 (barriers waiting on descheduled threads), while
    independent chunks per worker never wait on each other. ``torch.set_num_threads`` is
    process-wide, so other threads see 1 intra-op thread until this call returns.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def _blend_step(x: Tensor, params: AugmentParams, op: Tensor) -> Tensor:
    """One jitter step's brightness, contrast and saturation for every image at once.

    All three are x ← clamp(a·x + (1 − a)·b) with b = 0, mean(gray(x)) or gray(x), so one
    formula with per-image coefficients covers them: a = the step's factor (1 when the step is
    hue or the jitter is off), bias = (1 − a)·mean for contrast, cg = (1 − a) for saturation.
    For an image with a = 1, bias = cg = 0 the result is exactly x. No subset copies, ~6 ops.
    Updates ``x`` (the chunk's own working tensor) in place and returns it.
    """
    on = params.jitter_apply
    is_b, is_c, is_s = (
        on & (op == JitterOp.BRIGHTNESS),
        on & (op == JitterOp.CONTRAST),
        on & (op == JitterOp.SATURATION),
    )
    if not x.is_cuda and not bool((is_b | is_c | is_s).any()):
        return x
    # Per-image scalars broadcast over (n, 3·S·S) views: measured ~2x faster than over (n, 1, 1, 1).
    n = x.shape[0]
    one = torch.ones_like(params.brightness)
    a = torch.where(is_b, params.brightness, torch.where(is_c, params.contrast, one))
    a = torch.where(is_s, params.saturation, a).view(n, 1)
    y = x.view(n, -1)
    if x.is_cuda or bool((is_c | is_s).any()):
        gray = _gray(x).view(n, 1, -1)  # of the input, before the in-place update
        m = gray.mean(dim=2)  # (n, 1)
        y.mul_(a).add_(m * (is_c.view(n, 1) * (1.0 - a)))
        y.view(n, 3, -1).addcmul_(gray, (is_s.view(n, 1) * (1.0 - a)).unsqueeze(2))
    else:
        y.mul_(a)
    return y.clamp_(0.0, 1.0).view_as(x)


def _crop_resize_each(imgs: Tensor | list[Tensor], params: AugmentParams, s: int) -> Tensor:
    """CPU, large sources: per image ``F.interpolate`` of the float crop (what the reference does).

    The NHWC source slice is already channels_last, where ATen's bilinear kernel is fastest
    (measured 0.46 ms for 224² from a 200² crop vs 2.6 ms for the row/column gathers); the flip,
    the 1/255 scale and the move to planar layout are one write into the output.
    """
    n = len(imgs)
    x = torch.empty((n, 3, s, s), dtype=torch.float32, device=params.device)
    boxes = params.crop.tolist()
    flips = params.flip.tolist()
    for i in range(n):
        y0, x0, h, w = boxes[i]
        crop = to_rgb(imgs[i]).permute(2, 0, 1)[None, :, y0 : y0 + h, x0 : x0 + w]
        r = F.interpolate(
            crop.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=False
        )
        torch.mul(r.flip(3) if flips[i] else r, 1.0 / 255.0, out=x[i : i + 1])
    return x


def _crop_resize_nhwc(imgs: Tensor | list[Tensor], params: AugmentParams, s: int) -> Tensor:
    """CPU, small sources: Ry · X · Rxᵀ on the NHWC source, as two plain (unbroadcast) bmm.

    Rows first on X viewed as (H, 3W), then one transposing copy to (3S, W) and the columns: no
    planar uint8 copy of the source and no expanded copies of Ry/Rx that a broadcast matmul over
    (N, 3, …) makes.
    """
    src = _dense_nhwc(imgs)
    n, hgt, wid, _ = src.shape
    ylo, yhi, wy, xlo, xhi, wx = _crop_taps(params, s)
    ry = _interp_matrix(ylo, yhi, wy, hgt, 1.0 / 255.0)  # (N, S, H)
    rx = _interp_matrix(xlo, xhi, wx, wid, 1.0)  # (N, S, W)
    rows = torch.bmm(ry, src.reshape(n, hgt, wid * 3).float())  # (N, S, 3W), pixel-major
    planar = rows.view(n, s, wid, 3).permute(0, 3, 1, 2).reshape(n, 3 * s, wid)
    return torch.bmm(planar, rx.transpose(1, 2)).view(n, 3, s, s)


def _augment_chunk(x: Tensor, params: AugmentParams, config: AugmentConfig) -> Tensor:
    """Resized float32 (G, 3, S, S) in [0, 1] + its params → the view before normalisation."""
    for step in range(4):
        op = params.order[:, step]
        x = _blend_step(x, params, op)
        x = _masked(x, params.jitter_apply & (op == JitterOp.HUE), _hue, params.hue)
    x = _masked(x, params.gray, _to_gray3)
    if config.blur_kernel_size > 1:
        k = config.blur_kernel_size
        x = _masked(x, params.blur_apply, lambda t, sg: _blur(t, sg, k), params.sigma)
    return _masked(x, params.solarize, lambda t: _solarize(t, config.solarize_threshold))


@checked_apply
def apply_torch(
    imgs: Tensor | list[Tensor], params: AugmentParams, config: AugmentConfig
) -> Tensor:
    """Apply ONE view's ``params`` to ``images``; same contract as ``apply_reference``.

    Called as ``apply_torch(images, params, config, *, layout=None, validate=True)``
    (:func:`~fastclr.augment.inputs.checked_apply`). ``validate=True`` checks ``params`` by the
    shared rule (:meth:`AugmentParams.validate`, a host sync); ``SimCLRAugmentation`` passes
    False for the parameters it draws itself.
    """
    n = len(params)
    dev = imgs.device if isinstance(imgs, Tensor) else imgs[0].device
    s = config.size
    out = torch.empty(
        (n, 3, s, s), dtype=config.dtype, device=dev, memory_format=torch.channels_last
    )
    # Normalisation is fused into the write of the channels_last output: one pass.
    std = torch.tensor(config.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    mean = torch.tensor(config.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    scale, bias = 1.0 / std, -mean / std

    def run(a: int, b: int) -> None:
        part = imgs[a:b]
        p = params.select(slice(a, b))
        src_side = max(max(t.shape[-3], t.shape[-2]) for t in part)
        if dev.type == "cpu" and src_side > MATMUL_RESIZE_MAX_SIDE:
            x = _crop_resize_each(part, p, s)
        elif dev.type == "cpu":
            x = _crop_resize_nhwc(part, p, s)
        else:
            x = _crop_resize(_dense_planar(part), p, s)
        torch.addcmul(bias, _augment_chunk(x, p, config), scale, out=out[a:b])

    if dev.type != "cpu":  # one batched launch per op; no host sync on CUDA
        run(0, n)
        return out
    with _single_threaded_ops() as workers:
        g = _chunk_size(n, s, workers)
        spans = [(a, min(a + g, n)) for a in range(0, n, g)]
        if workers == 1 or len(spans) == 1:
            for a, b in spans:
                run(a, b)
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(spans))) as pool:
                for f in [pool.submit(run, a, b) for a, b in spans]:
                    f.result()
    return out
