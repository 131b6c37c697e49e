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

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from fastclr.augment.params import AugmentConfig
from fastclr.data.headers import HEADER_PROBES, evenly_spaced
from fastclr.data.memory import ImageData, TensorImageDataset, decode_files
from fastclr.data.plan import DataPlan
from fastclr.data.split import FileSet
from fastclr.data.stream import FinishViews, StreamingLoader, ViewBatch
from fastclr.data.summary import DataSummary
from fastclr.errors import UsageError
from fastclr.optional import dali_available

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
    "check_mostly_readable",
    "decoded_bytes",
    "fits_in_memory",
    "image_sides",
    "images_are_grey",
    "monitor_picks",
    "resolve_loader",
    "resolve_num_workers",
    "usable_cpus",
]

LOADERS = ("auto", "memory", "stream", "dali")
#: Most decode workers ``auto`` starts per rank (beyond this the step, not decoding, is the limit
#: on the machines we target, and each worker holds its own prefetched batches).
MAX_AUTO_WORKERS = 8
#: Largest decoded set (bytes) that ``auto`` keeps in memory.
MEMORY_AUTO_BYTES = 1 << 30
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


def image_sides(data: DataPlan) -> list[int]:
    """The shorter side (px) of the images of ``data``: of every stored image when in memory
    (one size), else of up to :data:`HEADER_PROBES` evenly spaced training files."""
    if data.memory is not None:
        h, w = data.memory.train.images.shape[1:3]
        return [min(int(h), int(w))]
    return [min(w, h) for w, h in data.headers().sizes]  # none without files


def _probe_small_squares(data: DataPlan, size: int) -> bool:
    return all(w == h and w <= size for w, h in data.headers().sizes)


def check_mostly_readable(data: DataPlan) -> None:
    """Raise :class:`~fastclr.errors.UsageError` when most of the probed files of a streamed
    data set cannot be opened (the loader would otherwise train on copies of the few that can,
    each unreadable file replaced in its batch)."""
    probe = data.headers()
    bad = probe.unreadable
    if 2 * len(bad) > probe.probed:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        raise UsageError(
            f"--data {data.name}: {len(bad)} of the {probe.probed} files looked at cannot be "
            f"opened as images ({shown}{'; ...' if len(bad) > 3 else ''}); most of the data "
            "set is unreadable"
        )


def decoded_bytes(n_images: int, image_size: int) -> int:
    """Bytes of ``n_images`` decoded to (S, S, 3) uint8 squares of side ``image_size``."""
    return n_images * image_size * image_size * 3


def fits_in_memory(n_images: int, image_size: int) -> bool:
    """The size half of the ``auto`` rule: the decoded squares take at most
    :data:`MEMORY_AUTO_BYTES` (``linear-eval`` decodes a folder in memory only then)."""
    return decoded_bytes(n_images, image_size) <= MEMORY_AUTO_BYTES


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
    choice: str, data: DataPlan, image_size: int, device: torch.device
) -> tuple[str, str]:
    """(loader, reason): the loader ``choice`` stands for on ``data`` (module docstring).

    Raises :class:`~fastclr.errors.UsageError` naming ``--loader`` for a choice the data or
    this process cannot serve.
    """
    if choice not in LOADERS:
        raise UsageError(f"--loader must be one of {', '.join(LOADERS)}, got {choice!r}")
    if not data.is_folder:
        if choice not in ("auto", "memory"):
            raise UsageError(
                f"--loader {choice} streams image files; {data.name} is an in-memory set "
                "(use --loader memory or auto, or pass an image folder as --data)"
            )
        return "memory", "the data are in memory"
    if choice == "dali" and not dali_available():
        raise UsageError(
            "--loader dali needs NVIDIA DALI: pip install 'fastclr[dali]' (or use --loader stream)"
        )
    if choice != "auto":
        return choice, "given"
    assert data.train is not None
    n = len(data.train) + (len(data.heldout) if data.heldout is not None else 0)
    size = decoded_bytes(n, image_size)
    if fits_in_memory(n, image_size) and _probe_small_squares(data, image_size):
        return "memory", (
            f"auto: {n:,} small square files, {size / 2**20:.0f} MiB decoded at {image_size} px "
            f"<= {MEMORY_AUTO_BYTES >> 20} MiB: decoded once"
        )
    if device.type == "cuda" and dali_available():
        return "dali", "auto: CUDA with NVIDIA DALI installed"
    return "stream", "auto: files larger than the views, or too many to decode once"


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
    #: decode worker processes of this loader (:func:`resolve_num_workers`)
    num_workers: int = 0


