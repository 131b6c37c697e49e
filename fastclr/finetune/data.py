"""The data of one fine-tuning rank: batches of labelled images, one augmented view each, and its
share of the validation images.

The labelled images come from the planned loader (:mod:`fastclr.data.select`'s
:class:`~fastclr.data.select.MemoryLoader` over the decoded subset, or
:class:`~fastclr.data.stream.StreamingLoader` with one view per image, its crops drawn on the
original image and decoded in worker processes). Both yield :class:`~fastclr.data.ViewBatch`,
draw their order from ``(seed, epoch)``, shard by rank and resume mid-epoch exactly.
:func:`one_view` applies the rest of the paper's fine-tuning augmentation (the crop where it was
not taken yet, the flip, the normalisation) with fastclr's augmentation backends.

Validation images are clean (shorter side resized, centre square, normalised): decoded once when
they fit in memory, else decoded from their files at every evaluation
(:func:`fastclr.features.stream_features`). Each rank evaluates every ``world``-th image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from fastclr.augment import AugmentConfig, AugmentParams, SimCLRAugmentation, sample_params
from fastclr.augment.presets import preset_config
from fastclr.data import TensorImageDataset
from fastclr.data.memory import decode_files
from fastclr.data.select import BatchLoader, MemoryLoader
from fastclr.data.split import FileSet
from fastclr.data.stream import StreamingLoader, ViewBatch
from fastclr.data.summary import DataSummary
from fastclr.errors import UsageError
from fastclr.finetune.plan import FinetunePlan
from fastclr.train.precision import AMP_DTYPES

__all__ = ["FinetuneData", "augment_config", "build_finetune_data", "one_view"]


def augment_config(plan: FinetunePlan) -> AugmentConfig:
    """The paper's fine-tuning augmentation: the planned crop and the preset's flip, nothing
    else, normalised as the pretraining checkpoint says, in the run's autocast dtype."""
    base = preset_config(plan.preset, plan.image_size, AMP_DTYPES[plan.precision])
    return replace(
        base,
        scale=plan.crop or base.scale,
        jitter_p=0.0,
        gray_p=0.0,
        blur_p=0.0,
        solarize_p=0.0,
        mean=plan.mean,
        std=plan.std,
    )


def one_view(augment: SimCLRAugmentation, batch: ViewBatch) -> Tensor:
    """One augmented view (N, 3, S, S) of ``batch`` (on the augmentation's device).

    Uncropped images (in memory) are cropped here; crops streamed from the files keep their
    crop (a full-image box), and get the flip and the normalisation."""
    if batch.views is not None:
        images = batch.views[0]
        n, s = images.shape[0], images.shape[1]
        sizes = torch.tensor([s, s], device=images.device).expand(n, 2)
        params = sample_params(n, sizes, augment.config, augment.generator(images.device))
        full = torch.tensor([0, 0, s, s], dtype=torch.int32, device=images.device).expand(n, 4)
        params = replace(params, crop=full.contiguous())
    else:
        assert batch.images is not None
        images = batch.images
        n, h, w = images.shape[0], images.shape[1], images.shape[2]
        sizes = torch.tensor([h, w], device=images.device).expand(n, 2)
        params = sample_params(n, sizes, augment.config, augment.generator(images.device))
    assert isinstance(params, AugmentParams)
    return augment.apply(images, params, validate=False)


@dataclass
class FinetuneData:
    """This rank's labelled batches and validation share (module docstring)."""

    loader: BatchLoader
    n_labelled: int
    val: TensorImageDataset | FileSet
    n_val: int
    summary: DataSummary


def _labelled_memory(plan: FinetunePlan, summary: DataSummary) -> TensorImageDataset:
    idx = list(plan.labelled)
    data = plan.data
    if data.memory is not None:
        train = data.memory.train
        assert train.labels is not None
        return TensorImageDataset(train.images[idx], train.labels[idx])
    assert data.train is not None
    part = data.train.select(np.asarray(idx))
    return decode_files(part, plan.image_size, plan.num_workers, summary, "labelled image files")


def _validation(
    plan: FinetunePlan, rank: int, world: int
) -> tuple[TensorImageDataset | FileSet, int]:
    """This rank's share of the validation images (every ``world``-th), and their total."""
    data = plan.data
    if data.memory is not None:
        held = data.memory.heldout
        assert held is not None and held.labels is not None
        return TensorImageDataset(held.images[rank::world], held.labels[rank::world]), len(held)
    assert data.heldout is not None
    share = data.heldout.select(np.arange(rank, len(data.heldout), world))
    if plan.stream_validation:
        return share, len(data.heldout)
    what = "validation image files"
    decoded = decode_files(share, plan.image_size, plan.num_workers, data.summary, what)
    return decoded, len(data.heldout)


def _check_readable(plan: FinetunePlan, n: int, rank: int, world: int) -> None:
    """Refuse labelled images too few (some unreadable) for the plan's steps."""
    steps = (n // world) // plan.per_rank
    if steps < plan.steps_per_epoch:
        raise UsageError(
            f"only {n} of the {len(plan.labelled)} labelled images could be read: {steps} steps "
            f"an epoch on rank {rank} where the plan has {plan.steps_per_epoch} (the unreadable "
            "ones are named above); replace them, or label other images (--subset)"
        )


def build_finetune_data(
    plan: FinetunePlan, seed: int, rank: int, world: int, device: torch.device
) -> FinetuneData:
    """The planned loader of the labelled images for this rank, and its validation share.

    Raises :class:`~fastclr.errors.UsageError` when fewer of the labelled files can be read than
    the plan's steps need (or none of the validation files).
    """
    summary = plan.data.summary
    loader: BatchLoader
    if plan.loader == "memory":
        labelled = _labelled_memory(plan, summary)
        n = len(labelled)
        _check_readable(plan, n, rank, world)
        loader = MemoryLoader(
            labelled.to(device),
            plan.per_rank,
            seed=seed,
            rank=rank,
            world_size=world,
            summary=summary,
        )
    else:
        assert plan.data.train is not None
        part = plan.data.train.select(np.asarray(plan.labelled))
        n = len(part)
        loader = StreamingLoader(
            part.files,
            part.labels,
            augment_config(plan),
            plan.per_rank,
            num_workers=plan.num_workers,
            pin_memory=device.type == "cuda",
            views=1,
            summary=summary,
            seed=seed,
            rank=rank,
            world_size=world,
        )
    val, n_val = _validation(plan, rank, world)
    return FinetuneData(loader, n, val, n_val, summary)
