"""The SimCLR augmentation through ``kornia.augmentation.AugmentationSequential`` (a baseline).

Configured as close to :mod:`fastclr.augment.reference` as kornia allows; it draws its own random
parameters (it cannot take an :class:`~fastclr.augment.params.AugmentParams`), so it is compared
in distribution, not pixel by pixel. Known differences from the reference:

- colour jitter: kornia draws ONE op order per batch (per call), not one per image;
- crop: kornia's RandomResizedCrop draws the box by torchvision's rule too (10 tries, first
  accepted, centre-crop fallback; in float32, not float64), but from kornia's own generator, and
  resizes through its own crop path; bilinear with align_corners=False here (kornia's default
  is True);
- grayscale: kornia's RandomGrayscale default p is 0.1; set to ``config.gray_p`` (0.2) here.
  kornia's luma weights are 0.299/0.587/0.114 as the reference's;
- blur: kornia's RandomGaussianBlur draws σ per image in ``config.sigma`` with the same kernel
  side and reflect padding;
- solarize: kornia's RandomSolarize is configured with a fixed threshold
  (``config.solarize_threshold``) and no brightness addition;
- randomness comes from torch's global generator (kornia has no generator argument), so
  ``SimCLRAugmentation(seed=...)`` does not make this backend reproducible;
- ragged batches are not supported (kornia needs one (N, C, H, W) tensor): a ``ValueError``.

Input is the same as every backend's (uint8 (N, H, W, C)); it is converted to float (N, 3, H, W)
in [0, 1] first, and that conversion is part of what is timed.
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import Tensor

from fastclr.augment.inputs import Images, check_images, to_rgb
from fastclr.augment.params import AugmentConfig

__all__ = ["KorniaAugmentation", "kornia_pipeline"]


class KorniaAugmentation:
    """One view of the SimCLR augmentation by kornia: ``out = aug(images)``.

    Args:
        config: the :class:`AugmentConfig` to follow (size, strength, probabilities, mean/std).

    Shape:
        images: uint8 (N, H, W, C), C ∈ {1, 3, 4}; output (N, 3, S, S) in ``config.dtype``,
        channels_last.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        s = config.size
        m = 0.8 * config.strength
        h = min(0.2 * config.strength, 0.5)
        ops: list[K.AugmentationBase2D | K.ImageSequential] = [
            K.RandomResizedCrop(
                (s, s), scale=config.scale, ratio=config.ratio, align_corners=False, p=1.0
            ),
            K.RandomHorizontalFlip(p=config.flip_p),
            K.ColorJitter(m, m, m, h, p=config.jitter_p),
            K.RandomGrayscale(p=config.gray_p),
        ]
        if config.blur_p > 0:
            k = config.blur_kernel_size
            ops.append(
                K.RandomGaussianBlur((k, k), config.sigma, border_type="reflect", p=config.blur_p)
            )
        if config.solarize_p > 0:
            # kornia draws the threshold as 0.5 + U(−t, t) and adds U(−a, a); both fixed here.
            ops.append(
                K.RandomSolarize(
                    thresholds=(config.solarize_threshold - 0.5, config.solarize_threshold - 0.5),
                    additions=0.0,
                    p=config.solarize_p,
                )
            )
        ops.append(
            K.Normalize(
                mean=torch.tensor(config.mean, dtype=torch.float32),
                std=torch.tensor(config.std, dtype=torch.float32),
            )
        )
        self.pipeline = K.AugmentationSequential(*ops)

    def __call__(self, images: Images, layout: str | None = None) -> Tensor:
        """One view of ``images`` (``layout``: see :func:`~fastclr.augment.inputs.check_images`)."""
        imgs = check_images(images, layout)
        if not isinstance(imgs, Tensor):
            raise ValueError(
                "images: the kornia backend needs a dense (N, H, W, C) uint8 tensor, got a ragged "
                "sequence; use backend='torch' or 'reference' for ragged batches"
            )
        x = to_rgb(imgs).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.no_grad():
            out = self.pipeline(x)
        return out.to(dtype=self.config.dtype).contiguous(memory_format=torch.channels_last)


def kornia_pipeline(config: AugmentConfig | None = None) -> Callable[[Images], Tensor]:
    """A kornia baseline of one view for ``config`` (default ImageNet), for benchmarks."""
    return KorniaAugmentation(config or AugmentConfig.imagenet())
