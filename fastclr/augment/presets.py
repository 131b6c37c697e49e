"""Named augmentation recipes: the paper's CIFAR and ImageNet ones, and the digits demo's.

Each size recipe (``small``, ``cifar``, ``imagenet``) has a ``-grey`` twin without horizontal
flips, for grayscale collections (the recipe's rule in :mod:`fastclr.train.recipe`).

``preset_config(name, size, dtype)`` is the one place a recipe name becomes an
:class:`~fastclr.augment.params.AugmentConfig`; training (``--augment-preset``) and the benchmarks
go through it.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fastclr.augment.params import AugmentConfig

__all__ = [
    "DIGITS_CROP_SCALE",
    "GREY_SUFFIX",
    "PRESETS",
    "SIZE_PRESETS",
    "SMALL_CROP_SCALE",
    "digits_config",
    "preset_config",
    "small_config",
]

SIZE_PRESETS = ("small", "cifar", "imagenet")
GREY_SUFFIX = "-grey"
PRESETS = (*SIZE_PRESETS, "digits", *(name + GREY_SUFFIX for name in SIZE_PRESETS))

# small (views below CIFAR's 32 px): the CIFAR recipe with crops of at least 30% of the area. An
# 8% crop of a 28-px image is an 8-px patch blown up 3.5x; on 28-px digits (one seed,
# bench/results/quality.md) the 30% floor together with no flips raised kNN from 77% to 86%; the
# crop alone was not measured separately. Flips are kept here and dropped by the "-grey" twins,
# which the recipe picks for grayscale data (fastclr.train.recipe).
SMALL_CROP_SCALE = (0.3, 1.0)

# digits: the CIFAR recipe with crops of at least 30% of the area and no flips. An 8×8 digit
# does not survive an 8% crop, and a mirrored digit is another symbol (or none).
DIGITS_CROP_SCALE = (0.3, 1.0)


def digits_config(size: int = 32, dtype: torch.dtype = torch.float32) -> AugmentConfig:
    """The CIFAR recipe with milder crops (:data:`DIGITS_CROP_SCALE`) and no flips."""
    return AugmentConfig.cifar(size=size, dtype=dtype, scale=DIGITS_CROP_SCALE, flip_p=0.0)


def small_config(size: int = 28, dtype: torch.dtype = torch.float32) -> AugmentConfig:
    """The CIFAR recipe with crops of at least :data:`SMALL_CROP_SCALE` of the area."""
    return AugmentConfig.cifar(size=size, dtype=dtype, scale=SMALL_CROP_SCALE)


def preset_config(name: str, size: int, dtype: torch.dtype = torch.float32) -> AugmentConfig:
    """The :class:`AugmentConfig` of recipe ``name`` (one of :data:`PRESETS`) at ``size`` px.

    ``<preset>-grey`` is ``<preset>`` with the flip probability set to 0.
    """
    if name.endswith(GREY_SUFFIX) and name[: -len(GREY_SUFFIX)] in SIZE_PRESETS:
        return replace(preset_config(name[: -len(GREY_SUFFIX)], size, dtype), flip_p=0.0)
    if name == "imagenet":
        return AugmentConfig.imagenet(size=size, dtype=dtype)
    if name == "cifar":
        return AugmentConfig.cifar(size=size, dtype=dtype)
    if name == "digits":
        return digits_config(size, dtype)
    if name == "small":
        return small_config(size, dtype)
    raise ValueError(f"augmentation preset must be one of {PRESETS}, got {name!r}")