def monitor_picks(n_train: int, n_held: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of the fixed random subsets (train 4 : held-out 1) of streamed data that
    the kNN monitor decodes, within :data:`MONITOR_BYTES` at ``size`` px."""
    cap = max(2, MONITOR_BYTES // (size * size * 3))
    n_tr = min(n_train, cap * 4 // 5)
    n_ho = min(n_held, cap - n_tr)
    rng = np.random.default_rng(0)
    return np.sort(rng.permutation(n_train)[:n_tr]), np.sort(rng.permutation(n_held)[:n_ho])


def _monitor_sets(
    train: FileSet, held: FileSet, size: int, num_workers: int, summary: DataSummary
) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The monitor's subsets (:func:`monitor_picks`) decoded."""
    pick_tr, pick_ho = monitor_picks(len(train), len(held), size)
    what = "kNN monitor's {} images"
    tr = decode_files(train.select(pick_tr), size, num_workers, summary, what.format("training"))
    ho = decode_files(held.select(pick_ho), size, num_workers, summary, what.format("held-out"))
    return tr, ho


def _grey(img: np.ndarray | torch.Tensor) -> bool:
    """Whether an (H, W, 3) image has R = G = B everywhere."""
    a = np.asarray(img)
    return bool(((a[..., 0] == a[..., 1]) & (a[..., 1] == a[..., 2])).all())


def images_are_grey(data: DataPlan) -> bool:
    """Whether the training images are grayscale: R = G = B in every one of up to
    :data:`GREY_PROBES` evenly spaced images (files decoded by the one 8-bit rule of
    :mod:`fastclr.data.decode`; files that do not open are skipped, and if none opens the answer
    is False). Only those files are decoded (in memory data: none)."""
    if data.memory is not None:
        images = data.memory.train.images
        picks = evenly_spaced(len(images), GREY_PROBES)
        return len(images) > 0 and all(_grey(images[i]) for i in picks)
    from fastclr.data.decode import open_rgb

    assert data.train is not None
    files = data.train.files
    opened = 0
    for i in evenly_spaced(len(files), GREY_PROBES):
        try:
            img, _ = open_rgb(files[i])
        except Exception:
            continue  # unreadable files are the loader's business, not the rule's
        if not _grey(img):
            return False
        opened += 1
    return opened > 0


def build_train_data(
    data: DataPlan,
    *,
    loader: str,
    num_workers: int,
    crop: AugmentConfig,
    image_size: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    monitor: bool = True,
    finish_views: FinishViews | None = None,
) -> TrainData:
    """The planned ``loader`` (``memory``, ``stream`` or ``dali``) over ``data`` for this rank
    (``batch_size`` is per rank), with the kNN monitor's sets where the data have held-out
    labels (``monitor``). In-memory data not decoded yet (other ranks than the planning one)
    are decoded here. ``finish_views`` (``stream`` only; given by training): the loader's
    workers finish the views with it (:class:`~fastclr.data.stream.FinishViews`).

    Raises:
        ValueError: ``finish_views`` with another loader than ``stream``.
    """
    if finish_views is not None and loader != "stream":
        raise ValueError(f"finish_views needs the stream loader, not {loader!r}")
    if loader == "memory":
        if data.memory is None:
            data = data.decoded(image_size, num_workers)
        assert data.memory is not None
        mem = _memory_data(data.memory, batch_size, seed, rank, world_size, device, data.summary)
        mem.num_workers = num_workers
        return mem
    assert data.train is not None
    summary = data.summary
    common: dict[str, Any] = {"seed": seed, "rank": rank, "world_size": world_size}
    train = data.train
    if finish_views is not None:
        common["finish_views"] = finish_views
    batches = _file_loader(loader, train, crop, batch_size, device, num_workers, summary, common)
    mon_tr = mon_ho = None
    monitored = monitor and data.heldout is not None and len(data.heldout) > 0
    if monitored and rank == 0:
        assert data.heldout is not None
        mon_tr, mon_ho = _monitor_sets(train, data.heldout, image_size, num_workers, summary)
    if rank == 0:
        summary.report(data.name)
    return TrainData(
        loader, batches, len(train), data.classes, mon_tr, mon_ho, summary, monitored, num_workers
    )


def _file_loader(
    name: str,
    files: FileSet,
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

        return DaliLoader(
            files.files, files.labels, crop, batch_size, device=device, summary=summary, **common
        )
    return StreamingLoader(
        files.files,
        files.labels,
        crop,
        batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        summary=summary,
        **common,
    )


def _memory_data(
    data: ImageData,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    summary: DataSummary,
) -> TrainData:
    train = data.train.to(device)
    batches = MemoryLoader(
        train, batch_size, seed=seed, rank=rank, world_size=world_size, summary=summary
    )
    held = data.heldout
    monitored = held is not None and held.labels is not None and data.train.labels is not None
    return TrainData(
        "memory", batches, len(train), data.classes, data.train, held, summary, monitored
    )
