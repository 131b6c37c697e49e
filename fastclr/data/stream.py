"""The streaming loader: image files decoded batch by batch in DataLoader workers.

Memory does not grow with the data set: the folder is listed up front (about 40 bytes per file,
:mod:`fastclr.data.files`), and only the batches in flight are decoded (``num_workers ×
prefetch_factor`` batches of ``V × B × S × S × 3`` bytes: 4 × 77 MB for B = 256 at 224 px).

Each batch is one task for a worker, which returns ONE uint8 tensor (V, B, S, S, 3) of crops plus
the labels (two shared-memory handles per batch, whatever B is: many small tensors per batch is
what makes PyTorch fail with "received 0 items of ancdata"). Workers are persistent, memory is
pinned when the batches go to a GPU, and ``prefetch_factor`` batches per worker are in flight.

Order and randomness come from ``(seed, epoch)`` only: the epoch's permutation is
``randperm(N)`` seeded with ``seed · 100003 + epoch`` (the rule of the in-memory
:class:`~fastclr.data.TensorImageDataset`), rank r of W takes ``perm[r::W]`` and every rank gets
``(N // W) // B`` full batches; the crop boxes of batch ``step`` are drawn from a generator
seeded by ``(seed, epoch, rank, step)``. So batch k of an epoch is the same whatever the number of
workers and wherever a run was interrupted: :meth:`StreamingLoader.epoch` with
``start_step = k`` resumes exactly.

The random resized crop is drawn (:func:`fastclr.augment.params.sample_params`, torchvision's rule)
on the ORIGINAL image size read from the file header, and applied to the original pixels
(:func:`fastclr.data.decode.decode_views`, with reduced-scale JPEG decoding where the crop allows).
The colour jitter, grey, blur, flip and normalisation are NOT done here: the uint8 crops go through
fastclr's augmentation backends (native on CPU, Triton on CUDA) with a full-image crop
(:func:`fastclr.train.views.augment_views`: the view step belongs to training).

A file that cannot be read (corrupt, vanished, rejected by the conversion rule) is replaced in
its batch by another file drawn from the same seeded stream, so neither the epoch nor the batch
size changes; its path is reported once and counted in :class:`~fastclr.data.DataSummary`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from fastclr.augment.params import AugmentConfig, sample_params
from fastclr.data.decode import BoxDraw, decode_for_boxes, decode_views, oriented_size
from fastclr.data.files import FileList
from fastclr.data.summary import DataSummary
from fastclr.errors import UsageError

__all__ = [
    "MAX_SUBSTITUTES",
    "FileBatches",
    "FinishViews",
    "StreamingLoader",
    "ViewBatch",
    "check_batching",
    "draw_boxes",
    "epoch_order",
    "mix_seed",
    "substitute",
]

#: Replacement files tried for one slot of a batch before the batch fails (then the data set is
#: mostly unreadable and the run should stop with the reasons).
MAX_SUBSTITUTES = 16
#: The event a worker returns instead of raising when a batch cannot be filled: raised in the
#: training process with its own message (a worker's exception would reach it wrapped, as
#: "Caught ... in DataLoader worker process 0", the reason lost).
FATAL = "fatal"
#: Multiplier of the seed in the epoch permutation's seed (shared with TensorImageDataset).
_EPOCH_SEED_STRIDE = 100_003
#: Last part of the seed of a batch's view parameters (FinishViews): a stream of its own.
_VIEW_STREAM = 0x5EED_7E5


class FinishViews(Protocol):
    """Finishes a batch's views in the loader's workers; given by training (data never imports
    the augmentation): ``(images, scales, boxes, seed) -> (V, B, 3, S, S)`` floating views of B
    decoded (H, W, 3) uint8 images, each decoded at 1/scale, with boxes (B, V, 4) in ORIGINAL
    pixels and an int seed for the other random parameters. Must be picklable."""

    def __call__(
        self, images: list[np.ndarray], scales: list[int], boxes: np.ndarray, seed: int
    ) -> Tensor: ...


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers (NumPy's SeedSequence hash: well mixed, stable)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def epoch_order(
    n: int, batch_size: int, *, seed: int, epoch: int, rank: int, world_size: int
) -> np.ndarray:
    """(steps, batch_size) int64 indices of this rank's full batches for ``epoch``."""
    g = torch.Generator().manual_seed(seed * _EPOCH_SEED_STRIDE + epoch)
    perm = torch.randperm(n, generator=g).numpy()
    steps = (n // world_size) // batch_size
    return perm[rank::world_size][: steps * batch_size].reshape(steps, batch_size)


def draw_boxes(sizes: np.ndarray, crop: AugmentConfig, views: int, *seed: int) -> np.ndarray:
    """(len(sizes), views, 4) crop boxes (y0, x0, h, w) drawn on the ORIGINAL (H, W) ``sizes``.

    :func:`~fastclr.augment.params.sample_params` (torchvision's rule, ``crop.scale``,
    ``crop.ratio``, ``crop.max_tries``) from a generator seeded by ``mix_seed(*seed)``.
    """
    g = torch.Generator().manual_seed(mix_seed(*seed))
    hw = torch.from_numpy(np.repeat(np.asarray(sizes, dtype=np.int64), views, axis=0))
    boxes = sample_params(hw.shape[0], hw, crop, g).crop.numpy().astype(np.int64)
    return boxes.reshape(len(sizes), views, 4)


def substitute(n: int, *seed: int) -> int:
    """The file that replaces an unreadable one: uniform over the ``n`` files, seeded."""
    return int(np.random.default_rng(mix_seed(*seed)).integers(n))


@dataclass
class ViewBatch:
    """One batch for the training loop.

    ``views`` is (V, N, S, S, 3) uint8 with every view already cropped from the original image
    (streaming loaders), or (V, N, 3, S, S) floating views already finished in the workers (a
    streaming loader given ``finish_views``), or None; ``images`` is (N, H, W, 3) uint8
    uncropped images (in-memory loader; the augmentation crops them), or None. ``labels`` is
    (N,) int64 (-1: unlabelled).
    """

    labels: Tensor
    views: Tensor | None = None
    images: Tensor | None = None

    def to(self, device: torch.device) -> ViewBatch:
        nb = device.type == "cuda"
        return ViewBatch(
            self.labels.to(device, non_blocking=nb),
            None if self.views is None else self.views.to(device, non_blocking=nb),
            None if self.images is None else self.images.to(device, non_blocking=nb),
        )


def _fixed(boxes: np.ndarray) -> BoxDraw:
    """A box draw that ignores the size: the boxes were drawn from the header already."""

    def draw(height: int, width: int) -> np.ndarray:
        return boxes

    return draw


class _Decoder(torch.utils.data.Dataset[tuple[Tensor, Tensor, list[tuple[int, str, str]]]]):
    """Decodes one whole batch per task: key = (epoch, step, indices)."""

    def __init__(
        self,
        files: FileList,
        labels: np.ndarray,
        crop: AugmentConfig,
        views: int,
        seed: int,
        rank: int,
        draft: bool,
        finish: FinishViews | None = None,
    ) -> None:
        self.files, self.labels, self.crop = files, labels, crop
        self.views, self.seed, self.rank, self.draft = views, seed, rank, draft
        self.finish = finish
        self.bad: set[int] = set()  # files this worker already found unreadable

    def __len__(self) -> int:  # not used: the sampler hands out keys
        return len(self.files)

    def _boxes(self, sizes: np.ndarray, *seed: int) -> np.ndarray:
        return draw_boxes(sizes, self.crop, self.views, self.seed, *seed)

    def _header(self, i: int) -> tuple[int, int]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return oriented_size(im)

    def __getitem__(
        self, key: tuple[int, int, np.ndarray]
    ) -> tuple[Tensor, Tensor, list[tuple[int, str, str]]]:
        epoch, step, idx = key
        b, s, v = len(idx), self.crop.size, self.views
        out = torch.empty(v, b, s, s, 3, dtype=torch.uint8)
        # written through NumPy: a plain memcpy (a torch copy per image may fan out to OpenMP
        # threads, which costs more than the copy on a busy machine)
        out_np = out.numpy()
        labels = torch.empty(b, dtype=torch.int64)
        events: list[tuple[int, str, str]] = []
        current = [int(i) for i in idx]
        decoded: list[tuple[np.ndarray, int, np.ndarray]] = []  # with finish: (rgb, scale, boxes)
        sizes = np.zeros((b, 2), dtype=np.int64)
        ok = np.zeros(b, dtype=bool)
        for j, i in enumerate(current):
            if i in self.bad:
                continue
            try:
                sizes[j] = self._header(i)
                ok[j] = True
            except Exception as e:  # unreadable header, vanished file: replaced below
                self.bad.add(i)
                events.append((i, "skipped", f"{type(e).__name__}: {e}"))
        boxes = self._boxes(np.where(ok[:, None], sizes, 1), epoch, self.rank, step)
        for j in range(b):
            attempt = 0
            box = boxes[j] if ok[j] else None
            while True:
                i = current[j]
                if box is not None:
                    try:
                        arr, conversion = self._decode(i, box, s, decoded)
                    except Exception as e:  # corrupt data, conversion rule, vanished file
                        self.bad.add(i)
                        events.append((i, "skipped", f"{type(e).__name__}: {e}"))
                    else:
                        if arr is not None:
                            out_np[:, j] = arr
                        labels[j] = int(self.labels[i])
                        if conversion is not None:
                            events.append((i, "converted", conversion))
                        break
                attempt += 1
                if attempt > MAX_SUBSTITUTES:  # said by the main process, with the reasons
                    reasons = "; ".join(f"{self.files[k]}: {d}" for k, _, d in events[-3:])
                    message = (
                        f"{MAX_SUBSTITUTES} files in a row could not be read ({reasons}); "
                        "is the data set mostly unreadable?"
                    )
                    return out, labels, [*events, (-1, FATAL, message)]
                current[j] = substitute(
                    len(self.files), self.seed, epoch, self.rank, step, j, attempt
                )
                box = None
                if current[j] in self.bad:
                    continue
                try:
                    hw = np.asarray([self._header(current[j])], dtype=np.int64)
                except Exception as e:
                    self.bad.add(current[j])
                    events.append((current[j], "skipped", f"{type(e).__name__}: {e}"))
                    continue
                box = self._boxes(hw, epoch, self.rank, step, j, attempt)[0]
        if self.finish is not None:
            rgbs, scales, used = zip(*decoded, strict=True)
            seed = mix_seed(self.seed, epoch, self.rank, step, _VIEW_STREAM)
            out = self.finish(list(rgbs), list(scales), np.stack(used), seed)
        return out, labels, events

    def _decode(
        self, i: int, box: np.ndarray, size: int, decoded: list[tuple[np.ndarray, int, np.ndarray]]
    ) -> tuple[np.ndarray | None, str | None]:
        """Crops of file ``i`` (V, S, S, 3) uint8, or, with ``finish``, its decode kept for it."""
        if self.finish is None:
            arr, conversion, _ = decode_views(self.files[i], _fixed(box), size, self.draft)
            return arr, conversion
        rgb, boxes, conversion, scale = decode_for_boxes(
            self.files[i], _fixed(box), size, self.draft
        )
        decoded.append((rgb, scale, boxes))
        return None, conversion


class _Keys:
    """The sampler: yields (epoch, step, indices) from the current position, set per epoch."""

    def __init__(self) -> None:
        self.epoch = 0
        self.order = np.zeros((0, 0), dtype=np.int64)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for step in range(self.start, len(self.order)):
            yield self.epoch, step, self.order[step]

    def __len__(self) -> int:
        return max(0, len(self.order) - self.start)


def check_batching(
    batch_size: int, seed: int, rank: int, world_size: int, num_workers: int | None = None
) -> None:
    """The folder loaders' checks of their batching arguments: a ValueError naming the first
    one out of range (``num_workers`` only where the loader has workers)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")


class FileBatches:
    """What the folder loaders (:class:`StreamingLoader`, :class:`~fastclr.data.dali.DaliLoader`)
    share: this rank's full batches of each epoch's shuffled files (module docstring)."""

    files: FileList
    batch_size: int
    seed: int
    rank: int
    world_size: int

    @property
    def steps_per_epoch(self) -> int:
        """Full batches each rank gets per epoch."""
        return (len(self.files) // self.world_size) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """(steps, batch_size) file indices of this rank's batches in ``epoch``, before any skip."""
        return epoch_order(
            len(self.files),
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _check_start(self, start_step: int) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is not in [0, {self.steps_per_epoch}]")


class StreamingLoader(FileBatches):
    """Batches of uint8 crops of image files, decoded in DataLoader workers (module docstring).

    Args:
        files, labels: the listing (:func:`fastclr.data.list_image_folder`); labels -1 when
            unlabelled.
        crop: the augmentation config whose crop part (size, scale, ratio, max_tries) is drawn
            here; its colour part is applied later by :func:`augment_views`.
        batch_size: images per batch on this rank.
        seed, rank, world_size: order and sharding (module docstring).
        num_workers: decoding processes (0: in this process).
        prefetch_factor: batches in flight per worker.
        pin_memory: pin batches (for a CUDA training device).
        draft: reduced-scale JPEG decoding where the crop allows it.
        views: crops per image (SimCLR: 2).
        summary: where skipped and converted files are counted (a new one by default).
        finish_views: when given (by training), the workers also finish the views: they call it
            with each batch's decoded images and boxes, and the batches carry its floating
            (V, B, 3, S, S) views instead of uint8 crops (:class:`FinishViews`).
    """

    def __init__(
        self,
        files: FileList,
        labels: np.ndarray,
        crop: AugmentConfig,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
        draft: bool = True,
        views: int = 2,
        summary: DataSummary | None = None,
        finish_views: FinishViews | None = None,
    ) -> None:
        check_batching(batch_size, seed, rank, world_size, num_workers)
        if len(labels) != len(files):
            raise ValueError(f"{len(labels)} labels for {len(files)} files")
        if (len(files) // world_size) // batch_size < 1:
            ranks = f" × {world_size} ranks" if world_size > 1 else ""
            raise ValueError(
                f"batch size {batch_size}{ranks} is larger than the dataset ({len(files)} images)"
            )
        self.files, self.labels, self.crop = files, labels, crop
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.views = views
        self.summary = summary if summary is not None else DataSummary()
        self._keys = _Keys()
        decoder = _Decoder(files, labels, crop, views, seed, rank, draft, finish_views)
        self._loader = torch.utils.data.DataLoader(
            decoder,
            batch_size=None,
            sampler=self._keys,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """The batches of ``epoch`` from ``start_step`` on (resume: the same batches as before)."""
        self._check_start(start_step)
        self._keys.epoch, self._keys.order, self._keys.start = epoch, self.order(epoch), start_step
        for views, labels, events in self._loader:
            for i, kind, detail in events:
                if kind == FATAL:
                    raise UsageError(f"{self.files.root}: {detail}")
                self.summary.record(self.files[i], kind, detail)
            yield ViewBatch(labels=labels, views=views)
