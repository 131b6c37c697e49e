"""The native CPU backend (``backend="native"``): one fused C++ pass per image and view.

Layer two over ``kernels/cpu/augment.h``: packs the :class:`AugmentParams` of one view into the
flat arrays the kernel reads and calls it on uint8 image storage (views in parallel with OpenMP,
``torch.get_num_threads()`` threads). Same maths as
:func:`~fastclr.augment.reference.apply_reference` in float32 (tolerance
:data:`fastclr.testing.AUGMENT_ATOL`). CUDA tensors are not this backend's: ``SimCLRAugmentation``
sends them to the Triton backend.

Two entry points:

- :func:`apply_native`: a dense (N, H, W, C) batch, one view per image;
- :func:`apply_native_sources`: one source image per view row, each of its own size and possibly
  decoded at 1/k of its original size (a JPEG's reduced-scale decode), crop boxes always in
  ORIGINAL pixels. Crop, resize and the rest of the recipe are one pass from the decoded pixels:
  this is what a streaming loader's workers call through :class:`WorkerViews`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from fastclr import _native
from fastclr.augment.inputs import check_images, checked_apply, to_rgb
from fastclr.augment.params import AugmentConfig, AugmentParams, sample_params
from fastclr.augment.reference import gaussian_taps

__all__ = ["WorkerViews", "apply_native", "apply_native_sources", "available"]


def available() -> bool:
    """True when the native library (which holds the augmentation kernel) is loaded."""
    return _native.available()


def _packed(params: AugmentParams, config: AugmentConfig) -> list[Tensor]:
    """crop, flags, factors, order, taps, mean, std: the kernel's flat CPU arrays (augment.h)."""
    p = params.to("cpu")
    flags = torch.stack([p.flip, p.jitter_apply, p.gray, p.blur_apply, p.solarize], 1)
    factors = torch.stack([p.brightness, p.contrast, p.saturation, p.hue], 1)
    taps = gaussian_taps(p.sigma.to(torch.float64), config.blur_kernel_size)
    return [
        p.crop.to(torch.int32).contiguous(),
        flags.to(torch.uint8).contiguous(),
        factors.to(torch.float32).contiguous(),
        p.order.to(torch.int32).contiguous(),
        taps.to(torch.float32).contiguous(),
        torch.tensor(config.mean, dtype=torch.float32),
        torch.tensor(config.std, dtype=torch.float32),
    ]


def _recipe_args(packed: list[Tensor], config: AugmentConfig, out: Tensor) -> tuple[float, ...]:
    """What both view kernels take after their sources (augment.h): the :func:`_packed` arrays,
    K, the solarize threshold, mean, std, S, the (N, S, S, 3) fp32 output and the thread count.
    The caller keeps ``packed`` and ``out`` alive through the call (these are their addresses)."""
    crop, flags, factors, order, taps, mean, std = packed
    return (
        *(t.data_ptr() for t in (crop, flags, factors, order, taps)),
        config.blur_kernel_size,
        float(config.solarize_threshold),
        mean.data_ptr(),
        std.data_ptr(),
        config.size,
        out.data_ptr(),
        torch.get_num_threads(),
    )


def _finish(out: Tensor, config: AugmentConfig) -> Tensor:
    """(N, S, S, 3) fp32 → (N, 3, S, S) channels_last in ``config.dtype``."""
    view = out.permute(0, 3, 1, 2)  # NCHW shape over NHWC memory: channels_last
    return view if config.dtype == torch.float32 else view.to(config.dtype)


@checked_apply
def apply_native(
    imgs: Tensor | list[Tensor], params: AugmentParams, config: AugmentConfig
) -> Tensor:
    """Apply ONE view's ``params`` to a dense uint8 (N, H, W, C) CPU batch.

    Called as ``apply_native(images, params, config, *, layout=None, validate=True)``
    (:func:`~fastclr.augment.inputs.checked_apply`). ``params`` are checked by the shared rule
    (:meth:`AugmentParams.validate`) unless ``validate`` is False; the kernel checks the values
    it indexes with (crop boxes, orders, blur width) again whatever it is given, and refuses with
    ValueError rather than read outside ``images``.
    """
    if not isinstance(imgs, Tensor):
        raise ValueError(
            "backend='native' takes a dense (N, H, W, C) batch; use 'torch' for ragged"
        )
    if imgs.device.type != "cpu":
        raise ValueError(f"backend='native' runs on CPU tensors, images are on {imgs.device}")
    mod = _native.require()
    n = imgs.shape[0]
    src = to_rgb(imgs).contiguous()
    _, h, w, _ = src.shape
    packed = _packed(params, config)  # alive through the call: the kernel reads its storage
    out = torch.empty((n, config.size, config.size, 3), dtype=torch.float32)
    mod.simclr_view_f32(src.data_ptr(), n, h, w, *_recipe_args(packed, config, out))
    return _finish(out, config)


def _check_scales(scales: Sequence[int] | None, n: int) -> list[int]:
    if scales is None:
        return [1] * n
    if len(scales) != n:
        raise ValueError(f"scales has {len(scales)} entries, images has {n}")
    top = int(_native.require().max_decode_scale)
    out = [int(k) for k in scales]
    bad = next((i for i, k in enumerate(out) if not 1 <= k <= top), None)
    if bad is not None:
        raise ValueError(f"scales[{bad}] = {out[bad]} is not a decode scale in [1, {top}]")
    return out


