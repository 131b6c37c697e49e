"""The in-memory path: whole data sets as uint8 NHWC tensors (digits, small image folders).

* ``digits``: scikit-learn's 8×8 grey digits (1,797 images, 10 classes; ships with scikit-learn,
  no download), upsampled to 32×32 RGB, with a fixed stratified train / held-out split.
* image folders (layout and listing rules: :mod:`fastclr.data.files`): every file is decoded once
  by the conversion rule of :mod:`fastclr.data.decode`, its shorter side resized to the view size
  and centre-cropped to a square, and kept in memory; unreadable files are skipped, reported by
  path and counted (:class:`~fastclr.data.summary.DataSummary`). ``ROOT/train`` + ``ROOT/val``
  are used as the split when present, else a fixed 10% of each class is held out.
* :class:`TensorImageDataset`: the in-memory uint8 tensor (kept on the training device) that the
  training loop batches from, with deterministic per-epoch shuffling and rank sharding.

The decoded set must fit in memory, and random crops are then taken from the stored square, not
from the original image: right for digits and CIFAR-sized folders (the square is the original),
wrong for photos. Larger sets stream (:mod:`fastclr.data.stream`, :mod:`fastclr.data.dali`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.data.decode import decode_resized_square
from fastclr.data.files import FileList, list_image_folder
from fastclr.data.summary import DataSummary

__all__ = [
    "ImageData",
    "TensorImageDataset",
    "load_data",
    "load_digits",
    "load_image_folder",
]

DIGITS_HELDOUT_FRACTION = 0.2
FOLDER_HELDOUT_FRACTION = 0.1
DIGITS_SIZE = 32
SPLIT_SEED = 0  # the held-out split is fixed, independent of the training seed


class TensorImageDataset:
    """uint8 images (N, H, W, C) and optional integer labels (N,), kept on one device.

    Batches come from :meth:`batches`: a permutation drawn from ``(seed, epoch)`` only, so the
    same epoch yields the same batches after a resume, and every rank of a distributed run draws
    the same permutation and takes its stride ``perm[rank::world_size]``.
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}"
            )
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = None if labels is None else labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def to(self, device: torch.device | str) -> TensorImageDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return TensorImageDataset(self.images.to(device), labels)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Full batches each rank gets per epoch (``batch_size`` is the per-rank batch)."""
        self._check_batch(batch_size, world_size)
        return (len(self) // world_size) // batch_size

    def _check_batch(self, batch_size: int, world_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if batch_size * world_size > len(self):
            ranks = f" ({batch_size} per rank × {world_size} ranks)" if world_size > 1 else ""
            raise ValueError(
                f"batch size {batch_size * world_size}{ranks} is larger than the dataset "
                f"({len(self)} images)"
            )

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield ``(images, labels)`` full batches of this rank's shard for ``epoch``."""
        steps = self.steps_per_epoch(batch_size, world_size)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perm = torch.randperm(len(self), generator=g)
        else:
            perm = torch.arange(len(self))
        shard = perm[rank::world_size][: steps * batch_size].to(self.device)
        for i in range(steps):
            idx = shard[i * batch_size : (i + 1) * batch_size]
            yield self.images[idx], None if self.labels is None else self.labels[idx]


@dataclass
class ImageData:
    """A pretraining set and, where labels exist, a fixed held-out split for evaluation."""

    name: str
    train: TensorImageDataset
    heldout: TensorImageDataset | None
    classes: list[str] = field(default_factory=list)
    skipped: int = 0  # unreadable files left out (image folders)
    summary: DataSummary | None = None  # what was skipped, converted or left out, by path


