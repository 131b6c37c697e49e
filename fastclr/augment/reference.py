"""The definition of the SimCLR augmentation: a plain, per-image, float64 torch implementation.

Every fast backend is tested against :func:`apply_reference` for the same
:class:`~fastclr.augment.params.AugmentParams`. It is written to be read, not to be fast.

For each image (pixel values in [0, 1] after uint8 / 255), in this order:

1. **crop + resize**: ``x = F.interpolate(src[:, y0:y0+h, x0:x0+w], (S, S), mode="bilinear",
   align_corners=False, antialias=False)``. Plain bilinear sampling — no antialias filter, unlike
   torchvision's tensor default — so that a per-pixel kernel reproduces it exactly: output pixel
   (i, j) samples the crop at sy = max((i + ½)·h/S − ½, 0), sx likewise, between rows ⌊sy⌋ and
   min(⌊sy⌋ + 1, h − 1) (columns likewise) with weights from the fractional part. Sources smaller
   than S are upsampled by the same rule.
2. **flip**: reverse the columns.
3. **colour jitter** (when ``jitter_apply``): the four ops in ``order``, torchvision ColorJitter
   semantics, each followed by clamp to [0, 1]:
   brightness x·f; contrast f·x + (1 − f)·mean(gray(x)) (mean over the image at that step);
   saturation f·x + (1 − f)·gray(x); hue: RGB → HSV (torchvision's ``_rgb2hsv``: hue in turns,
   0 for gray pixels), h ← (h + shift) mod 1, HSV → RGB.
4. **grayscale**: gray(x) = 0.299 R + 0.587 G + 0.114 B (ITU-R 601; torchvision uses 0.2989 for
   R) in all three channels.
5. **blur**: separable Gaussian, side k = ``config.blur_kernel_size`` (10% of S, forced odd), taps
   exp(−t²/2σ²) for t = −(k−1)/2 … (k−1)/2 normalised to sum 1, reflect padding (``"reflect"``,
   the edge pixel not repeated), rows then columns.
6. **solarize**: x ← 1 − x where x ≥ threshold.
7. **normalise**: (x − mean) / std; output (N, 3, S, S), channels_last, ``config.dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.augment.inputs import Images, check_apply_args, images_device, to_rgb
from fastclr.augment.params import AugmentConfig, AugmentParams, JitterOp

__all__ = [
    "GRAY_WEIGHTS",
    "apply_reference",
    "gaussian_taps",
    "hsv_to_rgb",
    "rgb_to_gray",
    "rgb_to_hsv",
]

#: ITU-R BT.601 luma weights (R, G, B).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def rgb_to_gray(x: Tensor) -> Tensor:
    """(…, 3, H, W) → (…, 1, H, W) luma with :data:`GRAY_WEIGHTS`."""
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(…, 3, H, W) RGB in [0, 1] → HSV with hue in turns [0, 1) (torchvision's convention).

    V = max, S = (max − min)/max (0 where max = 0), hue from the channel holding the max with ties
    resolved R before G before B; hue is 0 where max = min.
    """
    r, g, b = x.unbind(-3)
    maxc = x.amax(-3)
    minc = x.amin(-3)
    chroma = maxc - minc
    flat = chroma == 0
    sat = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    c = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / c, (maxc - g) / c, (maxc - b) / c
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h6 = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h6 / 6.0, 1.0)
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([h, sat, maxc], dim=-3)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv` (hue in turns), textbook sector formula."""
    h, s, v = x.unbind(-3)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    sector = torch.remainder(i, 6).long()
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    # Per sector 0..5: (R, G, B) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    table = torch.stack(
        [
            torch.stack([v, t, p], -3),
            torch.stack([q, v, p], -3),
            torch.stack([p, v, t], -3),
            torch.stack([p, q, v], -3),
            torch.stack([t, p, v], -3),
            torch.stack([v, p, q], -3),
        ],
        dim=0,
    )
    idx = sector.unsqueeze(0).unsqueeze(-3).expand(1, *x.shape)
    return table.gather(0, idx).squeeze(0)


def gaussian_taps(sigma: Tensor, k: int) -> Tensor:
    """(…,) σ → (…, k) normalised Gaussian taps at offsets −(k−1)/2 … (k−1)/2."""
    t = torch.arange(k, dtype=sigma.dtype, device=sigma.device) - (k - 1) / 2
    w = torch.exp(-0.5 * (t / sigma.unsqueeze(-1)) ** 2)
    return w / w.sum(-1, keepdim=True)


def _jitter_op(x: Tensor, op: int, f: float) -> Tensor:
    if op == JitterOp.BRIGHTNESS:
        y = x * f
    elif op == JitterOp.CONTRAST:
        y = f * x + (1.0 - f) * rgb_to_gray(x).mean()
    elif op == JitterOp.SATURATION:
        y = f * x + (1.0 - f) * rgb_to_gray(x)
    elif op == JitterOp.HUE:
        hsv = rgb_to_hsv(x)
        hsv = torch.stack([torch.remainder(hsv[0] + f, 1.0), hsv[1], hsv[2]])
        y = hsv_to_rgb(hsv)
    else:  # pragma: no cover - order is validated as a permutation of 0..3
        raise ValueError(f"unknown jitter op {op}")
    return y.clamp(0.0, 1.0)


def _blur(x: Tensor, sigma: float, k: int) -> Tensor:
    if k == 1:
        return x
    taps = gaussian_taps(torch.tensor(sigma, dtype=x.dtype), k)
    pad = k // 2
    c = x.shape[0]
    y = F.pad(x[None], (0, 0, pad, pad), mode="reflect")
    y = F.conv2d(y, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    y = F.pad(y, (pad, pad, 0, 0), mode="reflect")
    y = F.conv2d(y, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return y[0]


def apply_reference(
    images: Images,
    params: AugmentParams,
    config: AugmentConfig,
    upcast: bool = True,
    *,
    layout: str | None = None,
    validate: bool = True,
) -> Tensor:
    """Apply ONE view's ``params`` to ``images`` by the definition (module docstring).

    Args:
        images: dense uint8 (N, H, W, C) or a sequence of uint8 (H, W, C), C ∈ {1, 3, 4}.
        params: N images' parameters (moved to the images' device if needed).
        config: output size, blur kernel size, solarize threshold, mean/std, dtype.
        upcast: compute in float64 (True, the definition) or float32.
        layout: None, "NHWC" or "NCHW" (:func:`~fastclr.augment.inputs.check_images`).
        validate: check ``params`` by :meth:`AugmentParams.validate` (the shared rule).

    Returns:
        (N, 3, S, S) tensor in ``config.dtype``, channels_last memory format.
    """
    imgs, params = check_apply_args(images, params, layout=layout, validate=validate)
    n = len(params)
    dt = torch.float64 if upcast else torch.float32
    s = config.size
    k = config.blur_kernel_size
    p = {name: getattr(params, name).tolist() for name in params.__dataclass_fields__}
    mean = torch.tensor(config.mean, dtype=dt).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=dt).view(3, 1, 1)
    outs = []
    for i in range(n):
        src = to_rgb(imgs[i]).permute(2, 0, 1).to(dt).cpu() / 255.0
        y0, x0, h, w = p["crop"][i]
        x = F.interpolate(
            src[None, :, y0 : y0 + h, x0 : x0 + w],
            size=(s, s),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )[0]
        if p["flip"][i]:
            x = x.flip(-1)
        if p["jitter_apply"][i]:
            factors = (p["brightness"][i], p["contrast"][i], p["saturation"][i], p["hue"][i])
            if sorted(p["order"][i]) != [0, 1, 2, 3]:
                raise ValueError(
                    f"params.order[{i}] = {p['order'][i]} is not a permutation of 0..3"
                )
            for op in p["order"][i]:
                x = _jitter_op(x, op, factors[op])
        if p["gray"][i]:
            x = rgb_to_gray(x).expand(3, s, s)
        if p["blur_apply"][i]:
            x = _blur(x, p["sigma"][i], k)
        if p["solarize"][i]:
            x = torch.where(x >= config.solarize_threshold, 1.0 - x, x)
        outs.append((x - mean) / std)
    out = torch.stack(outs).to(device=images_device(imgs), dtype=config.dtype)
    return out.contiguous(memory_format=torch.channels_last)
