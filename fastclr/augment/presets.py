"""Named augmentation recipes: the paper's CIFAR and ImageNet ones, and the digits demo's.

``preset_config(name, size, dtype)`` is the one place a recipe name becomes an
:class:`~fastclr.augment.params.AugmentConfig`; training (``--augment-preset``) and the benchmarks
go through it.
"""

from __future__ import annotations

import torch

from fastclr.augment.params import AugmentConfig

__all__ = ["DIGITS_CROP_SCALE", "PRESETS", "digits_config", "preset_config"]

PRESETS = ("cifar", "imagenet", "digits")

# digits: the CIFAR recipe with crops of at least 30% of the area and no flips. An 8×8 digit
# does not survive an 8% crop, and a mirrored digit is another symbol (or none).
DIGITS_CROP_SCALE = (0.3, 1.0)


def digits_config(size: int = 32, dtype: torch.dtype = torch.float32) -> AugmentConfig:
    """The CIFAR recipe with milder crops (:data:`DIGITS_CROP_SCALE`) and no flips."""
    return AugmentConfig.cifar(size=size, dtype=dtype, scale=DIGITS_CROP_SCALE, flip_p=0.0)


def preset_config(name: str, size: int, dtype: torch.dtype = torch.float32) -> AugmentConfig:
    """The :class:`AugmentConfig` of recipe ``name`` (one of :data:`PRESETS`) at ``size`` px."""
    if name == "imagenet":
        return AugmentConfig.imagenet(size=size, dtype=dtype)
    if name == "cifar":
        return AugmentConfig.cifar(size=size, dtype=dtype)
    if name == "digits":
        return digits_config(size, dtype)
    raise ValueError(f"augmentation preset must be one of {PRESETS}, got {name!r}")
