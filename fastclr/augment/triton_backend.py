"""Launcher for the fused Triton augmentation kernel (``fastclr.kernels.triton.augment``).

One launch sequence applies crop + bilinear resize + flip + colour jitter (per-image drawn order)
+ grayscale + Gaussian blur + solarize + normalise + cast for every view of a batch, reading the
uint8 sources once per output pixel and writing (R, 3, S, S) channels_last output directly. The
maths is :func:`fastclr.augment.reference.apply_reference`'s, evaluated in fp32.

Tolerance against the float64 reference for the same parameters (tests/test_augment_triton.py),
per element: 2 × the error of casting the reference itself to the output dtype +
:data:`fastclr.testing.AUGMENT_ATOL` (1e-3 normalised), the contract every augmentation backend
shares (:mod:`fastclr.testing` states the rule). Observed: about 5e-6 in float32, from fp32
rounding of the bilinear weights, HSV round trip and blur taps.

Passes (details in the kernel module's header): (1) per-row mean of gray(x) just before the
contrast step, as partial sums over chunks of the row, recomputing the pixel-wise ops that
precede contrast in that row's order, so the torchvision semantics hold exactly for every order;
(2) colour pass; (3) two separable blur passes through an fp32 scratch whenever the blur kernel
side ``config.blur_kernel_size`` is > 1 (rows without ``blur_apply`` are copied through: which
rows blur is only known on the device, and reading it back would be a host sync). With a side of
1 the colour pass writes the output.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter; how
CI tests it). This module imports triton, so set the variable before importing it. No host
synchronisation: sizes come from Python shapes, parameters stay on the device.

Timing (e.g. from bench/throughput.py): ``apply_triton_views(images, [p1, p2], config)`` on a
CUDA uint8 batch after one warm-up call, bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from fastclr.augment.inputs import (
    Images,
    check_apply_args,
    check_images,
    checked_apply,
    images_device,
)
from fastclr.augment.params import AugmentConfig, AugmentParams, JitterOp

# Imported at module level on purpose: SimCLRAugmentation(backend="auto") imports this module
# lazily and falls back to the torch backend when that import (i.e. triton) fails.
from fastclr.kernels.triton.augment import (
    augment_blur_kernel,
    augment_color_kernel,
    augment_contrast_mean_kernel,
)

__all__ = ["apply_triton", "apply_triton_views", "pack_sources"]

#: Output pixels per program in the colour and blur passes: 256 px × 3 channels keeps 4 warps busy
#: on the gathers without spilling the fp32 RGB/HSV temporaries.
BLOCK_PIXELS = 256
#: Output pixels per program of the contrast-mean pass: 49 partial sums per row at S = 224, so
#: even a small batch fills the GPU while the colour pass's partial-sum load stays tiny.
BLOCK_MEAN = 1024
#: Under the interpreter every program is a Python call: one big block per row is much faster.
BLOCK_INTERPRETED = 4096
#: Number of float32 columns of the kernel's per-row parameter table (kernel PRM_COLS).
_PRM_COLS = 19


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def pack_sources(images: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
    """Sources as one flat uint8 buffer plus an (N, 4) int64 table (byte offset, H, W, C).

    A dense contiguous (N, H, W, C) batch is used in place (a view, no copy); a ragged list is
    concatenated once. Nothing is read back to the host.
    """
    if isinstance(images, Tensor):
        flat = images.contiguous().view(-1)
        n, h, w, c = images.shape
        dev = images.device
        table = torch.empty((n, 4), dtype=torch.int64, device=dev)
        table[:, 0] = torch.arange(n, dtype=torch.int64, device=dev) * (h * w * c)
        table[:, 1] = h
        table[:, 2] = w
        table[:, 3] = c
        return flat, table
    rows = []
    offset = 0
    for t in images:
        h, w, c = t.shape
        rows.append([offset, h, w, c])
        offset += h * w * c
    flat = torch.cat([t.contiguous().view(-1) for t in images])
    table = torch.tensor(rows, dtype=torch.int64).to(flat.device, non_blocking=True)
    return flat, table


def _param_table(params: AugmentParams) -> Tensor:
    """(N, 19) float32 table in the kernel's PRM_* column order."""
    order = params.order.long()
    contrast_pos = (order == JitterOp.CONTRAST).to(torch.int64).argmax(dim=1)
    cols = [
        params.crop.float(),
        params.flip.float()[:, None],
        params.jitter_apply.float()[:, None],
        params.brightness.float()[:, None],
        params.contrast.float()[:, None],
        params.saturation.float()[:, None],
        params.hue.float()[:, None],
        params.gray.float()[:, None],
        params.blur_apply.float()[:, None],
        params.sigma.float()[:, None],
        params.solarize.float()[:, None],
        contrast_pos.float()[:, None],
        order.float(),
    ]
    table = torch.cat(cols, dim=1).contiguous()
    assert table.shape[1] == _PRM_COLS
    return table


