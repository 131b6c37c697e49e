"""An all-DALI SimCLR pipeline from image files: DALI reads, decodes, crops AND augments.

The baseline next to fastclr's own path (:mod:`fastclr.data.dali` decodes and crops, then
fastclr's augmentation applies the documented colour semantics). Here the colour part is DALI's
operators (:func:`fastclr.augment.dali.colour_and_tail`, with the differences listed there) and the
crop is DALI's own sampler (same area/ratio ranges and tries, its own fallback rule, its own random
stream: no exact resume). Needs the ``dali`` extra.

Pipeline (one per process; ``device_id=None`` runs everything on the CPU, an integer decodes with
nvJPEG (``device="mixed"``) and augments on that GPU)::

    fn.readers.file (validated file list, labels) → fn.decoders.image (RGB, uint8 HWC)
      → per view: fn.random_resized_crop (area config.scale, ratio config.ratio, bilinear,
        no antialias) → colour_and_tail
    → DALIGenericIterator → (N, 3, S, S) channels_last torch tensors in config.dtype.

Unreadable files: DALI's decoder stops the whole pipeline on a corrupt file, so files are checked
up front with PIL (:func:`fastclr.data.validate.validate_images`: ``validate="full"``, a
reduced-size decode that catches truncated files; ``"header"``: headers only; ``"none"``). Every
rejected file is reported with its path in a warning, skipped, and counted in
:attr:`DaliSimCLRLoader.skipped`. A decoder failure during iteration (a file that passed a lighter
validation) is re-raised as a RuntimeError that names the files that fail a full decode.

Tested on the CPU only. Timing: build ``DaliSimCLRLoader(folder, config, batch_size,
device_id=0)``, ``it = iter(loader)``, drop the first batch (warm-up), then time ``next(it)`` over
a few dozen batches with ``torch.cuda.synchronize()``; images/s = batch_size × batches / seconds
(two views per image).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastclr.augment.dali import can_blur, colour_and_tail, uniform_draw
from fastclr.augment.params import AugmentConfig
from fastclr.data.files import list_images
from fastclr.data.validate import Validate, validate_images
from fastclr.optional import import_dali

__all__ = ["READER_NAME", "DaliBatch", "DaliSimCLRLoader", "build_simclr_pipeline"]

#: Name of the reader operator; the iterator uses it to know the epoch size.
READER_NAME = "Reader"


def build_simclr_pipeline(
    files: Sequence[str],
    labels: Sequence[int],
    config: AugmentConfig,
    batch_size: int,
    *,
    device_id: int | None = None,
    num_threads: int = 4,
    seed: int = 0,
    shuffle: bool = True,
    shard_id: int = 0,
    num_shards: int = 1,
    views: int = 2,
) -> Any:
    """A built DALI pipeline whose outputs are ``views`` HWC float images and the label.

    Output names, in order: ``view0``, ``view1``, …, ``label``. Images are (S, S, 3) float32
    (float16 when ``config.dtype`` is float16), normalised with config.mean/std.
    """
    fn, types, dmath, pipeline_def, _ = import_dali()
    on_gpu = device_id is not None

    @pipeline_def(enable_conditionals=True)
    def simclr_pipeline() -> tuple[Any, ...]:
        encoded, label = fn.readers.file(
            files=list(files),
            labels=list(labels),
            random_shuffle=shuffle,
            shard_id=shard_id,
            num_shards=num_shards,
            name=READER_NAME,
        )
        img = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
        outputs = []
        for _ in range(views):
            outputs.append(_one_view((fn, types, dmath), config, on_gpu, img))
        outputs.append(label)
        return tuple(outputs)

    pipe = simclr_pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
    )
    pipe.build()
    return pipe


def _readable_files(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    labels: Sequence[int] | None,
    validate: Validate,
    num_threads: int,
    validate_cache: str | os.PathLike[str] | None,
) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """The files of ``source`` that pass validation, their labels, and (path, reason) per reject.

    Warns once per rejected file and once with the count (pointing at the loader's caller);
    raises RuntimeError when no file is readable.
    """
    all_files, all_labels = list_images(source, labels)
    good, bad = validate_images(all_files, validate, num_threads, validate_cache)
    for path, reason in bad:
        warnings.warn(
            f"fastclr: skipping unreadable image {path} ({reason})", RuntimeWarning, stacklevel=3
        )
    if bad:
        warnings.warn(
            f"fastclr: skipped {len(bad)} of {len(all_files)} files that could not be decoded",
            RuntimeWarning,
            stacklevel=3,
        )
    if not good:
        raise RuntimeError(f"none of the {len(all_files)} image files could be decoded")
    return [all_files[i] for i in good], [all_labels[i] for i in good], bad


def _one_view(dali: tuple[Any, Any, Any], config: AugmentConfig, on_gpu: bool, img: Any) -> Any:
    """One augmented view of the decoded ``img`` inside the pipeline definition.

    ``dali`` is DALI's (fn, types, math) modules; the crop is DALI's, the colour part and the tail
    are :func:`~fastclr.augment.dali.colour_and_tail`.
    """
    fn, types, _ = dali
    s = config.size
    b_lo, b_hi = config.brightness_range
    h_lo, h_hi = config.hue_range
    jitter = config.jitter_p > 0 and config.strength > 0

    def coin(p: float) -> Any:
        return fn.random.coin_flip(probability=float(p), dtype=types.BOOL)

    x = fn.random_resized_crop(
        img,
        size=(s, s),
        random_area=list(config.scale),
        random_aspect_ratio=list(config.ratio),
        num_attempts=config.max_tries,
        antialias=False,
    )
    gates = {
        "jitter": coin(config.jitter_p) if jitter else None,
        "gray": coin(config.gray_p) if config.gray_p > 0 else None,
        "blur": coin(config.blur_p) if can_blur(config) else None,
        "solarize": coin(config.solarize_p) if config.solarize_p > 0 else None,
    }
    factors = {
        "brightness": uniform_draw(fn, b_lo, b_hi),
        "contrast": uniform_draw(fn, b_lo, b_hi),
        "saturation": uniform_draw(fn, b_lo, b_hi),
        "hue": uniform_draw(fn, h_lo, h_hi),
        "sigma": uniform_draw(fn, *config.sigma),
    }
    mirror = fn.random.coin_flip(probability=float(config.flip_p))
    return colour_and_tail(dali, config, on_gpu, x, gates, factors, mirror)


@dataclass(frozen=True)
class DaliBatch:
    """One batch: ``views`` holds V tensors (N, 3, S, S) channels_last; ``labels`` is (N,) int64."""

    views: list[Tensor]
    labels: Tensor


class DaliSimCLRLoader:
    """Iterable of :class:`DaliBatch` from an image folder or file list, augmented by DALI.

    Args:
        source: folder with class subfolders, flat folder, or sequence of file paths
            (see :func:`list_images`).
        config: augmentation config (size, probabilities, ranges, mean/std, output dtype).
        batch_size: images per batch (each yields ``views`` augmented copies).
        device_id: CUDA device for nvJPEG decoding and GPU augmentation; None: CPU only.
        num_threads: DALI CPU threads (also used for validation).
        seed: DALI pipeline seed.
        shuffle: shuffle the files each epoch.
        drop_last: drop the final incomplete batch (True for training).
        shard_id, num_shards: distributed sharding (one shard per rank).
        validate: up-front check of every file (module docstring).
        validate_cache: JSON file remembering validation results between runs
            (:func:`validate_images`); None: check every file every time.
        labels: labels for an explicit file list.
        views: augmented views per image (SimCLR: 2).

    Attributes:
        skipped: (path, reason) for every file rejected by validation.
        files: the files actually read.

    Example::

        loader = DaliSimCLRLoader("imagenet/train", AugmentConfig.imagenet(), 256, device_id=0)
        for batch in loader:
            z1, z2 = model(batch.views[0]), model(batch.views[1])
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        config: AugmentConfig,
        batch_size: int,
        *,
        device_id: int | None = None,
        num_threads: int = 4,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        shard_id: int = 0,
        num_shards: int = 1,
        validate: Validate = "full",
        validate_cache: str | os.PathLike[str] | None = None,
        labels: Sequence[int] | None = None,
        views: int = 2,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        _, _, _, _, dali_torch = import_dali()
        self.files, self.labels, bad = _readable_files(
            source, labels, validate, num_threads, validate_cache
        )
        if drop_last and len(self.files) // num_shards < batch_size:
            raise ValueError(
                f"{len(self.files)} readable files over {num_shards} shard(s) give no full batch "
                f"of {batch_size}; lower batch_size or pass drop_last=False"
            )
        self.skipped: list[tuple[str, str]] = bad
        self.config = config
        self.batch_size = batch_size
        self.views = views
        self.validate: Validate = validate
        self._num_threads = num_threads
        self._source = str(source) if isinstance(source, (str, os.PathLike)) else "a file list"
        self._pipe = build_simclr_pipeline(
            self.files,
            self.labels,
            config,
            batch_size,
            device_id=device_id,
            num_threads=num_threads,
            seed=seed,
            shuffle=shuffle,
            shard_id=shard_id,
            num_shards=num_shards,
            views=views,
        )
        policy = (
            dali_torch.LastBatchPolicy.DROP if drop_last else dali_torch.LastBatchPolicy.PARTIAL
        )
        self._names = [f"view{v}" for v in range(views)] + ["label"]
        try:
            self._it = dali_torch.DALIGenericIterator(
                [self._pipe],
                self._names,
                reader_name=READER_NAME,
                last_batch_policy=policy,
                auto_reset=True,
            )
        except RuntimeError as e:
            raise self._failure(e) from e

    def _failure(self, e: Exception) -> RuntimeError:
        """The error to raise when DALI fails mid-run: what was read, and which files are bad.

        DALI's message does not name the file, so unless every file was already fully decoded
        once, they are checked again with validate="full" to name the culprits (only on failure).
        """
        culprits = ""
        if self.validate != "full":
            _, bad = validate_images(self.files, "full", self._num_threads)
            if bad:
                shown = "; ".join(f"{p} ({r})" for p, r in bad[:10])
                more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
                culprits = f" Files that fail a full decode: {shown}{more}."
        return RuntimeError(
            f"DALI pipeline failed while reading {self._source} ({len(self.files)} files, "
            f"validate={self.validate!r}).{culprits} DALI said: {e}"
        )

    def __len__(self) -> int:
        """Batches per epoch for this shard."""
        return len(self._it)

    def _convert(self, hwc: Tensor) -> Tensor:
        # (N, S, S, 3) → (N, 3, S, S) with channels_last strides: a view, no copy.
        x = hwc.permute(0, 3, 1, 2)
        if x.dtype != self.config.dtype:
            x = x.to(self.config.dtype)  # preserve_format keeps channels_last
        return x

    def __iter__(self) -> Iterator[DaliBatch]:
        while True:
            try:
                out = next(self._it)[0]
            except StopIteration:
                return
            except RuntimeError as e:
                raise self._failure(e) from e
            views = [self._convert(out[name]) for name in self._names[:-1]]
            labels = out["label"].reshape(-1).to(torch.int64)
            yield DaliBatch(views=views, labels=labels)
