"""The two SimCLR pipelines of the head-to-head (bench/pipeline_bench.py), built the same way.

* ``fastclr``: fastclr's pretraining step as ``fastclr pretrain`` runs it on a folder: the
  streaming loader (workers decode the JPEGs and crop the views from the original image), the
  native augmentation in the training process (``fastclr.train.views.augment_views``), the
  channels-last model with both views as one batch, the fused NT-Xent and LARS
  (``TrainingStep``).
* ``fastclr-workers``: the same, with the views finished in the loader's workers: the loader is
  handed :class:`fastclr.augment.native_backend.WorkerViews`, which does crop, resize and the
  rest of the recipe in one native pass from the decoded image.
* ``fastclr-bf16``: ``fastclr-workers`` with ``--precision bf16`` (autocast; the loss and LARS in
  fp32), the opt-in a CPU with native bf16 offers; in the timed rounds only.
* ``lightly``: what a user writes following lightly's SimCLR example: torchvision ``ImageFolder``
  with lightly's ``SimCLRTransform``, a ``DataLoader`` with workers, one forward per view,
  lightly's ``NTXentLoss`` and lightly's ``LARS`` (weight decay off for norms and biases, as
  lightly's own SimCLR benchmark sets it up). The model is fastclr's, built with the same seed,
  left in the contiguous memory format the example's torchvision ResNet has.

Both recipes are the same SimCLR recipe at each size: at 64 px fastclr's ``cifar`` preset (colour
strength 0.5, no blur) and ``SimCLRTransform(cj_strength=0.5, gaussian_blur=0)``; at 224 px the
ImageNet recipe in both. Besides the pipelines, the per-stage CPU profiles: each stage of one
batch timed on its own in this process (1 thread: ``time.process_time`` is the stage's CPU time).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from itertools import count
from typing import Any

import numpy as np
import torch
from step_limit import StepParts, time_stages
from torch import Tensor

#: the pipelines profiled stage by stage (fp32)
PIPELINES = ("fastclr", "fastclr-workers", "lightly")
#: the pipelines of the timed rounds: the profiled ones and fastclr's bf16 opt-in
ROUND_PIPELINES = (*PIPELINES[:2], "fastclr-bf16", PIPELINES[2])
#: NT-Xent temperature of both pipelines (lightly's default)
TEMPERATURE = 0.5
SEED = 0
#: the data stages of the per-stage profile, in pipeline order
DATA_STAGES = ("decode", "crop/resize", "augment")

Step = Callable[[Any], Tensor]


def _settings(size: int, precision: str = "fp32") -> tuple[str, Any]:
    """(stem, fastclr augmentation) of fastclr's recipe for ``size``-px views."""
    from fastclr.train.builders import build_augmentation
    from fastclr.train.recipe import preset_for, stem_for

    stem = stem_for(size)[0]
    aug = build_augmentation(
        preset_for(size)[0], size, precision, "auto", SEED, torch.device("cpu")
    )
    return stem, aug


def _model(stem: str, width: float, contiguous: bool = False) -> torch.nn.Module:
    from fastclr.models import build_model

    torch.manual_seed(SEED)
    model = build_model("resnet18", stem, width)  # type: ignore[arg-type]
    return model.to(memory_format=torch.contiguous_format) if contiguous else model


# ------------------------------------------------------------------------------------- fastclr


def views_of(aug: Any, batch: Any) -> tuple[Tensor, Tensor]:
    """The step's two views of a streamed batch: as they come when the loader's workers finished
    them (``finish_views``), else through training's view step (``augment_views``)."""
    from fastclr.train.views import augment_views

    if batch.views is not None and batch.views.dtype.is_floating_point:
        return batch.views[0], batch.views[1]
    return augment_views(aug, batch)


def fastclr_pipeline(
    folder: str,
    size: int,
    width: float,
    batch: int,
    workers: int,
    in_workers: bool,
    precision: str = "fp32",
) -> tuple[Iterator[Any], Step]:
    """(batches, step) of fastclr's pretraining on ``folder`` (module docstring) at
    ``precision`` (fp32 or bf16)."""
    from fastclr.augment.native_backend import WorkerViews
    from fastclr.data import list_image_folder
    from fastclr.data.stream import StreamingLoader
    from fastclr.loss import NTXentLoss
    from fastclr.optim import LARS, lars_param_groups, scaled_lr
    from fastclr.train.precision import make_scaler
    from fastclr.train.step import TrainingStep

    stem, aug = _settings(size, precision)
    listing = list_image_folder(folder)
    finish = WorkerViews(aug.config) if in_workers else None
    loader = StreamingLoader(
        listing.files,
        listing.labels,
        aug.config,
        batch,
        seed=SEED,
        num_workers=workers,
        finish_views=finish,
    )
    model = _model(stem, width)
    loss = NTXentLoss(TEMPERATURE, check_finite=False)
    opt = LARS(lars_param_groups(model), lr=scaled_lr(batch))
    cpu = torch.device("cpu")
    stepper = TrainingStep(model, loss, opt, make_scaler(precision, cpu), precision, cpu)

    def step(b: Any) -> Tensor:
        return stepper(*views_of(aug, b))

    return (b for e in count() for b in loader.epoch(e)), step


