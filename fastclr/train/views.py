"""The view step of training: two augmented views of a loader's batch.

The loaders (:mod:`fastclr.data`) deliver uint8 images, uncropped (in memory) or already cropped
from the original files (streaming loaders), or views their workers finished already (the stream
loader handed :func:`worker_views`, when the run plan says ``augment_in = workers``); the
augmentation (:mod:`fastclr.augment`) is a tensor op. Joining the two is training's job, so
neither package imports the other for it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from fastclr.augment import REGISTRY as AUGMENT_REGISTRY
from fastclr.augment import SimCLRAugmentation
from fastclr.augment.native_backend import WorkerViews
from fastclr.augment.params import AugmentConfig, AugmentParams
from fastclr.data.stream import ViewBatch

__all__ = ["augment_views", "worker_views", "workers_blocked"]


def workers_blocked(
    device: torch.device, loader: str, own_augment: bool, augment_backend: str
) -> str | None:
    """Why the stream loader's workers cannot finish a run's views (None: they can): they need
    a CPU ``device`` (on a GPU the step augments there), the stream ``loader``, the augmentation
    training builds (``own_augment``), and ``augment_backend`` resolving on the CPU to a backend
    that declares a workers' pass (``worker_views``: the native kernel)."""
    if device.type != "cpu":
        return f"the run trains on {device.type}, where the step augments on the device"
    if loader != "stream":
        return f"the {loader} loader has no decode workers that finish views (stream has)"
    if not own_augment:
        return "pretrain() was given its own augmentation, which runs in the training process"
    backend = AUGMENT_REGISTRY.resolve(augment_backend, torch.device("cpu"))
    if not AUGMENT_REGISTRY.info(backend).worker_views:
        return f"--augment-backend {augment_backend} is {backend}; the workers run native"
    return None


def worker_views(augment_in: str, augment: Any) -> WorkerViews | None:
    """What the stream loader's workers finish the views with (None: ``augment_in`` is
    ``main``, the training process augments): the fused native crop, resize and augmentation
    pass over ``augment``'s own recipe (its output dtype included).

    Raises:
        TypeError: ``augment_in`` is ``workers`` but ``augment`` has no
            :class:`~fastclr.augment.params.AugmentConfig` (the run plan gives ``workers`` only
            to the augmentation training builds).
    """
    if augment_in != "workers":
        return None
    config = getattr(augment, "config", None)
    if not isinstance(config, AugmentConfig):
        raise TypeError(
            f"the views are finished in the loader's workers, but {type(augment).__name__} has "
            "no AugmentConfig to give them"
        )
    return WorkerViews(config)


def augment_views(augment: Any, batch: ViewBatch) -> tuple[Tensor, Tensor]:
    """Two augmented views of ``batch`` with fastclr's augmentation.

    Uncropped images go through ``augment(images)`` as before. Pre-cropped views keep their crop:
    the augmentation's own parameters are drawn (``augment.sample``) and their crop replaced by the
    full (S, S) box, so only flip, colour, grey, blur, solarize and normalisation are applied, by
    the same backend and definition as for in-memory data (``augment.apply``, both views in one
    call). Views the loader's workers finished already (floating point, (2, N, 3, S, S):
    :func:`worker_views`) are returned as they are; ``augment`` is not used for them.
    """
    if batch.views is None:
        assert batch.images is not None
        v1, v2 = augment(batch.images)
        return v1, v2
    views = batch.views
    n_views, n, s = views.shape[0], views.shape[1], views.shape[2]
    if n_views != 2:
        raise ValueError(f"the training loop takes 2 views per image, the batch has {n_views}")
    if views.is_floating_point():  # finished in the workers, channels_last already
        return views[0], views[1]
    if not (hasattr(augment, "sample") and hasattr(augment, "apply")):
        raise TypeError(
            "streamed batches are already cropped: the augmentation needs sample() and apply() "
            "(fastclr.augment.SimCLRAugmentation) to apply the rest of the recipe"
        )
    sizes = torch.tensor([s, s], device=views.device).expand(n, 2)
    p1, p2 = augment.sample(n, sizes, device=views.device)
    full = torch.tensor([0, 0, s, s], dtype=torch.int32, device=p1.device).expand(n, 4)
    params = AugmentParams.cat([replace(p1, crop=full), replace(p2, crop=full.clone())])
    flat = views.reshape(2 * n, s, s, views.shape[-1])
    if isinstance(augment, SimCLRAugmentation):
        # drawn by sample() for (S, S) sources with the full box: valid by construction, so no
        # parameter check (a host sync per step on a GPU)
        out = augment.apply(flat, params, validate=False)
    else:
        out = augment.apply(flat, params)
    v1, v2 = out.chunk(2)
    return v1, v2
