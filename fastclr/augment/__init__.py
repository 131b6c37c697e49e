"""SimCLR augmentations on tensors: one parameter draw, several backends (work in progress)."""

from fastclr.augment.params import AugmentConfig, AugmentParams, sample_params
from fastclr.augment.reference import apply_reference

__all__ = ["AugmentConfig", "AugmentParams", "apply_reference", "sample_params"]