def build_pipeline(
    name: str, folder: str, size: int, width: float, batch: int, workers: int
) -> tuple[Iterator[Any], Step]:
    """(batches, step) of the pipeline ``name`` (one of :data:`ROUND_PIPELINES`)."""
    if name == "lightly":
        return lightly_pipeline(folder, size, width, batch, workers)
    precision = "bf16" if name == "fastclr-bf16" else "fp32"
    return fastclr_pipeline(folder, size, width, batch, workers, name != "fastclr", precision)


# ------------------------------------------------------------------------------------- lightly


def lightly_transform(size: int) -> Any:
    """lightly's ``SimCLRTransform`` with fastclr's recipe at ``size`` (module docstring)."""
    from lightly.transforms import SimCLRTransform

    small = size <= 64
    return SimCLRTransform(
        input_size=size, cj_strength=0.5 if small else 1.0, gaussian_blur=0.0 if small else 0.5
    )


def _lightly_optimizer(model: torch.nn.Module, batch: int) -> torch.optim.Optimizer:
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.utils.lars import LARS

    from fastclr.optim import scaled_lr

    params, no_decay = get_weight_decay_parameters([model])
    groups = [{"params": params}, {"params": no_decay, "weight_decay": 0.0}]
    return LARS(groups, lr=scaled_lr(batch), momentum=0.9, weight_decay=1e-6)


