"""Frozen-encoder features of labelled images for evaluation: decoded in memory, or streamed.

* in memory (:func:`extract_features`): a :class:`~fastclr.data.TensorImageDataset` (digits, or
  a folder decoded whole), encoded batch by batch;
* streamed (:func:`stream_features`): the files are decoded :data:`STREAM_BATCH` at a time in
  DataLoader worker processes by the in-memory loader's own decode
  (:func:`~fastclr.data.decode.decode_resized_square`: shorter side → S, centre square), so each
  image gives the same uint8 square, and the same features, as in memory. Only the (N, F) fp32
  features and the labels are kept: memory is N · F · 4 bytes plus the batches in flight
  (``num_workers × 2`` batches of ``STREAM_BATCH × S × S × 3`` bytes: 38 MB each at 224 px).

:func:`eval_data` picks the path for an image folder by the size half of the pretraining loader's
``auto`` rule (:func:`fastclr.data.select.fits_in_memory`: N · S² · 3 ≤ 1 GiB for the N files of
train and held-out together): a folder within it is decoded in memory, a larger one streams. The
split is the one every command uses (:mod:`fastclr.data.split`: ``ROOT/train`` + ``ROOT/val``
when both exist, else the fixed stratified 10% of each class), made on the listing, so both paths
hold out the same files. Unreadable files are skipped, reported by path and counted
(:class:`~fastclr.data.DataSummary`), never fatal unless none can be read.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastclr.data import ImageData, TensorImageDataset, plan_data, select
from fastclr.data.memory import _DecodeSet
from fastclr.data.select import decoded_bytes, fits_in_memory, resolve_num_workers
from fastclr.data.split import FileSet
from fastclr.data.summary import DataSummary
from fastclr.errors import UsageError

__all__ = [
    "STREAM_BATCH",
    "EvalData",
    "FileSet",
    "eval_data",
    "extract_features",
    "prepare_images",
    "stream_features",
]

#: Files decoded per worker task, and encoded per forward, on the streamed path (38 MB of uint8
#: at 224 px; workers × 2 of them are in flight).
STREAM_BATCH = 256


def prepare_images(x: Tensor, mean: Tensor, std: Tensor, image_size: int) -> Tensor:
    """uint8 (N, H, W, 3) → the encoder's input: [0, 1], resized to ``image_size`` where needed
    (bilinear, antialiased), normalised by ``mean``/``std`` (1, 3, 1, 1), channels_last."""
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _stats(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> tuple[Tensor, Tensor]:
    m = torch.tensor(tuple(mean), device=device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), device=device).view(1, 3, 1, 1)
    return m, s


@contextmanager
def _eval_mode(encoder: nn.Module) -> Iterator[None]:
    """``encoder`` in eval mode for the block, its training flag restored after."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def _bar(total: int, label: str | None) -> Any:
    """A tqdm bar over ``total`` steps on stderr (none when ``label`` is None)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, disable=label is None, file=sys.stderr, leave=False)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: TensorImageDataset,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    device: torch.device | str,
    batch_size: int = 512,
    progress: str | None = None,
) -> Tensor:
    """Encoder features (N, F) in fp32 of every image of ``dataset``, in eval mode.

    ``progress``: the label of a tqdm bar over the batches (on stderr); None shows none.
    """
    device = torch.device(device)
    m, s = _stats(mean, std, device)
    feats: list[Tensor] = []
    bar = _bar(len(range(0, len(dataset), batch_size)), progress)
    with _eval_mode(encoder):
        for i in range(0, len(dataset), batch_size):
            x = dataset.images[i : i + batch_size].to(device)
            feats.append(encoder(prepare_images(x, m, s, image_size)).float())
            bar.update(1)
    bar.close()
    return torch.cat(feats)


@torch.no_grad()
def stream_features(
    encoder: nn.Module,
    data: FileSet,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    device: torch.device | str,
    *,
    num_workers: int = 0,
    batch_size: int = STREAM_BATCH,
    summary: DataSummary | None = None,
    progress: str | None = None,
) -> tuple[Tensor, Tensor]:
    """(features (n, F) fp32, labels (n,)) of the files of ``data`` that could be read.

    Each file is decoded to a ``image_size`` square as in memory, in ``num_workers`` processes,
    ``batch_size`` files per task and forward; unreadable ones are recorded in ``summary`` and
    left out. Raises ``ValueError`` when none can be read.
    """
    device = torch.device(device)
    summary = summary if summary is not None else DataSummary()
    m, s = _stats(mean, std, device)
    loader = torch.utils.data.DataLoader(
        _DecodeSet(data.files, image_size, batch_size),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    kept = np.zeros(len(data), dtype=bool)
    feats: Tensor | None = None  # allocated once F is known: (N, F), filled in order
    n = 0
    bar = _bar(len(loader), progress)
    with _eval_mode(encoder):
        for c, (images, ok, events) in enumerate(loader):
            for i, kind, detail in events:
                summary.record(data.files[i], kind, detail)
            kept[c * batch_size : c * batch_size + len(ok)] = ok.numpy()
            if bool(ok.any()):
                x = images if bool(ok.all()) else images[ok]
                f = encoder(prepare_images(x.to(device), m, s, image_size)).float()
                if feats is None:
                    feats = torch.empty(len(data), f.shape[1], device=device)
                feats[n : n + len(f)] = f
                n += len(f)
            bar.update(1)
    bar.close()
    if feats is None:
        raise UsageError(f"none of the {len(data)} image files could be read")
    return feats[:n], torch.from_numpy(data.labels[kept]).to(device)


@dataclass
class EvalData:
    """The labelled train and held-out parts of an evaluation, in memory or as files.

    ``how`` says which path was taken, for the header; ``summary`` counts what was skipped.
    """

    name: str
    classes: list[str]
    train: TensorImageDataset | FileSet
    heldout: TensorImageDataset | FileSet | None
    how: str
    num_workers: int = 0
    summary: DataSummary = field(default_factory=DataSummary)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, FileSet)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def eval_data(data: str | ImageData, image_size: int, num_workers: int | None) -> EvalData:
    """Plan the evaluation of ``data`` (module docstring): an in-memory set, or file lists.

    The folder is listed and split once (:func:`~fastclr.data.plan.plan_data`, the split every
    fastclr command uses). ``num_workers=None``:
    :func:`~fastclr.data.select.resolve_num_workers` (auto).
    """
    plan = plan_data(data)
    if not plan.is_folder:
        assert plan.memory is not None
        how = "decoded in memory (digits)" if data == "digits" else "given in memory"
        return _in_memory(plan.memory, how, 0)
    assert plan.train is not None
    n = len(plan.train) + (len(plan.heldout) if plan.heldout is not None else 0)
    size = decoded_bytes(n, image_size)
    if fits_in_memory(n, image_size):
        workers, _ = resolve_num_workers(num_workers, "memory")
        loaded = plan.decoded(image_size, workers).memory
        assert loaded is not None
        plan.summary.report(plan.name)
        how = (
            f"decoded in memory ({n:,} files at {image_size} px: {_gib(size)} <= "
            f"{_gib(select.MEMORY_AUTO_BYTES)}), {workers} worker{'s' if workers != 1 else ''}"
        )
        return _in_memory(loaded, how, workers)
    workers, why = resolve_num_workers(num_workers, "stream")
    how = (
        f"streamed from {n:,} files, {workers} worker{'s' if workers != 1 else ''} "
        f"({why}; decoded at {image_size} px they would take {_gib(size)} > "
        f"{_gib(select.MEMORY_AUTO_BYTES)})"
    )
    return EvalData(plan.name, plan.classes, plan.train, plan.heldout, how, workers, plan.summary)


def _in_memory(data: ImageData, how: str, workers: int) -> EvalData:
    summary = data.summary if data.summary is not None else DataSummary()
    classes = data.classes if data.train.labels is not None else []
    return EvalData(data.name, classes, data.train, data.heldout, how, workers, summary)