def _stratified_split(labels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Indices (train, held-out): ``fraction`` of every class (at least one when it has ≥ 2)."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    train_idx: list[Tensor] = []
    held_idx: list[Tensor] = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_held = round(idx.numel() * fraction) if idx.numel() >= 2 else 0
        n_held = max(n_held, 1) if idx.numel() >= 2 else 0
        held_idx.append(idx[:n_held])
        train_idx.append(idx[n_held:])
    return torch.cat(train_idx).sort().values, torch.cat(held_idx).sort().values


def load_digits(size: int = 32) -> ImageData:
    """scikit-learn's digits as ``size``×``size`` RGB uint8 with a fixed 80/20 stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    grey = torch.as_tensor(bunch.images, dtype=torch.float32) * (255.0 / 16.0)  # (N, 8, 8)
    up = F.interpolate(grey.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    rgb = up.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    images = rgb.permute(0, 2, 3, 1).contiguous()  # (N, size, size, 3)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    tr, ho = _stratified_split(labels, DIGITS_HELDOUT_FRACTION)
    return ImageData(
        name="digits",
        train=TensorImageDataset(images[tr], labels[tr]),
        heldout=TensorImageDataset(images[ho], labels[ho]),
        classes=[str(i) for i in range(10)],
    )


#: Files decoded per worker task by the in-memory loader.
_CHUNK = 64


class _DecodeSet(torch.utils.data.Dataset[tuple[Tensor, Tensor, list[tuple[int, str, str]]]]):
    """Chunks of files decoded to one (n, S, S, 3) tensor each: one shared tensor per chunk.

    Returning a single tensor per chunk (not one per image) keeps the number of shared-memory
    file descriptors in flight small (many small tensors per batch is what makes PyTorch fail
    with "received 0 items of ancdata").
    """

    def __init__(self, files: FileList, size: int, chunk: int = _CHUNK) -> None:
        self.files, self.size, self.chunk = files, size, chunk

    def __len__(self) -> int:
        return (len(self.files) + self.chunk - 1) // self.chunk

    def __getitem__(self, c: int) -> tuple[Tensor, Tensor, list[tuple[int, str, str]]]:
        lo, hi = c * self.chunk, min(len(self.files), (c + 1) * self.chunk)
        out = torch.empty(hi - lo, self.size, self.size, 3, dtype=torch.uint8)
        ok = torch.zeros(hi - lo, dtype=torch.bool)
        events: list[tuple[int, str, str]] = []  # (index, "skipped" | "converted", detail)
        for j, i in enumerate(range(lo, hi)):
            try:
                arr, conversion = decode_resized_square(self.files[i], self.size)
            except Exception as e:  # any decoder failure: reported by the caller, never silent
                events.append((i, "skipped", f"{type(e).__name__}: {e}"))
                continue
            out[j].numpy()[...] = arr
            ok[j] = True
            if conversion is not None:
                events.append((i, "converted", conversion))
        return out, ok, events


def _decode_all(
    files: FileList, labels: np.ndarray, size: int, num_workers: int, summary: DataSummary
) -> tuple[Tensor, Tensor]:
    """Decode every file (in ``num_workers`` processes); returns images and labels."""
    loader = torch.utils.data.DataLoader(
        _DecodeSet(files, size),
        batch_size=None,
        num_workers=num_workers,
    )
    chunks: list[Tensor] = []
    kept: list[Tensor] = []
    for out, ok, events in loader:
        chunks.append(out[ok])
        kept.append(ok)
        for i, kind, detail in events:
            summary.record(files[i], kind, detail)
    keep = torch.cat(kept)
    if not bool(keep.any()):
        raise ValueError(f"none of the {len(files)} image files could be read")
    return torch.cat(chunks), torch.from_numpy(labels)[keep]


def _folder_set(
    root: Path, size: int, num_workers: int, summary: DataSummary
) -> tuple[TensorImageDataset, list[str]]:
    listing = list_image_folder(root)
    summary.add_listing(listing)
    images, labels = _decode_all(listing.files, listing.labels, size, num_workers, summary)
    return TensorImageDataset(images, labels if listing.classes else None), listing.classes


def load_image_folder(root: str | os.PathLike[str], size: int, num_workers: int = 0) -> ImageData:
    """Decode an image folder into memory (see the module docstring for layout and split)."""
    root = Path(root)
    summary = DataSummary()
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, classes = _folder_set(root / "train", size, num_workers, summary)
        held, held_classes = _folder_set(root / "val", size, num_workers, summary)
        if held_classes != classes:
            raise ValueError(f"{root}/train and {root}/val have different class subfolders")
        summary.report(str(root))
        return ImageData(str(root), train, held, classes, summary.skipped_count, summary)
    data, classes = _folder_set(root, size, num_workers, summary)
    summary.report(str(root))
    if data.labels is None or len(classes) < 2:
        return ImageData(str(root), data, None, classes, summary.skipped_count, summary)
    tr, ho = _stratified_split(data.labels, FOLDER_HELDOUT_FRACTION)
    return ImageData(
        str(root),
        TensorImageDataset(data.images[tr], data.labels[tr]),
        TensorImageDataset(data.images[ho], data.labels[ho]),
        classes,
        summary.skipped_count,
        summary,
    )


def load_data(spec: str, image_size: int = 32, num_workers: int = 0) -> ImageData:
    """``"digits"`` or the path of an image folder.

    Digits are always stored at 32 px (``DIGITS_SIZE``); ``image_size`` is the size image-folder
    files are decoded to. The training views' size is the augmentation's output size.
    """
    if spec == "digits":
        return load_digits(DIGITS_SIZE)
    return load_image_folder(spec, image_size, num_workers)