def lightly_pipeline(
    folder: str, size: int, width: float, batch: int, workers: int
) -> tuple[Iterator[Any], Step]:
    """(batches, step) of the lightly-example pipeline on ``folder`` (module docstring)."""
    import torchvision
    from lightly.loss import NTXentLoss

    dataset = torchvision.datasets.ImageFolder(folder, transform=lightly_transform(size))
    g = torch.Generator().manual_seed(SEED)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, generator=g
    )
    model = _model(_settings(size)[0], width, contiguous=True)
    criterion = NTXentLoss(temperature=TEMPERATURE)
    optimizer = _lightly_optimizer(model, batch)

    def step(b: Any) -> Tensor:
        (x0, x1), _ = b
        z0 = model(x0)[1]
        z1 = model(x1)[1]
        loss = criterion(z0, z1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach()

    return (b for _ in count() for b in loader), step


# ------------------------------------------------------------------------------ stage profiles


class Stopwatch:
    """Accumulated process CPU seconds per named stage."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def add(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.process_time()
        out = fn()
        self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - t0
        return out


def _headers(files: list[str]) -> np.ndarray:
    """(B, 2) original (H, W) of ``files`` read from their headers (as the loader's workers do)."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as im:
            out.append((im.size[1], im.size[0]))
    return np.asarray(out)


def _crops(decoded: list[tuple[np.ndarray, np.ndarray, Any, int]], size: int) -> Tensor:
    """(V, B, S, S, 3) uint8 crops by the loader's numpy rule (``resize_box``)."""
    from fastclr.data.decode import resize_box

    per_image = []
    for rgb, boxes, _, k in decoded:
        views = [
            resize_box(rgb, (int(b[0]), int(b[1]), int(b[2]), int(b[3])), size, k) for b in boxes
        ]
        per_image.append(np.stack(views))
    return torch.from_numpy(np.stack(per_image)).transpose(0, 1).contiguous()


def _fastclr_data(files: list[str], size: int, aug: Any, fused: bool, sw: Stopwatch) -> Tensor:
    """The data stages of fastclr on ``files``: decode, crop/resize, augment → (2, B, 3, S, S).

    ``fused``: crop, resize and augmentation in one native pass (``WorkerViews``); its
    crop/resize share is the same kernel with the colour ops off, its augment share the rest.
    """
    from fastclr.augment.native_backend import WorkerViews, apply_native_sources
    from fastclr.augment.params import AugmentParams
    from fastclr.data.decode import decode_for_boxes
    from fastclr.data.stream import ViewBatch, draw_boxes

    boxes = draw_boxes(sw.add("decode", lambda: _headers(files)), aug.config, 2, SEED, 0, 0, 0)
    decoded = [
        sw.add("decode", partial(decode_for_boxes, f, partial(_fixed, b), size))
        for f, b in zip(files, boxes, strict=True)
    ]
    if not fused:
        views = sw.add("crop/resize", lambda: _crops(decoded, size))
        labels = torch.zeros(len(files), dtype=torch.int64)
        v1, v2 = sw.add("augment", lambda: views_of(aug, ViewBatch(labels, views)))
        return torch.stack([v1, v2])
    rgbs = [torch.from_numpy(d[0].copy()) for d in decoded]
    scales = [d[3] for d in decoded]
    rows = torch.from_numpy(boxes.transpose(1, 0, 2).reshape(-1, 4)).int()  # view-major
    crop_only = replace(AugmentParams.identity(rows[:, 2:]), crop=rows)
    sw.add(
        "crop/resize",
        lambda: apply_native_sources(rgbs * 2, crop_only, aug.config, scales=scales * 2),
    )
    finish = WorkerViews(aug.config)
    views = sw.add("augment", lambda: finish([d[0] for d in decoded], scales, boxes, SEED))
    sw.cpu["augment"] -= sw.cpu["crop/resize"]  # the fused pass minus its crop/resize part
    return views


def _fixed(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    return boxes


def _lightly_data(files: list[str], size: int, sw: Stopwatch) -> tuple[Tensor, Tensor]:
    """The data stages of the lightly pipeline: decode, crop/resize, augment → two (B, 3, S, S)."""
    from torchvision.datasets.folder import default_loader

    composed = lightly_transform(size).transforms[0].transform.transforms
    crop, rest = composed[0], composed[1:]
    views: list[list[Tensor]] = [[], []]
    for f in files:
        img = sw.add("decode", partial(default_loader, f))
        for v in range(2):
            x = sw.add("crop/resize", partial(crop, img))
            for t in rest:
                x = sw.add("augment", partial(t, x))
            views[v].append(x)
    x0, x1 = sw.add("augment", lambda: (torch.stack(views[0]), torch.stack(views[1])))
    return x0, x1


def _data_stages(
    pipeline: str, files: list[str], size: int, aug: Any, reps: int
) -> tuple[dict[str, float], Any]:
    """Median CPU seconds per data stage over ``reps`` passes over ``files``, and the views."""
    runs: list[dict[str, float]] = []
    views: Any = None
    for _ in range(reps):
        sw = Stopwatch()
        if pipeline == "lightly":
            views = _lightly_data(files, size, sw)
        else:
            views = _fastclr_data(files, size, aug, pipeline == "fastclr-workers", sw)
        runs.append(sw.cpu)
    return {s: statistics.median(r[s] for r in runs) for s in runs[0]}, views


def profile(
    pipeline: str, files: list[str], size: int, width: float, steps: int, reps: int = 3
) -> dict[str, Any]:
    """Per-stage CPU seconds of one batch of ``files`` through ``pipeline``, in this process.

    Data stages are medians over ``reps`` passes over the batch; model stages
    (``step_limit.STAGES``) medians over ``steps`` steps on the views made. Returns
    ``{"cpu_s": {stage: seconds per batch}, "parts": StepParts}``.
    """
    stem, aug = _settings(size)
    data_cpu, views = _data_stages(pipeline, files, size, aug, reps)
    cpu_dev = torch.device("cpu")
    if pipeline == "lightly":
        from lightly.loss import NTXentLoss

        x0, x1 = views
        model = _model(stem, width, contiguous=True)

        def forward() -> tuple[Tensor, Tensor]:
            return model(x0)[1], model(x1)[1]  # one forward per view, as the example does

        criterion = NTXentLoss(temperature=TEMPERATURE)
        parts = StepParts(
            forward, criterion, _lightly_optimizer(model, len(files)), cpu_dev, len(files)
        )
    else:
        from fastclr.loss import NTXentLoss
        from fastclr.optim import LARS, lars_param_groups, scaled_lr

        model = _model(stem, width)

        def forward() -> tuple[Tensor, Tensor]:
            x = torch.cat([views[0], views[1]]).contiguous(memory_format=torch.channels_last)
            z1, z2 = model(x)[1].float().chunk(2)
            return z1, z2

        opt = LARS(lars_param_groups(model), lr=scaled_lr(len(files)))
        loss = NTXentLoss(TEMPERATURE, check_finite=False)
        parts = StepParts(forward, loss, opt, cpu_dev, len(files))
    stages = time_stages(parts, steps=steps, warmup=1)
    cpu = {**data_cpu, **{s: v["cpu_s"] for s, v in stages.items() if s != "step"}}
    return {"cpu_s": cpu, "parts": parts}
