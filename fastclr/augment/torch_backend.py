"""The batched torch backend (``backend="torch"``): the reference's maths, vectorised, in float32.

Same semantics as :func:`fastclr.augment.reference.apply_reference` for the same parameters; it
differs only by float32 rounding (see ``tests/test_augment.py`` for the tolerance). Layout of the
work: the uint8 source goes planar (N·3·H rows of W bytes), then

1. crop + resize, separable: gather the two source rows of every output row (``index_select`` of
   whole rows: a memcpy), lerp in float32 → (N, 3, S, W); gather the two columns of every output
   column (``gather``), lerp → (N, 3, S, S). The flip is folded into the column indices. Ragged
   batches are first copied into one zero-padded dense tensor (the padding is never read: indices
   stay inside each crop box).
2. colour jitter in four rounds: in round k every image with ``jitter_apply`` applies op
   ``order[:, k]``. On CPU each op runs on the subset of images that need it (``x[idx]`` /
   ``index_put_``); on CUDA it runs on the whole batch behind a mask (``torch.where``), so there
   is no host sync (the fused Triton backend is the fast CUDA path).
3. grayscale, blur (per-image Gaussian taps, separable grouped ``conv2d`` with reflect padding) and
   solarize, each on its subset; then normalise and write (N, 3, S, S) channels_last in
   ``config.dtype``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.augment.inputs import Images, check_images, to_rgb
from fastclr.augment.params import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    AugmentConfig,
    AugmentParams,
)
from fastclr.augment.reference import GRAY_WEIGHTS, gaussian_taps

__all__ = ["apply_torch"]

_Op = Callable[..., Tensor]


def _dense_planar(imgs: Tensor | list[Tensor]) -> Tensor:
    """uint8 (N, 3, Hmax, Wmax) planar copy of the sources (ragged ones zero-padded)."""
    if isinstance(imgs, Tensor):
        return to_rgb(imgs).permute(0, 3, 1, 2).contiguous()
    hmax = max(t.shape[0] for t in imgs)
    wmax = max(t.shape[1] for t in imgs)
    out = torch.zeros((len(imgs), 3, hmax, wmax), dtype=torch.uint8, device=imgs[0].device)
    for i, t in enumerate(imgs):
        out[i, :, : t.shape[0], : t.shape[1]] = to_rgb(t).permute(2, 0, 1)
    return out


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


def _crop_resize(src: Tensor, params: AugmentParams, s: int) -> Tensor:
    """uint8 planar (N, 3, H, W) → float32 (N, 3, S, S) in [0, 1], flip included."""
    n, _, hgt, wid = src.shape
    y0, x0, h, w = params.crop.unbind(1)
    ylo, yhi, wy = _axis(y0, h, s)
    xlo, xhi, wx = _axis(x0, w, s)
    flip = params.flip.unsqueeze(1)
    xlo = torch.where(flip, xlo.flip(1), xlo)
    xhi = torch.where(flip, xhi.flip(1), xhi)
    wx = torch.where(flip, wx.flip(1), wx)

    rows = src.view(n * 3 * hgt, wid)
    plane = (torch.arange(n * 3, device=src.device) * hgt).view(n, 3, 1)
    idx = torch.cat([(plane + ylo.unsqueeze(1)).view(-1), (plane + yhi.unsqueeze(1)).view(-1)])
    both = rows.index_select(0, idx).to(torch.float32).view(2, n, 3, s, wid)
    # 1/255 folded into the row weights: lerp(a, b, t)/255 = a/255 + t·(b − a)/255.
    inter = torch.lerp(both[0], both[1], wy.view(n, 1, s, 1)).mul_(1.0 / 255.0)
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


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * _col(f)).clamp_(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _col(f)
    return (x * f).add_(m * (1.0 - f)).clamp_(0.0, 1.0)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    f = _col(f)
    return (x * f).add_(_gray(x) * (1.0 - f)).clamp_(0.0, 1.0)


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
    h6 = torch.where(
        v == r,
        (g - b) / cs,
        torch.where(v == g, (b - r).div_(cs).add_(2.0), (r - g).div_(cs).add_(4.0)),
    )
    h6 = h6.add_(_col(shift).squeeze(1) * 6.0)
    out = torch.empty_like(x)
    for ch, n_c in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(h6 + n_c, 6.0)
        t = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(v, t.mul_(c), out=out[:, ch])
    return out.clamp_(0.0, 1.0)


_JITTER: dict[int, _Op] = {
    BRIGHTNESS: _brightness,
    CONTRAST: _contrast,
    SATURATION: _saturation,
    HUE: _hue,
}


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


def _blur(x: Tensor, sigma: Tensor, k: int) -> Tensor:
    n, c, s, _ = x.shape
    taps = gaussian_taps(sigma.to(torch.float64), k).to(x.dtype)  # (n, k)
    w = taps.repeat_interleave(c, dim=0)  # (n·c, k)
    p = k // 2
    y = F.pad(x, (0, 0, p, p), mode="reflect").view(1, n * c, s + 2 * p, s)
    y = F.conv2d(y, w.view(n * c, 1, k, 1), groups=n * c).view(n, c, s, s)
    y = F.pad(y, (p, p, 0, 0), mode="reflect").view(1, n * c, s, s + 2 * p)
    return F.conv2d(y, w.view(n * c, 1, 1, k), groups=n * c).view(n, c, s, s)


def _solarize(x: Tensor, threshold: float) -> Tensor:
    return torch.where(x >= threshold, 1.0 - x, x)


def apply_torch(images: Images, params: AugmentParams, config: AugmentConfig) -> Tensor:
    """Apply ONE view's ``params`` to ``images``; same contract as ``apply_reference``.

    Does not re-check that the crop boxes fit their sources (``AugmentParams.check_crop`` does;
    :class:`~fastclr.augment.SimCLRAugmentation.apply` calls it for user-given parameters).
    """
    imgs = check_images(images)
    n = imgs.shape[0] if isinstance(imgs, Tensor) else len(imgs)
    if len(params) != n:
        raise ValueError(f"params has {len(params)} images, images has {n}")
    src = _dense_planar(imgs)
    params = params.to(src.device)
    x = _crop_resize(src, params, config.size)

    order = params.order
    for step in range(4):
        for op, fn in _JITTER.items():
            mask = params.jitter_apply & (order[:, step] == op)
            factor = (params.brightness, params.contrast, params.saturation, params.hue)[op]
            x = _masked(x, mask, fn, factor)
    x = _masked(x, params.gray, _to_gray3)
    if config.blur_kernel_size > 1:
        k = config.blur_kernel_size
        x = _masked(x, params.blur_apply, lambda t, sg: _blur(t, sg, k), params.sigma)
    x = _masked(x, params.solarize, lambda t: _solarize(t, config.solarize_threshold))

    std = torch.tensor(config.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    mean = torch.tensor(config.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.sub_(mean).div_(std)
    out = torch.empty(
        (n, 3, config.size, config.size),
        dtype=config.dtype,
        device=x.device,
        memory_format=torch.channels_last,
    )
    return out.copy_(x)
