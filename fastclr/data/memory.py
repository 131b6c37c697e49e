"""The in-memory path: whole data sets as uint8 NHWC tensors (digits, small image folders).

* ``digits``: scikit-learn's 8×8 grey digits (1,797 images, 10 classes; ships with scikit-learn,
  no download), upsampled to 32×32 RGB, with a fixed stratified train / held-out split.
* image folders (layout and listing rules: :mod:`fastclr.data.files`): every file is decoded once
  by the conversion rule of :mod:`fastclr.data.decode`, its shorter side resized to the view size
  and centre-cropped to a square, and kept in memory; unreadable files are skipped, reported by
  path and counted (:class:`~fastclr.data.summary.DataSummary`), after the folder was listed
  and split (:mod:`fastclr.data.plan`, :mod:`fastclr.data.split`).
* :class:`TensorImageDataset`: the in-memory uint8 tensor (kept on the training device) that the
  training loop batches from, with deterministic per-epoch shuffling and rank sharding.

The decoded set must fit in memory, and random crops are then taken from the stored square, not
from the original image: right for digits and CIFAR-sized folders (the square is the original),
wrong for photos. Larger sets stream (:mod:`fastclr.data.stream`, :mod:`fastclr.data.dali`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from fastclr.data.decode import decode_resized_square
from fastclr.data.files import FileList
from fastclr.data.split import DIGITS_HELDOUT_FRACTION, FileSet, stratified_split
from fastclr.data.summary import DataSummary
from fastclr.errors import UsageError

__all__ = [
    "DIGITS_SIZE",
    "ImageData",
    "TensorImageDataset",
    "decode_files",
    "decode_split",
    "load_digits",
]

DIGITS_SIZE = 32


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


def load_digits(size: int = 32) -> ImageData:
    """scikit-learn's digits as ``size``×``size`` RGB uint8 with a fixed 80/20 stratified split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    grey = torch.as_tensor(bunch.images, dtype=torch.float32) * (255.0 / 16.0)  # (N, 8, 8)
    up = F.interpolate(grey.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    rgb = up.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    images = rgb.permute(0, 2, 3, 1).contiguous()  # (N, size, size, 3)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    tr, ho = stratified_split(labels, DIGITS_HELDOUT_FRACTION)
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


def decode_files(
    files: FileSet,
    size: int,
    num_workers: int,
    summary: DataSummary,
    what: str = "image files",
) -> TensorImageDataset:
    """Every readable file of ``files`` decoded to a ``size`` square (in ``num_workers``
    processes), with its label (none for unlabelled files); unreadable ones are recorded in
    ``summary`` and left out. Raises :class:`~fastclr.errors.UsageError` naming ``what`` when
    none is readable."""
    loader = torch.utils.data.DataLoader(
        _DecodeSet(files.files, size),
        batch_size=None,
        num_workers=num_workers,
    )
    chunks: list[Tensor] = []
    kept: list[Tensor] = []
    for out, ok, events in loader:
        chunks.append(out[ok])
        kept.append(ok)
        for i, kind, detail in events:
            summary.record(files.files[i], kind, detail)
    keep = torch.cat(kept)
    if not bool(keep.any()):
        raise UsageError(f"none of the {len(files)} {what} could be read")
    labelled = len(files) > 0 and int(files.labels.min()) >= 0
    labels = torch.from_numpy(files.labels)[keep] if labelled else None
    return TensorImageDataset(torch.cat(chunks), labels)


def decode_split(
    name: str,
    train: FileSet,
    heldout: FileSet | None,
    classes: list[str],
    size: int,
    num_workers: int,
    summary: DataSummary,
) -> ImageData:
    """A folder's split (:mod:`fastclr.data.split`) decoded into memory as an :class:`ImageData`."""
    n = len(train) + (len(heldout) if heldout is not None else 0)
    tr = decode_files(train, size, num_workers, summary, f"training image files of {name}")
    held = None
    if heldout is not None:
        what = f"held-out image files of {name} ({summary.skipped_count} of its {n} unreadable)"
        held = decode_files(heldout, size, num_workers, summary, what)
    return ImageData(name, tr, held, classes, summary.skipped_count, summary)
