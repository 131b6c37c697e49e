"""Checking and normalising augmentation inputs (shared by every backend).

Accepted images: a dense uint8 (N, H, W, C) tensor, or a sequence of uint8 (H, W, C) tensors of
different sizes (a ragged batch), all on one device, C ∈ {1, 3, 4}. Channel rule: C = 3 is RGB;
C = 1 is gray and is repeated into R = G = B; C = 4 is RGBA and the alpha channel is dropped
(no compositing, as PIL's ``convert("RGB")``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Images", "check_images", "src_sizes_of", "to_rgb"]

Images = Tensor | Sequence[Tensor]
_CHANNELS = (1, 3, 4)


def _check_one(t: object, name: str, rank: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype torch.uint8, got {t.dtype}")
    if t.ndim != rank:
        layout = "(N, H, W, C)" if rank == 4 else "(H, W, C)"
        raise ValueError(f"{name} must have rank {rank} {layout} (channels last), got {t.ndim}")
    if t.shape[-1] not in _CHANNELS:
        raise ValueError(
            f"{name} must have 1, 3 or 4 channels in its last dimension (H, W, C), "
            f"got {t.shape[-1]} (shape {tuple(t.shape)})"
        )
    if t.shape[-2] < 1 or t.shape[-3] < 1:
        raise ValueError(f"{name} has an empty image, shape {tuple(t.shape)}")
    return t


def check_images(images: Images) -> Tensor | list[Tensor]:
    """Validate ``images`` and return it as a dense tensor or a list; errors name the argument."""
    if isinstance(images, Tensor):
        _check_one(images, "images", 4)
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch (N = 0)")
        return images
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(f"images must be a uint8 tensor or a sequence of them, got {type(images)}")
    if len(images) == 0:
        raise ValueError("images is an empty batch (empty sequence)")
    out = [_check_one(t, f"images[{i}]", 3) for i, t in enumerate(images)]
    dev = out[0].device
    for i, t in enumerate(out):
        if t.device != dev:
            raise ValueError(f"images[{i}] is on {t.device}, images[0] on {dev}")
    return out


def images_device(images: Tensor | list[Tensor]) -> torch.device:
    return images.device if isinstance(images, Tensor) else images[0].device


def src_sizes_of(images: Tensor | list[Tensor]) -> Tensor:
    """(N, 2) int64 tensor of source (H, W) on the images' device."""
    if isinstance(images, Tensor):
        n, h, w = images.shape[:3]
        return torch.tensor([h, w], device=images.device).expand(n, 2).contiguous()
    return torch.tensor([[t.shape[0], t.shape[1]] for t in images], device=images[0].device)


def to_rgb(img: Tensor) -> Tensor:
    """(…, C) uint8, C ∈ {1, 3, 4} → (…, 3) uint8 by the channel rule above (no copy for C=3)."""
    c = img.shape[-1]
    if c == 3:
        return img
    if c == 1:
        return img.expand(*img.shape[:-1], 3)
    return img[..., :3]