def apply_native_sources(
    images: Sequence[Tensor],
    params: AugmentParams,
    config: AugmentConfig,
    *,
    scales: Sequence[int] | None = None,
    validate: bool = True,
) -> Tensor:
    """One view per row of ``params``, row ``i`` cut from its own source ``images[i]``.

    Crop and resize happen in the kernel, in one pass with the rest of the recipe, so a streaming
    loader hands it the decoded image and never builds an intermediate uint8 crop.

    Args:
        images: N uint8 CPU tensors (H_i, W_i, C), C ∈ {1, 3, 4}; several views of one image pass
            the same tensor several times (no copy is made for contiguous RGB).
        params: N rows; ``params.crop`` in ORIGINAL pixels of each source.
        config: output size, blur kernel, solarize threshold, mean/std, dtype.
        scales: per source, the decode scale k: ``images[i]`` is the original decoded at 1/k
            (libjpeg DCT scaling), and the box's sample positions x map to (x + ½)/k − ½ on it,
            clamped to the image (:mod:`fastclr.data.decode` states the same rule). Default: all 1,
            where the result is :func:`~fastclr.augment.reference.apply_reference`'s.
        validate: check ``params`` by :meth:`AugmentParams.validate` against the original sizes
            (at most k times the decoded ones); the kernel checks the boxes again regardless.

    Returns:
        (N, 3, S, S) channels_last in ``config.dtype``.

    Raises:
        ValueError: a bad image, scale or parameter, naming which.
    """
    imgs = check_images(list(images), layout="NHWC")
    assert isinstance(imgs, list)
    n = len(imgs)
    ks = _check_scales(scales, n)
    if imgs[0].device.type != "cpu":
        raise ValueError(f"backend='native' runs on CPU tensors, images are on {imgs[0].device}")
    if len(params) != n:
        raise ValueError(f"params has {len(params)} views, images has {n}")
    src = [to_rgb(t).contiguous() for t in imgs]
    shapes = torch.tensor([[t.shape[0], t.shape[1], k] for t, k in zip(src, ks, strict=True)])
    if validate:
        params.to("cpu").validate(shapes[:, :2] * shapes[:, 2:])
    mod = _native.require()
    ptrs = torch.tensor([t.data_ptr() for t in src], dtype=torch.int64)
    packed = _packed(params, config)  # alive through the call: the kernel reads its storage
    out = torch.empty((n, config.size, config.size, 3), dtype=torch.float32)
    mod.simclr_view_ragged_f32(
        ptrs.data_ptr(), shapes.data_ptr(), n, *_recipe_args(packed, config, out)
    )
    return _finish(out, config)


class WorkerViews:
    """The finished SimCLR views of decoded images, for a streaming loader's workers.

    Training builds it and hands it to the loader (the loader does not import the augmentation).
    A worker calls it once per batch with the images it decoded and the crop boxes it drew on
    their ORIGINAL sizes; the other parameters (flip, colour, grey, blur, solarize) are drawn
    here by :func:`~fastclr.augment.params.sample_params` from ``seed`` alone, so a batch is the
    same whichever worker makes it and after a resume. Picklable (sent to worker processes).

    Args:
        config: the recipe; its crop settings are the loader's business, the rest is applied here.

    Example:
        >>> finish = WorkerViews(AugmentConfig.imagenet(64))
        >>> views = finish([img_a, img_b], [1, 2], boxes, seed=7)  # boxes: (2, V, 4)
        >>> views.shape  # (V, 2, 3, 64, 64), each view channels_last, config.dtype
    """

    def __init__(self, config: AugmentConfig) -> None:
        if not isinstance(config, AugmentConfig):
            raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
        self.config = config

    def params(self, boxes: np.ndarray, seed: int) -> AugmentParams:
        """The (V·B) view rows for ``boxes`` (B, V, 4), view-major: row v·B + j is image j."""
        b, v = boxes.shape[:2]
        crop = torch.from_numpy(np.ascontiguousarray(boxes.transpose(1, 0, 2)).reshape(v * b, 4))
        g = torch.Generator().manual_seed(int(seed))
        drawn = sample_params(v * b, crop[:, 2:].to(torch.int64), self.config, g)
        return replace(drawn, crop=crop.to(torch.int32))

    def __call__(
        self, images: Sequence[np.ndarray], scales: Sequence[int], boxes: np.ndarray, seed: int
    ) -> Tensor:
        """(V, B, 3, S, S) views of B decoded (H, W, 3) uint8 ``images`` (decoded at 1/scale).

        ``boxes`` is (B, V, 4) int (y0, x0, h, w) in original pixels; ``seed`` an int.
        """
        boxes = np.asarray(boxes)
        if boxes.ndim != 3 or boxes.shape[0] != len(images) or boxes.shape[2] != 4:
            raise ValueError(f"boxes must be ({len(images)}, V, 4), got {boxes.shape}")
        b, v = boxes.shape[:2]
        with warnings.catch_warnings():
            # PIL's arrays are read-only; the kernel only reads its sources
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            srcs = [torch.from_numpy(np.ascontiguousarray(a)) for a in images]
        views = apply_native_sources(
            srcs * v, self.params(boxes, seed), self.config, scales=list(scales) * v
        )
        return _split(views, v, b)

    def __repr__(self) -> str:
        return f"WorkerViews(config={self.config!r})"


def _split(views: Tensor, v: int, b: int) -> Tensor:
    """(V·B, 3, S, S) channels_last → (V, B, 3, S, S) over the same NHWC memory, no copy."""
    s = views.shape[-1]
    nhwc = views.permute(0, 2, 3, 1).reshape(v, b, s, s, 3)
    return nhwc.permute(0, 1, 4, 2, 3)
