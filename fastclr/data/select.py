"""Which loader a run uses, and building it: ``memory``, ``stream`` or ``dali`` (or ``auto``).

Rule for ``auto`` (:func:`resolve_loader`):

1. ``digits`` (the embedded set) is always in memory.
2. An image folder is loaded in memory when the decoded set is small AND decoding once loses
   nothing: N · S · S · 3 bytes ≤ :data:`MEMORY_AUTO_BYTES` (1 GiB) for N files at view size S,
   and the headers of up to :data:`HEADER_PROBES` files spread over the listing are all square
   and at most S pixels (CIFAR-like folders: the stored square IS the original image).
3. Otherwise the folder streams: with DALI (``dali``) when training on CUDA and
   ``nvidia.dali`` imports, else in DataLoader workers (``stream``).

Every loader yields :class:`~fastclr.data.stream.ViewBatch` from ``epoch(epoch, start_step)``,
draws its order from ``(seed, epoch)``, shards by rank and resumes mid-epoch exactly.

Decode workers (``num_workers=None``, the default, is ``auto``; :func:`resolve_num_workers`):
the streaming loader gets ``min(8, usable CPUs per local rank - 1)`` worker processes (the CPUs
this process may run on, ``os.sched_getaffinity``, split over torchrun's ``LOCAL_WORLD_SIZE``
ranks, one left for the training process itself); the in-memory and DALI loaders get 0 (the first
decodes once and then only indexes a tensor, the second decodes with DALI's own threads). An
explicit count is used as given.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fastclr.augment.params import AugmentConfig
from fastclr.data.files import FileList, FolderListing, list_image_folder
from fastclr.data.memory import (
    FOLDER_HELDOUT_FRACTION,
    ImageData,
    TensorImageDataset,
    _decode_all,
    _stratified_split,
    load_data,
    load_digits,
)
from fastclr.data.stream import StreamingLoader, ViewBatch
from fastclr.data.summary import DataSummary

__all__ = [
    "HEADER_PROBES",
    "LOADERS",
    "MAX_AUTO_WORKERS",
    "MEMORY_AUTO_BYTES",
    "MONITOR_BYTES",
    "BatchLoader",
    "MemoryLoader",
    "TrainData",
    "build_train_data",
    "count_train_images",
    "dali_available",
    "decoded_bytes",
    "fits_in_memory",
    "images_are_grey",
    "resolve_loader",
    "resolve_num_workers",
    "train_listing",
    "usable_cpus",
]

LOADERS = ("auto", "memory", "stream", "dali")
#: Most decode workers ``auto`` starts per rank (beyond this the step, not decoding, is the limit
#: on the machines we target, and each worker holds its own prefetched batches).
MAX_AUTO_WORKERS = 8
#: Largest decoded set (bytes) that ``auto`` keeps in memory.
MEMORY_AUTO_BYTES = 1 << 30
#: Files whose headers ``auto`` reads to see whether they are small squares.
HEADER_PROBES = 100
#: Images decoded (evenly spaced over the training set) to decide whether the data are grayscale.
GREY_PROBES = 32
#: Decoded bytes of the kNN monitor's subsets (train + held-out) for streamed data: the monitor
#: uses at most this many images' worth of a fixed random subset, whatever the data set's size.
MONITOR_BYTES = 256 << 20


class BatchLoader(Protocol):
    """What the training loop needs from a loader."""

    summary: DataSummary

    @property
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]: ...


def dali_available() -> bool:
    """True when ``nvidia.dali`` can be imported (the ``dali`` extra)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


