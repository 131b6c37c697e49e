"""The input a pretrained encoder expects (view size, normalisation) and a helper to make it.

A fastclr encoder was trained on ``image_size`` × ``image_size`` RGB views, scaled to [0, 1] and
normalised by the run's per-channel ``mean`` / ``std``. :class:`Preprocess` holds those three
values (read from the checkpoint) and turns images as users have them into that input:

* a PIL image: converted to 8-bit RGB by the data loader's rule (greyscale repeated, alpha
  dropped, 16-bit scaled), shorter side resized to ``image_size`` (PIL bilinear), centre square:
  exactly what ``fastclr linear-eval`` decodes from a file;
* a tensor, (C, H, W) or (N, C, H, W) with C = 3 (RGB) or 1 (greyscale, repeated): uint8 in
  [0, 255] or floating point in [0, 1]; shorter side resized to ``image_size`` (bilinear,
  antialiased) and centre-cropped where it is not already that square;
* a list or tuple of either (sizes may differ): each prepared, then stacked.

The result is a float32 (N, 3, S, S) batch in channels_last on the input's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageInput", "Preprocess"]

#: What :meth:`Preprocess.__call__` accepts: a tensor, a PIL image, or a sequence of them.
ImageInput = Any

#: How far outside [0, 1] a floating-point image may stray (rounding of a resize or a conversion)
#: before it is refused as not being [0, 1] data.
_FLOAT_SLACK = 1e-3


@dataclass(frozen=True)
class Preprocess:
    """The normalisation and view size an encoder was trained with, as a callable.

    Args:
        mean: per-channel mean (R, G, B) subtracted after scaling to [0, 1].
        std: per-channel standard deviation (R, G, B) divided by.
        image_size: side S of the square views the encoder saw in training.

    Example:
        >>> prep = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32)
        >>> prep(torch.zeros(4, 3, 40, 32, dtype=torch.uint8)).shape
        torch.Size([4, 3, 32, 32])
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int

    def __call__(self, images: ImageInput) -> Tensor:
        """Images → the encoder's input batch (float32, (N, 3, S, S), channels_last).

        Raises:
            ValueError: a tensor that is not (C, H, W) / (N, C, H, W) with C in {1, 3}, of a
                dtype other than uint8 or floating point, or floating point outside [0, 1];
                an empty list.
            TypeError: something that is neither a tensor nor a PIL image.
        """
        if isinstance(images, list | tuple):
            if not images:
                raise ValueError("preprocess got an empty list of images")
            return torch.cat([self(im) for im in images])
        x = self._as_unit_float(images)
        x = self._square(x)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def _as_unit_float(self, images: ImageInput) -> Tensor:
        """(N, 3, H, W) float32 in [0, 1] from a tensor or a PIL image."""
        if _is_pil(images):
            return _pil_square(images, self.image_size)
        if not isinstance(images, Tensor):
            raise TypeError(
                "preprocess takes a torch.Tensor (C, H, W) or (N, C, H, W), a PIL image, or a "
                f"list of them; got {type(images).__name__}"
            )
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                "preprocess takes images as (C, H, W) or (N, C, H, W) with C = 3 (RGB) or 1 "
                f"(greyscale); got shape {tuple(images.shape)} (channels-last images: "
                "x.permute(0, 3, 1, 2))"
            )
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif x.is_floating_point():
            _check_unit_range(x)
            x = x.float()
        else:
            raise ValueError(
                f"preprocess takes uint8 images in [0, 255] or floating-point images in [0, 1]; "
                f"got {x.dtype}"
            )
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def _square(self, x: Tensor) -> Tensor:
        """Shorter side → S (bilinear, antialiased), centre square; as is when already S × S."""
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) == (s, s):
            return x
        scale = s / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - s) // 2, (nw - s) // 2
        return x[..., top : top + s, left : left + s]


def _check_unit_range(x: Tensor) -> None:
    """``ValueError`` when floating-point images are not in [0, 1] (say, 0-255 floats)."""
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < -_FLOAT_SLACK or hi > 1 + _FLOAT_SLACK:
        hint = " (0-255 values? divide by 255 or pass uint8)" if hi > 1.5 else ""
        raise ValueError(
            f"preprocess takes floating-point images in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]"
            f"{hint}"
        )


def _is_pil(obj: object) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _pil_square(im: Any, size: int) -> Tensor:
    """(1, 3, S, S) float in [0, 1]: the in-memory loader's decode rule applied to a PIL image
    (:func:`fastclr.data.decode.decode_resized_square` does the same from a file)."""
    from fastclr.data.decode import resized_square, to_rgb8

    rgb, _ = to_rgb8(im, "image")
    arr = resized_square(rgb, size)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def as_triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    """Three floats (R, G, B) from a checkpoint's ``mean`` or ``std``, or ``ValueError``."""
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), got {len(vals)}")
    return vals[0], vals[1], vals[2]
