"""Checking and normalising augmentation inputs (shared by every backend).

Accepted images: a dense uint8 (N, H, W, C) tensor, or a sequence of uint8 (H, W, C) tensors of
different sizes (a ragged batch), all on one device, C ∈ {1, 3, 4}. Channel rule: C = 3 is RGB;
C = 1 is gray and is repeated into R = G = B; C = 4 is RGBA and the alpha channel is dropped
(no compositing, as PIL's ``convert("RGB")``).

Layout rule: images are channels-last. A shape whose height AND channel dimensions are both
valid channel counts (1, 3 or 4), e.g. (N, 3, 32, 4), could just as well be channels-first
(N, C, H, W) with width 1, 3 or 4, so it is refused unless ``layout`` says which it is:
``layout="NHWC"`` takes it as it is, ``layout="NCHW"`` (also for unambiguous shapes) converts
channels-first images to channels-last (one copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from fastclr.augment.params import AugmentConfig, AugmentParams

__all__ = [
    "LAYOUTS",
    "ApplyView",
    "Images",
    "check_apply_args",
    "check_images",
    "checked_apply",
    "src_sizes_of",
    "to_rgb",
]

Images = Tensor | Sequence[Tensor]
_CHANNELS = (1, 3, 4)
#: Values of the ``layout`` argument: None (channels-last, refused when ambiguous) or one of these.
LAYOUTS = ("NHWC", "NCHW")


def _check_one(t: object, name: str, rank: int, layout: str | None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must have dtype torch.uint8, got {t.dtype}")
    if t.ndim != rank:
        shape = "(N, H, W, C)" if rank == 4 else "(H, W, C)"
        raise ValueError(f"{name} must have rank {rank} {shape} (channels last), got {t.ndim}")
    if layout == "NCHW":
        if t.shape[-3] not in _CHANNELS:
            raise ValueError(
                f"{name} with layout='NCHW' must have 1, 3 or 4 channels in dimension "
                f"{rank - 3}, got {t.shape[-3]} (shape {tuple(t.shape)})"
            )
        t = t.movedim(-3, -1).contiguous()
    if t.shape[-1] not in _CHANNELS:
        hint = "; it looks channels-first: pass layout='NCHW'" if t.shape[-3] in _CHANNELS else ""
        raise ValueError(
            f"{name} must have 1, 3 or 4 channels in its last dimension (H, W, C), "
            f"got {t.shape[-1]} (shape {tuple(t.shape)}){hint}"
        )
    if layout is None and t.shape[-3] in _CHANNELS:
        h, _, c = t.shape[-3:]
        raise ValueError(
            f"{name} has an ambiguous layout, shape {tuple(t.shape)}: channels-last with "
            f"H={h}, C={c}, or channels-first with C={h}, W={c}; pass layout='NHWC' or "
            "layout='NCHW'"
        )
    if t.shape[-2] < 1 or t.shape[-3] < 1:
        raise ValueError(f"{name} has an empty image, shape {tuple(t.shape)}")
    return t


def check_images(images: Images, layout: str | None = None) -> Tensor | list[Tensor]:
    """Validate ``images`` and return it as a dense NHWC tensor or a list of HWC tensors.

    Args:
        images: see the module docstring.
        layout: None (channels-last; an ambiguous shape is refused), ``"NHWC"`` or ``"NCHW"``
            (see the layout rule in the module docstring).

    Errors name the argument (``images`` or ``images[i]``).
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be None or one of {LAYOUTS}, got {layout!r}")
    if isinstance(images, Tensor):
        if images.ndim == 4 and images.shape[0] == 0:
            raise ValueError("images is an empty batch (N = 0)")
        return _check_one(images, "images", 4, layout)
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise TypeError(f"images must be a uint8 tensor or a sequence of them, got {type(images)}")
    if len(images) == 0:
        raise ValueError("images is an empty batch (empty sequence)")
    out = [_check_one(t, f"images[{i}]", 3, layout) for i, t in enumerate(images)]
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


def check_apply_args(
    images: Images,
    params: AugmentParams,
    *,
    layout: str | None = None,
    validate: bool = True,
) -> tuple[Tensor | list[Tensor], AugmentParams]:
    """The checks every ``apply_*`` entry point makes on explicit ``(images, params)``.

    Returns the images as :func:`check_images` does and ``params`` moved to their device, after
    :meth:`AugmentParams.validate` (the one shared rule) unless ``validate`` is False — only for
    parameters drawn by :func:`~fastclr.augment.params.sample_params` for these very sources.
    """
    imgs = check_images(images, layout)
    if not isinstance(params, AugmentParams):
        raise TypeError(f"params must be an AugmentParams, got {type(params).__name__}")
    n = imgs.shape[0] if isinstance(imgs, Tensor) else len(imgs)
    if len(params) != n:
        raise ValueError(f"params has {len(params)} images, images has {n}")
    params = params.to(images_device(imgs))
    if validate:
        params.validate(src_sizes_of(imgs))
    return imgs, params


class ApplyView(Protocol):
    """The contract of every backend's one-view ``apply_*`` (see ``apply_reference``)."""

    def __call__(
        self,
        images: Images,
        params: AugmentParams,
        config: AugmentConfig,
        *,
        layout: str | None = None,
        validate: bool = True,
    ) -> Tensor: ...


#: A backend's one-view work on checked arguments: channels-last images as
#: :func:`check_images` returns them, ``params`` on their device.
ViewBody = Callable[[Tensor | list[Tensor], AugmentParams, AugmentConfig], Tensor]


def checked_apply(body: ViewBody) -> ApplyView:
    """Make a backend's public one-view ``apply_*`` from ``body`` (use as a decorator).

    The result takes ``(images, params, config, *, layout=None, validate=True)``, runs
    :func:`check_apply_args` on them, then returns ``body(imgs, params, config)``; it carries
    ``body``'s name and docstring, so the docstring describes the public call.

    Example: ``native_backend.apply_native`` is ``@checked_apply`` over its kernel call.
    """

    def apply(
        images: Images,
        params: AugmentParams,
        config: AugmentConfig,
        *,
        layout: str | None = None,
        validate: bool = True,
    ) -> Tensor:
        imgs, checked = check_apply_args(images, params, layout=layout, validate=validate)
        return body(imgs, checked, config)

    # Not functools.wraps: its __wrapped__ would make inspect.signature show body's arguments.
    apply.__name__ = apply.__qualname__ = body.__name__
    apply.__doc__ = body.__doc__
    apply.__module__ = body.__module__
    return apply