class MemoryLoader:
    """:class:`TensorImageDataset` batches as :class:`ViewBatch` (uncropped images)."""

    def __init__(
        self,
        data: TensorImageDataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        summary: DataSummary | None = None,
    ) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.summary = summary if summary is not None else DataSummary()
        self.steps_per_epoch = data.steps_per_epoch(batch_size, world_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        it = self.data.batches(
            self.batch_size, seed=self.seed, epoch=epoch, rank=self.rank, world_size=self.world_size
        )
        for step, (images, labels) in enumerate(it):
            if step < start_step:
                continue
            if labels is None:
                labels = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
            yield ViewBatch(labels=labels, images=images)


def _evenly_spaced(n: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced indices of ``range(n)``, first and last included."""
    return [int(i) for i in np.linspace(0, n - 1, min(n, k)).astype(np.int64)]


def _probe_small_squares(files: FileList, size: int) -> bool:
    from PIL import Image

    for i in _evenly_spaced(len(files), HEADER_PROBES):
        try:
            with Image.open(files[i]) as im:
                w, h = im.size
        except Exception:
            continue  # unreadable files are the loader's business, not the rule's
        if w != h or w > size:
            return False
    return True


def decoded_bytes(n_images: int, image_size: int) -> int:
    """Bytes of ``n_images`` decoded to (S, S, 3) uint8 squares of side ``image_size``."""
    return n_images * image_size * image_size * 3


def fits_in_memory(n_images: int, image_size: int) -> bool:
    """The size half of the ``auto`` rule: the decoded squares take at most
    :data:`MEMORY_AUTO_BYTES` (``linear-eval`` decodes a folder in memory only then)."""
    return decoded_bytes(n_images, image_size) <= MEMORY_AUTO_BYTES


def _train_root(spec: str) -> tuple[Path, Path | None]:
    root = Path(spec)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / "train", root / "val"
    return root, None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_num_workers(
    requested: int | None,
    loader_name: str,
    cpus: int | None = None,
    local_ranks: int | None = None,
) -> tuple[int, str]:
    """The decode workers of a run and why (module docstring): ``(count, reason)``.

    Args:
        requested: ``--num-workers`` (``None``: auto).
        loader_name: the resolved loader (``memory``, ``stream`` or ``dali``).
        cpus: usable CPUs (default :func:`usable_cpus`).
        local_ranks: processes on this machine (default ``$LOCAL_WORLD_SIZE``, else 1).
    """
    if requested is not None:
        return requested, "--num-workers"
    if loader_name == "memory":
        return 0, "auto: 0 for the in-memory loader"
    if loader_name == "dali":
        return 0, "auto: DALI decodes in its own threads"
    cpus = usable_cpus() if cpus is None else cpus
    if local_ranks is None:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    per_rank = max(1, cpus // max(1, local_ranks))
    n = max(0, min(MAX_AUTO_WORKERS, per_rank - 1))
    return n, (
        f"auto: min({MAX_AUTO_WORKERS}, {per_rank} usable CPU{'s' if per_rank != 1 else ''} "
        "per local rank - 1)"
    )


def resolve_loader(
    choice: str, data: str, image_size: int, device: torch.device, listing: FolderListing | None
) -> str:
    """The loader ``choice`` stands for (module docstring); errors name ``loader``."""
    if choice not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {choice!r}")
    if data == "digits":
        if choice not in ("auto", "memory"):
            raise ValueError(
                f"loader={choice!r} streams image files; digits is an in-memory set "
                "(use loader 'memory' or 'auto', or pass an image folder as data)"
            )
        return "memory"
    if choice == "dali" and not dali_available():
        raise ValueError(
            "loader='dali' needs NVIDIA DALI: pip install 'fastclr[dali]' (or use loader 'stream')"
        )
    if choice != "auto":
        return choice
    assert listing is not None
    if fits_in_memory(len(listing), image_size) and _probe_small_squares(listing.files, image_size):
        return "memory"
    if device.type == "cuda" and dali_available():
        return "dali"
    return "stream"


@dataclass
class TrainData:
    """The training batches and the kNN monitor's (bounded) labelled subsets."""

    loader_name: str
    loader: BatchLoader
    n_images: int
    classes: list[str]
    monitor_train: TensorImageDataset | None
    monitor_heldout: TensorImageDataset | None
    summary: DataSummary = field(default_factory=DataSummary)
    #: whether the kNN monitor runs (the same on every rank; the sets exist on rank 0 at least)
    monitored: bool = False
    #: decode worker processes of this loader, and why that many (:func:`resolve_num_workers`)
    num_workers: int = 0
    num_workers_reason: str = ""


def _monitor_sets(
    train: FileList,
    train_labels: np.ndarray,
    held: FileList,
    held_labels: np.ndarray,
    size: int,
    num_workers: int,
    summary: DataSummary,
) -> tuple[TensorImageDataset, TensorImageDataset]:
    """Fixed random subsets (train 4 : held-out 1) decoded within MONITOR_BYTES."""
    cap = max(2, MONITOR_BYTES // (size * size * 3))
    n_tr = min(len(train), cap * 4 // 5)
    n_ho = min(len(held), cap - n_tr)
    rng = np.random.default_rng(0)
    pick_tr = np.sort(rng.permutation(len(train))[:n_tr])
    pick_ho = np.sort(rng.permutation(len(held))[:n_ho])
    x_tr, y_tr = _decode_all(
        train.select(pick_tr), train_labels[pick_tr], size, num_workers, summary
    )
    x_ho, y_ho = _decode_all(held.select(pick_ho), held_labels[pick_ho], size, num_workers, summary)
    return TensorImageDataset(x_tr, y_tr), TensorImageDataset(x_ho, y_ho)


def train_listing(data: str | ImageData) -> FolderListing | None:
    """The listing of an image folder's training files (``ROOT/train`` in the ImageNet layout);
    None for in-memory data and the embedded digits. Lets :func:`count_train_images` and
    :func:`images_are_grey` share one listing."""
    if isinstance(data, ImageData) or data == "digits":
        return None
    return list_image_folder(_train_root(data)[0])


def count_train_images(data: str | ImageData, listing: FolderListing | None = None) -> int:
    """How many images a run on ``data`` trains on (the held-out part excluded), from the listing
    alone: nothing is decoded, so the batch size can be chosen before any loader is built.

    ``listing``: :func:`train_listing` of ``data``, where the caller already has it.
    """
    if isinstance(data, ImageData):
        return len(data.train)
    if data == "digits":
        return len(load_digits().train)
    if listing is None:
        listing = list_image_folder(_train_root(data)[0])
    n = len(listing.files)
    if _train_root(data)[1] is None and len(listing.classes) >= 2:
        n -= int(_stratified_split(torch.from_numpy(listing.labels), _HELD)[1].numel())
    return n


def _grey(img: np.ndarray | torch.Tensor) -> bool:
    """Whether an (H, W, 3) image has R = G = B everywhere."""
    a = np.asarray(img)
    return bool(((a[..., 0] == a[..., 1]) & (a[..., 1] == a[..., 2])).all())


def images_are_grey(data: str | ImageData, listing: FolderListing | None = None) -> bool:
    """Whether the training images are grayscale: R = G = B in every one of up to
    :data:`GREY_PROBES` evenly spaced images (files decoded by the one 8-bit rule of
    :mod:`fastclr.data.decode`; files that do not open are skipped, and if none opens the answer
    is False). Nothing else is decoded, so the augmentation can be chosen before any loader.

    ``listing``: :func:`train_listing` of ``data``, where the caller already has it.
    """
    if isinstance(data, ImageData):
        images = data.train.images
        picks = _evenly_spaced(len(images), GREY_PROBES)
        return len(images) > 0 and all(_grey(images[i]) for i in picks)
    if data == "digits":
        return True
    from fastclr.data.decode import open_rgb

    files = (listing if listing is not None else list_image_folder(_train_root(data)[0])).files
    opened = 0
    for i in _evenly_spaced(len(files), GREY_PROBES):
        try:
            img, _ = open_rgb(files[i])
        except Exception:
            continue  # unreadable files are the loader's business, not the rule's
        if not _grey(img):
            return False
        opened += 1
    return opened > 0


def build_train_data(
    data: str | ImageData,
    *,
    loader: str,
    crop: AugmentConfig,
    image_size: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    num_workers: int | None,
    monitor: bool = True,
) -> TrainData:
    """Resolve ``loader`` and build it for this rank (``batch_size`` is per rank).

    ``num_workers=None``: as many decode workers as :func:`resolve_num_workers` says.
    """
    if isinstance(data, ImageData):
        if loader not in ("auto", "memory"):
            raise ValueError(f"loader={loader!r} needs an image folder, not an in-memory ImageData")
        return _memory_data(data, "memory", batch_size, seed, rank, world_size, device)
    listing = held_listing = None
    if data != "digits":
        train_root, held_root = _train_root(data)
        listing = list_image_folder(train_root)
        held_listing = list_image_folder(held_root) if held_root is not None else None
    name = resolve_loader(loader, data, image_size, device, listing)
    workers, why = resolve_num_workers(num_workers, name)
    if name == "memory":
        loaded = load_data(data, image_size, workers)
        mem = _memory_data(loaded, name, batch_size, seed, rank, world_size, device)
        mem.num_workers, mem.num_workers_reason = workers, why
        return mem
    assert listing is not None
    summary = DataSummary()
    main = rank == 0  # the listing and its summary are the same on every rank: said once
    summary.add_listing(listing, warn=main)
    files, labels = listing.files, listing.labels
    if held_listing is not None:
        summary.add_listing(held_listing, warn=main)
        if held_listing.classes != listing.classes:
            raise ValueError(f"{data}/train and {data}/val have different class subfolders")
        held_files, held_labels = held_listing.files, held_listing.labels
    elif len(listing.classes) >= 2:
        tr, ho = (t.numpy() for t in _stratified_split(torch.from_numpy(labels), _HELD))
        held_files, held_labels = files.select(ho), labels[ho]
        files, labels = files.select(tr), labels[tr]
    else:
        held_files, held_labels = None, None
    common: dict[str, Any] = {"seed": seed, "rank": rank, "world_size": world_size}
    batches = _file_loader(name, files, labels, crop, batch_size, device, workers, summary, common)
    mon_tr = mon_ho = None
    monitored = monitor and held_files is not None and held_labels is not None
    if monitored and rank == 0:
        assert held_files is not None and held_labels is not None
        mon_tr, mon_ho = _monitor_sets(
            files, labels, held_files, held_labels, image_size, workers, summary
        )
    if main:
        summary.report(str(data))
    return TrainData(
        name, batches, len(files), listing.classes, mon_tr, mon_ho, summary, monitored,
        workers, why,
    )  # fmt: skip


def _file_loader(
    name: str,
    files: FileList,
    labels: np.ndarray,
    crop: AugmentConfig,
    batch_size: int,
    device: torch.device,
    workers: int,
    summary: DataSummary,
    common: dict[str, Any],
) -> BatchLoader:
    """The ``"dali"`` or ``"stream"`` loader over ``files``; ``common``: seed, rank, world_size."""
    if name == "dali":
        from fastclr.data.dali import DaliLoader

        return DaliLoader(files, labels, crop, batch_size, device=device, summary=summary, **common)
    return StreamingLoader(
        files,
        labels,
        crop,
        batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        summary=summary,
        **common,
    )


_HELD = FOLDER_HELDOUT_FRACTION


def _memory_data(
    data: ImageData,
    name: str,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> TrainData:
    train = data.train.to(device)
    summary = data.summary if data.summary is not None else DataSummary()
    batches = MemoryLoader(
        train, batch_size, seed=seed, rank=rank, world_size=world_size, summary=summary
    )
    held = data.heldout
    monitored = held is not None and held.labels is not None and data.train.labels is not None
    return TrainData(name, batches, len(train), data.classes, data.train, held, summary, monitored)