def apply_triton_views(
    images: Images,
    views: Sequence[AugmentParams],
    config: AugmentConfig,
    *,
    layout: str | None = None,
    validate: bool = True,
) -> list[Tensor]:
    """Apply several views' parameters to the same images in one launch sequence.

    Args:
        images: dense uint8 (N, H, W, C) or a sequence of uint8 (H, W, C), C ∈ {1, 3, 4}, on a
            CUDA device (or CPU under TRITON_INTERPRET=1).
        views: one :class:`AugmentParams` of N images per view (moved to the images' device).
        config: output size, blur kernel size, solarize threshold, mean/std, dtype.
        layout: None, "NHWC" or "NCHW" (:func:`~fastclr.augment.inputs.check_images`).
        validate: check every view by :meth:`AugmentParams.validate` (a host sync; False for
            parameters drawn by ``sample_params``).

    Returns:
        One (N, 3, S, S) tensor per view in ``config.dtype``, channels_last memory format (slices
        of one (V·N, 3, S, S) buffer).

    With ``validate=False`` nothing is checked on the host: an order that is not a permutation
    gives undefined colours, an out-of-source crop box reads clamped pixels, never out of bounds.
    """
    imgs = check_images(images, layout)
    dev = images_device(imgs)
    views = _checked_views(imgs, dev, views, validate)
    n = imgs.shape[0] if isinstance(imgs, Tensor) else len(imgs)
    src, img_table = pack_sources(imgs)
    prm = torch.cat([_param_table(p.to(dev)) for p in views]).contiguous()
    img_rows = img_table.repeat(len(views), 1).contiguous()
    out_nhwc = _launch(src, img_rows, prm, config)
    out = out_nhwc.permute(0, 3, 1, 2)  # (R, 3, S, S) with channels_last strides, no copy
    return list(out.split(n, dim=0))


def _checked_views(
    imgs: Tensor | list[Tensor],
    dev: torch.device,
    views: Sequence[AugmentParams],
    validate: bool,
) -> list[AugmentParams]:
    """The views checked against ``imgs`` (one clear error for a wrong device, count or value)."""
    if not (dev.type == "cuda" or (dev.type == "cpu" and _interpreting())):
        raise RuntimeError(
            f"the Triton augmentation backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
            f"tensors), got images on {dev}; use backend='torch' or 'reference' on the CPU"
        )
    n = imgs.shape[0] if isinstance(imgs, Tensor) else len(imgs)
    if len(views) == 0:
        raise ValueError("views is empty: pass at least one AugmentParams")
    for v, p in enumerate(views):
        if len(p) != n:
            raise ValueError(f"views[{v}] has {len(p)} images, images has {n}")
    return [check_apply_args(imgs, p, layout="NHWC", validate=validate)[1] for p in views]


def _blocks(npix: int) -> tuple[int, int]:
    """(pixels per program, pixels per mean program) for images of ``npix`` pixels."""
    if _interpreting():
        block = min(BLOCK_INTERPRETED, max(16, _next_pow2(npix)))
        return block, block
    return BLOCK_PIXELS, BLOCK_MEAN


def _launch(src: Tensor, img_rows: Tensor, prm: Tensor, config: AugmentConfig) -> Tensor:
    """Run the mean, colour and (if ``config.blur_kernel_size`` > 1) two blur kernels.

    ``prm`` holds one parameter row per output image and ``img_rows`` its source's row of the
    :func:`pack_sources` table; returns the (rows, S, S, 3) output in ``config.dtype``.
    """
    dev, rows, s, k = prm.device, prm.shape[0], config.size, config.blur_kernel_size
    blur = k > 1  # as the reference: blur_apply decides per row, whatever config.blur_p says
    out_nhwc = torch.empty((rows, s, s, 3), dtype=config.dtype, device=dev)
    # the tail every kernel applies: solarize threshold, then normalisation by mean and std
    tail = (
        float(config.solarize_threshold),
        *(float(x) for x in config.mean),
        *(float(x) for x in config.std),
    )
    npix = s * s
    block, block_mean = _blocks(npix)
    grid = (rows * ((npix + block - 1) // block),)  # 1-D: rows are not capped at 65,535
    n_chunks = (npix + block_mean - 1) // block_mean
    partials = torch.empty((rows, n_chunks), dtype=torch.float32, device=dev)
    augment_contrast_mean_kernel[(rows * n_chunks,)](
        src, img_rows, prm, partials, s, n_chunks, BLOCK=block_mean
    )
    colour_out = (
        out_nhwc if not blur else torch.empty(out_nhwc.shape, dtype=torch.float32, device=dev)
    )
    augment_color_kernel[grid](
        src,
        img_rows,
        prm,
        partials,
        colour_out,
        s,
        n_chunks,
        *tail,
        FUSE_TAIL=not blur,
        CHUNKS=_next_pow2(n_chunks),
        BLOCK=block,
    )
    if not blur:
        return out_nhwc
    between = torch.empty_like(colour_out)
    for axis, (src_, dst) in enumerate(((colour_out, between), (between, out_nhwc))):
        augment_blur_kernel[grid](
            src_,
            prm,
            dst,
            s,
            *tail,
            RADIUS=k // 2,
            AXIS=axis,
            FINISH=axis == 1,
            BLOCK=block,
        )
    return out_nhwc


@checked_apply
def apply_triton(
    imgs: Tensor | list[Tensor], params: AugmentParams, config: AugmentConfig
) -> Tensor:
    """One view: same contract as :func:`fastclr.augment.reference.apply_reference`.

    Called as ``apply_triton(images, params, config, *, layout=None, validate=True)``
    (:func:`~fastclr.augment.inputs.checked_apply`: the arguments are checked there once).
    """
    return apply_triton_views(imgs, [params], config, layout="NHWC", validate=False)[0]


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())
