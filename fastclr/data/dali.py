"""The streaming loader with NVIDIA DALI: nvJPEG decoding on the GPU (``device="mixed"``).

Needs the ``dali`` extra (``pip install 'fastclr[dali]'``); DALI is imported lazily, and
:func:`import_dali` raises an ImportError naming the extra when it is missing.

Same contract as :class:`~fastclr.data.stream.StreamingLoader` (order, sharding, exact mid-epoch
resume, crops drawn on the ORIGINAL size, unreadable files replaced and counted); only who decodes
differs. Per batch, this process reads the encoded files and their headers, draws the crop boxes on
the original sizes with :func:`~fastclr.data.stream.draw_boxes` (the same draw as the streaming
loader), and feeds bytes and boxes to one DALI graph::

    external_source(encoded bytes) → fn.decoders.image(RGB; "mixed" on a GPU, "cpu" otherwise)
      → per view: fn.resize(roi_start, roi_end = the box, S × S, bilinear, no antialias), uint8

The uint8 views, on the training device, then go through fastclr's augmentation (Triton on CUDA)
like the streaming loader's. ``device_id=None`` runs the same graph on the CPU: that is how CI
tests it.

Differences from the streaming loader, by DALI's design:

* the resize samples the box at the same coordinates but reads the neighbouring pixel beyond the
  box edge for the outermost half pixel (the streaming loader clamps to the box's edge pixels);
  with no reduced-scale decoding, every crop is sampled from the full-resolution image;
* the decoder does its own colour conversion (CMYK, palette, grey → RGB); files the conversion
  rule of :mod:`fastclr.data.decode` would rescale (16-bit, float) and formats DALI does not
  decode (GIF) are skipped, reported and counted: use the ``stream`` loader for them;
* a file whose header reads but whose data is corrupt fails the DALI batch: the batch's files are
  then decoded with PIL to find it, it is replaced, the graph is rebuilt and the same batch is run
  again (so the batch and the epoch still come out complete and in order).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fastclr.augment.params import AugmentConfig
from fastclr.data.files import FileList
from fastclr.data.stream import (
    MAX_SUBSTITUTES,
    FileBatches,
    ViewBatch,
    check_batching,
    draw_boxes,
    substitute,
)
from fastclr.data.summary import DataSummary
from fastclr.data.validate import check_file
from fastclr.optional import import_dali

__all__ = ["DaliLoader"]

#: PIL modes DALI's decoder turns into 8-bit RGB the way fastclr's rule does.
_DALI_MODES = ("RGB", "L", "1", "P", "PA", "LA", "RGBA", "CMYK", "YCbCr")
_DALI_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "MPO")


def _header(data: bytes) -> tuple[int, int]:
    """(H, W) from the encoded bytes; raises for files DALI should not be given."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format not in _DALI_FORMATS:
            raise ValueError(f"{im.format} files are not decoded by DALI (use loader 'stream')")
        if im.mode not in _DALI_MODES:
            raise ValueError(
                f"{im.mode} pixels need fastclr's conversion rule (use loader 'stream')"
            )
        w, h = im.size
    return h, w


