"""The native CPU backend (``backend="native"``): one fused C++ pass per image and view.

Layer two over ``kernels/cpu/augment.h``: packs the :class:`AugmentParams` of one view into the
flat arrays the kernel reads, calls it on the uint8 storage of a dense NHWC batch (images in
parallel with OpenMP, ``torch.get_num_threads()`` threads) and returns (N, 3, S, S) channels_last
in ``config.dtype``. Same maths as :func:`~fastclr.augment.reference.apply_reference` in float32
(tolerance :data:`fastclr.testing.AUGMENT_ATOL`). Ragged batches and CUDA tensors
are not this backend's: ``SimCLRAugmentation`` sends them to the torch or Triton backends.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastclr import _native
from fastclr.augment.inputs import Images, check_apply_args, to_rgb
from fastclr.augment.params import AugmentConfig, AugmentParams
from fastclr.augment.reference import gaussian_taps

__all__ = ["apply_native", "available"]


def available() -> bool:
    """True when the native library (which holds the augmentation kernel) is loaded."""
    return _native.available()


def apply_native(
    images: Images,
    params: AugmentParams,
    config: AugmentConfig,
    *,
    layout: str | None = None,
    validate: bool = True,
) -> Tensor:
    """Apply ONE view's ``params`` to a dense uint8 (N, H, W, C) CPU batch.

    ``params`` are checked by the shared rule (:meth:`AugmentParams.validate`) unless
    ``validate`` is False; the kernel checks the values it indexes with (crop boxes, orders, blur
    width) again whatever it is given, and refuses with ValueError rather than read outside
    ``images``.
    """
    imgs, params = check_apply_args(images, params, layout=layout, validate=validate)
    if not isinstance(imgs, Tensor):
        raise ValueError(
            "backend='native' takes a dense (N, H, W, C) batch; use 'torch' for ragged"
        )
    if imgs.device.type != "cpu":
        raise ValueError(f"backend='native' runs on CPU tensors, images are on {imgs.device}")
    mod = _native.require()
    n = imgs.shape[0]
    p = params
    src = to_rgb(imgs).contiguous()
    _, h, w, _ = src.shape
    s, k = config.size, config.blur_kernel_size
    crop = p.crop.to(torch.int32).contiguous()
    flags = torch.stack([p.flip, p.jitter_apply, p.gray, p.blur_apply, p.solarize], 1)
    flags = flags.to(torch.uint8).contiguous()
    factors = torch.stack([p.brightness, p.contrast, p.saturation, p.hue], 1)
    factors = factors.to(torch.float32).contiguous()
    order = p.order.to(torch.int32).contiguous()
    taps = gaussian_taps(p.sigma.to(torch.float64), k).to(torch.float32).contiguous()
    mean = torch.tensor(config.mean, dtype=torch.float32)
    std = torch.tensor(config.std, dtype=torch.float32)
    out = torch.empty((n, s, s, 3), dtype=torch.float32)
    mod.simclr_view_f32(
        src.data_ptr(), n, h, w, crop.data_ptr(), flags.data_ptr(), factors.data_ptr(),
        order.data_ptr(), taps.data_ptr(), k, float(config.solarize_threshold),
        mean.data_ptr(), std.data_ptr(), s, out.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    view = out.permute(0, 3, 1, 2)  # NCHW shape over NHWC memory: channels_last
    return view if config.dtype == torch.float32 else view.to(config.dtype)