class DaliLoader(FileBatches):
    """Batches of uint8 crops decoded by DALI (module docstring).

    Args:
        files, labels, crop, batch_size, seed, rank, world_size, views, summary: as
            :class:`~fastclr.data.stream.StreamingLoader`.
        device: the training device: CUDA decodes with nvJPEG on it, CPU runs DALI's CPU graph.
        num_threads: DALI CPU threads.
    """

    def __init__(
        self,
        files: FileList,
        labels: np.ndarray,
        crop: AugmentConfig,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_threads: int = 4,
        views: int = 2,
        summary: DataSummary | None = None,
    ) -> None:
        import_dali()
        check_batching(batch_size, seed, rank, world_size)
        if (len(files) // world_size) // batch_size < 1:
            raise ValueError(
                f"batch size {batch_size} × {world_size} ranks is larger than the dataset "
                f"({len(files)} images)"
            )
        self.files, self.labels, self.crop = files, labels, crop
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.views, self.num_threads = views, num_threads
        self.device = torch.device(device)
        self.device_id = None if self.device.type == "cpu" else (self.device.index or 0)
        self.summary = summary if summary is not None else DataSummary()
        self.bad: set[int] = set()
        self._pipe: Any = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _build(self) -> Any:
        fn, types, _, pipeline_def, _ = import_dali()
        s, on_gpu = self.crop.size, self.device_id is not None

        @pipeline_def
        def crops() -> tuple[Any, ...]:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            img = fn.decoders.image(
                encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB
            )
            outs = []
            for v in range(self.views):
                start = fn.external_source(name=f"start{v}", dtype=types.FLOAT, ndim=1)
                end = fn.external_source(name=f"end{v}", dtype=types.FLOAT, ndim=1)
                outs.append(
                    fn.resize(
                        img,
                        size=[s, s],
                        roi_start=start,
                        roi_end=end,
                        roi_relative=False,
                        interp_type=types.INTERP_LINEAR,
                        antialias=False,
                    )
                )
            return tuple(outs)

        pipe = crops(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            seed=self.seed,
            prefetch_queue_depth=1,
        )
        pipe.build()
        return pipe

    def _read(self, i: int) -> tuple[bytes, tuple[int, int]]:
        with open(self.files[i], "rb") as f:
            data = f.read()
        return data, _header(data)

    def _fill(
        self, epoch: int, step: int, j: int, attempt: int
    ) -> tuple[int, bytes, np.ndarray, int]:
        """(file, bytes, boxes, attempt) of the first readable seeded substitute for slot j."""
        while attempt <= MAX_SUBSTITUTES:
            i = substitute(len(self.files), self.seed, epoch, self.rank, step, j, attempt)
            if i not in self.bad:
                try:
                    data, hw = self._read(i)
                except Exception as e:  # unreadable, vanished, not for DALI
                    self.bad.add(i)
                    self.summary.record(self.files[i], "skipped", f"{type(e).__name__}: {e}")
                else:
                    seed = (self.seed, epoch, self.rank, step, j, attempt)
                    return (
                        i,
                        data,
                        draw_boxes(np.asarray([hw]), self.crop, self.views, *seed)[0],
                        attempt,
                    )
            attempt += 1
        raise RuntimeError(
            f"{MAX_SUBSTITUTES} files in a row could not be read; is the data set mostly "
            "unreadable?"
        )

    def _run(self, data: list[bytes], boxes: np.ndarray) -> torch.Tensor:
        _, _, _, _, dali_torch = import_dali()
        if self._pipe is None:
            self._pipe = self._build()
        pipe = self._pipe
        pipe.feed_input("encoded", [np.frombuffer(d, dtype=np.uint8) for d in data])
        for v in range(self.views):
            start = boxes[:, v, 0:2].astype(np.float32)
            end = (boxes[:, v, 0:2] + boxes[:, v, 2:4]).astype(np.float32)
            pipe.feed_input(f"start{v}", list(start))
            pipe.feed_input(f"end{v}", list(end))
        outs = pipe.run()
        s = self.crop.size
        result = torch.empty(self.views, len(data), s, s, 3, dtype=torch.uint8, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device_id is not None else None
        for v, out in enumerate(outs):
            dali_torch.feed_ndarray(out.as_tensor(), result[v], cuda_stream=stream)
        return result

    def _batch(self, epoch: int, step: int, idx: np.ndarray) -> ViewBatch:
        # The streaming loader's draw: one batch draw on the headers' sizes, then seeded
        # substitutes (with their own draws) for the slots whose file cannot be read.
        b = len(idx)
        data: list[bytes] = [b""] * b
        sizes = np.ones((b, 2), dtype=np.int64)
        ok = np.zeros(b, dtype=bool)
        for j, i in enumerate(int(v) for v in idx):
            if i in self.bad:
                continue
            try:
                data[j], (sizes[j, 0], sizes[j, 1]) = self._read(i)
                ok[j] = True
            except Exception as e:  # unreadable, vanished, not for DALI
                self.bad.add(i)
                self.summary.record(self.files[i], "skipped", f"{type(e).__name__}: {e}")
        boxes = draw_boxes(sizes, self.crop, self.views, self.seed, epoch, self.rank, step)
        slots = [
            (int(idx[j]), data[j], boxes[j], 0) if ok[j] else self._fill(epoch, step, j, 1)
            for j in range(b)
        ]
        for _ in range(MAX_SUBSTITUTES):
            chosen = [k for k, _, _, _ in slots]
            try:
                views = self._run(
                    [d for _, d, _, _ in slots], np.stack([x for _, _, x, _ in slots])
                )
            except RuntimeError as e:
                self._pipe = None  # the graph's state after a failure is unknown: rebuild it
                reasons = [(j, k, check_file(self.files[k], "full")) for j, k in enumerate(chosen)]
                culprits = [(j, k, r) for j, k, r in reasons if r is not None]
                if not culprits:
                    raise RuntimeError(
                        f"DALI failed on a batch whose files all decode with PIL: {e}"
                    ) from e
                for j, k, reason in culprits:
                    self.bad.add(k)
                    self.summary.record(self.files[k], "skipped", str(reason))
                    slots[j] = self._fill(epoch, step, j, slots[j][3] + 1)
                continue
            labels = torch.as_tensor(self.labels[chosen], dtype=torch.int64)
            return ViewBatch(labels=labels.to(self.device), views=views)
        raise RuntimeError(f"DALI kept failing on batch {step} of epoch {epoch}")

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[ViewBatch]:
        """The batches of ``epoch`` from ``start_step`` on (resume: the same batches as before)."""
        self._check_start(start_step)
        order = self.order(epoch)
        for step in range(start_step, len(order)):
            yield self._batch(epoch, step, order[step])
