"""SimCLR augmentation with NVIDIA DALI: read an image folder, decode, two augmented views each.

Needs the optional extra: ``pip install fastclr[dali]`` (``nvidia-dali-cuda120``). DALI is
imported lazily, so importing this module never fails; building a pipeline without DALI raises an
ImportError naming the extra.

Pipeline (one per process; ``device_id=None`` runs everything on the CPU, an integer decodes with
nvJPEG (``device="mixed"``) and augments on that GPU)::

    fn.readers.file (validated file list, labels) → fn.decoders.image (RGB, uint8 HWC)
      → per view (independent draws per image):
          fn.random_resized_crop (area config.scale, ratio config.ratio, bilinear, no antialias)
          if coin(jitter_p): brightness → contrast → saturation → hue   (FIXED order, see below)
          if coin(gray_p):   BT.601 gray (0.299, 0.587, 0.114) in all three channels
          if coin(blur_p):   fn.gaussian_blur (side config.blur_kernel_size, σ ~ U(config.sigma))
          if coin(solarize_p): x ← 255 − x where x ≥ 255 · threshold
          fn.crop_mirror_normalize (mirror = coin(flip_p), mean/std, HWC float out)
    → DALIGenericIterator → (N, 3, S, S) channels_last torch tensors in config.dtype.

:func:`apply_dali` runs the same colour ops on image *tensors* with explicit
:class:`AugmentParams` (external_source; exact integer crop, then resize), the ``backend="dali"``
path of :class:`fastclr.augment.SimCLRAugmentation`, for comparisons on the same batch.

Where this differs from :func:`fastclr.augment.reference.apply_reference` (the definition), by
design or because of DALI's operators — compare distributions, not pixels:

* **Jitter order is fixed** (brightness, contrast, saturation, hue) instead of drawn per image;
  the per-op factors and the p = jitter_p gate are drawn per image.
* **Hue** uses DALI's ``fn.hue``, a rotation about the gray axis of a linear (YIQ-like) colour
  space, not torchvision's exact RGB → HSV → RGB shift; the angle is converted from torchvision
  units (turns) to degrees in :func:`_hue_degrees`.
* **Intermediate rounding**: the jitter works on uint8 images, so each op rounds to an integer
  and saturates to [0, 255] (the clamp after each op). This is what torchvision does on PIL
  images; the reference works in float.
* **Crop sampling** (folder pipeline) is DALI's own random generator (same area/ratio ranges and
  tries, its own fallback rule); :func:`apply_dali` uses the given boxes exactly.
* **Flip** happens at the end (fused into ``crop_mirror_normalize``) instead of after the resize:
  every later op is pixel-wise or a symmetric blur with symmetric padding, so the result is the
  same and one pass over the image is saved.
* Contrast blends towards the mean gray of the image as it is at that step, as torchvision, so
  that part is exact up to rounding.

Unreadable files: DALI's decoder stops the whole pipeline on a corrupt file, so files are checked
up front with PIL (``validate="full"``: a reduced-size decode that catches truncated files;
``"header"``: headers only; ``"none"``). Every rejected file is reported with its path in a
warning, skipped, and counted in :attr:`DaliSimCLRLoader.skipped`. A decoder failure during
iteration (a file that passed a lighter validation) is re-raised as a RuntimeError that names the
files that fail a full decode.

Tested on the CPU only (``device_id=None``, CPU tensors); the GPU variants (``mixed`` decoding,
GPU operators, CUDA tensors in :func:`apply_dali`) use the same graph but have not been run on a
GPU yet.

Timing (e.g. from bench/throughput.py): end to end from files, build ``DaliSimCLRLoader(folder,
config, batch_size, device_id=0)``, ``it = iter(loader)``, drop the first batch (warm-up), then time
``next(it)`` over a few dozen batches with ``torch.cuda.synchronize()``; images/s = batch_size ×
batches / seconds (two views per image). On the same uint8 CUDA batch as the other backends: call
``apply_dali(images, params, config)`` once (builds and caches the pipeline), then time it per
view like ``apply_triton``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fastclr.augment.inputs import Images, check_apply_args, images_device, to_rgb
from fastclr.augment.params import AugmentConfig, AugmentParams
from fastclr.data.dali import import_dali
from fastclr.data.files import list_images
from fastclr.data.validate import Validate, validate_images

__all__ = [
    "DaliBatch",
    "DaliSimCLRLoader",
    "apply_dali",
    "build_simclr_pipeline",
]

#: Name of the reader operator; the iterator uses it to know the epoch size.
READER_NAME = "Reader"


def _hue_degrees(turns: Any) -> Any:
    """torchvision hue units (a fraction of a full turn, in [−0.5, 0.5]) → DALI degrees.

    The ONE place where hue units change: degrees = 360 · turns.
    """
    return 360.0 * turns


def _uniform(fn: Any, lo: float, hi: float) -> Any:
    """A per-sample U(lo, hi) draw; a constant when the range is empty (DALI needs lo < hi)."""
    if hi <= lo:
        return float(lo)
    return fn.random.uniform(range=(float(lo), float(hi)))


def _colour_and_tail(
    dali: tuple[Any, Any, Any],
    config: AugmentConfig,
    on_gpu: bool,
    x: Any,
    gates: dict[str, Any],
    factors: dict[str, Any],
    mirror: Any,
) -> Any:
    """Jitter (fixed order) → gray → blur → solarize → flip + normalise, on a uint8 HWC image.

    ``gates`` maps "jitter", "gray", "blur", "solarize" to a per-sample bool DataNode, or to None
    when the op cannot happen for this config (then it is left out of the graph). ``factors``
    holds "brightness", "contrast", "saturation", "hue" (turns) and "sigma": per-sample CPU
    DataNodes or floats. ``mirror`` is the per-sample flip flag for crop_mirror_normalize.
    """
    fn, types, dmath = dali
    out_type = types.FLOAT16 if config.dtype == torch.float16 else types.FLOAT

    def on_device(v: Any) -> Any:
        # Per-sample CPU scalars take part in GPU arithmetic as GPU nodes.
        return v.gpu() if on_gpu and not isinstance(v, float) else v

    # Python-level ifs choose the graph; DALI conditionals (the gates) choose per sample.
    if gates["jitter"] is not None:
        if gates["jitter"]:
            # uint8 in, uint8 out: every op saturates to [0, 255] (the clamp after each op).
            x = fn.brightness_contrast(x, brightness=factors["brightness"])
            # Contrast blends towards the mean gray of the image as it is now (torchvision);
            # DALI's contrast_center must live on the CPU, so the blend is written out.
            m = fn.reductions.mean(x, axes=[0, 1], dtype=types.FLOAT)
            gray_mean = 0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2]
            c = on_device(factors["contrast"])
            x = fn.cast(dmath.clamp(x * c + gray_mean * (1.0 - c), 0.0, 255.0), dtype=types.UINT8)
            x = fn.saturation(x, saturation=factors["saturation"])
            x = fn.hue(x, hue=_hue_degrees(factors["hue"]))
    if gates["gray"] is not None:
        if gates["gray"]:
            g = fn.color_space_conversion(x, image_type=types.RGB, output_type=types.GRAY)
            x = fn.cat(g, g, g, axis=2)
    if gates["blur"] is not None:
        if gates["blur"]:
            x = fn.gaussian_blur(x, window_size=config.blur_kernel_size, sigma=factors["sigma"])
    if gates["solarize"] is not None:
        if gates["solarize"]:
            xf = fn.cast(x, dtype=types.FLOAT)
            above = xf >= 255.0 * config.solarize_threshold
            x = fn.cast(xf + above * (255.0 - 2.0 * xf), dtype=types.UINT8)
    return fn.crop_mirror_normalize(
        x,
        mirror=mirror,
        mean=[255.0 * v for v in config.mean],
        std=[255.0 * v for v in config.std],
        dtype=out_type,
        # HWC float: the torch side views it as NCHW channels_last with no copy.
        output_layout="HWC",
    )


def _can_blur(config: AugmentConfig) -> bool:
    return config.blur_p > 0 and config.blur_kernel_size > 1


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
    s = config.size
    b_lo, b_hi = config.brightness_range
    h_lo, h_hi = config.hue_range
    jitter = config.jitter_p > 0 and config.strength > 0

    def coin(p: float) -> Any:
        return fn.random.coin_flip(probability=float(p), dtype=types.BOOL)

    def one_view(img: Any) -> Any:
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
            "blur": coin(config.blur_p) if _can_blur(config) else None,
            "solarize": coin(config.solarize_p) if config.solarize_p > 0 else None,
        }
        factors = {
            "brightness": _uniform(fn, b_lo, b_hi),
            "contrast": _uniform(fn, b_lo, b_hi),
            "saturation": _uniform(fn, b_lo, b_hi),
            "hue": _uniform(fn, h_lo, h_hi),
            "sigma": _uniform(fn, *config.sigma),
        }
        mirror = fn.random.coin_flip(probability=float(config.flip_p))
        return _colour_and_tail((fn, types, dmath), config, on_gpu, x, gates, factors, mirror)

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
            outputs.append(one_view(img))
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


#: AugmentParams fields fed per sample to the tensor pipeline, after the crop box (y0, x0, h, w).
_TENSOR_FIELDS = (
    "flip", "jitter_apply", "brightness", "contrast", "saturation", "hue", "gray", "blur_apply",
    "sigma", "solarize",
)  # fmt: skip
_TENSOR_PRM = ("y0", "x0", "h", "w", *_TENSOR_FIELDS)
#: Built tensor pipelines, keyed by (config, device_id); each remembers its max batch size.
_TENSOR_PIPES: dict[tuple[AugmentConfig, int | None], tuple[int, Any]] = {}
#: DALI CPU threads of the tensor pipeline.
_TENSOR_THREADS = 4


def _build_tensor_pipeline(config: AugmentConfig, device_id: int | None, max_batch: int) -> Any:
    """Pipeline with external inputs "images" (uint8 HWC RGB), "params" (float32 _TENSOR_PRM)."""
    fn, types, dmath, pipeline_def, _ = import_dali()
    on_gpu = device_id is not None
    col = {name: i for i, name in enumerate(_TENSOR_PRM)}

    @pipeline_def(enable_conditionals=True)
    def tensor_pipeline() -> Any:
        img = fn.external_source(
            name="images", layout="HWC", dtype=types.UINT8, ndim=3,
            device="gpu" if on_gpu else "cpu",
        )  # fmt: skip
        prm = fn.external_source(name="params", dtype=types.FLOAT, ndim=1)

        def p(name: str) -> Any:
            return prm[col[name]]

        # The integer crop box exactly, then bilinear to (S, S): clamping at the box's edge as
        # F.interpolate on the cropped tensor does.
        x = fn.slice(
            img,
            fn.stack(p("y0"), p("x0")),
            fn.stack(p("h"), p("w")),
            axes=[0, 1],
            normalized_anchor=False,
            normalized_shape=False,
        )
        x = fn.resize(
            x,
            size=[config.size, config.size],
            antialias=False,
            interp_type=types.INTERP_LINEAR,
        )
        gates = {
            "jitter": p("jitter_apply") > 0.5,
            "gray": p("gray") > 0.5,
            "blur": p("blur_apply") > 0.5 if config.blur_kernel_size > 1 else None,
            "solarize": p("solarize") > 0.5,
        }
        factors = {k: p(k) for k in ("brightness", "contrast", "saturation", "hue", "sigma")}
        mirror = fn.cast(p("flip"), dtype=types.INT32)
        return _colour_and_tail((fn, types, dmath), config, on_gpu, x, gates, factors, mirror)

    # One batch in flight: each call feeds one batch and runs it (no prefetching to fill).
    pipe = tensor_pipeline(
        batch_size=max_batch,
        num_threads=_TENSOR_THREADS,
        device_id=device_id,
        seed=0,
        prefetch_queue_depth=1,
    )
    pipe.build()
    return pipe


def apply_dali(
    images: Images,
    params: AugmentParams,
    config: AugmentConfig,
    *,
    layout: str | None = None,
    validate: bool = True,
) -> Tensor:
    """Apply ONE view's explicit ``params`` to image tensors with DALI operators.

    The ``backend="dali"`` path of :class:`fastclr.augment.SimCLRAugmentation`, for comparing DALI
    with the other backends on the same batch. It feeds the tensors through ``external_source``:
    exact integer crop (``fn.slice``) → bilinear resize → the colour ops of the folder pipeline,
    gated and parameterised per image by ``params``. Differences from the reference are those of
    the module docstring: the jitter runs in the FIXED order brightness, contrast, saturation,
    hue (``params.order`` is ignored), hue is DALI's YIQ rotation, and the image is rounded to
    uint8 after the resize and after each colour op. With hue 0 and that order the result is the
    reference's within a few grey levels.

    Args:
        images: dense uint8 (N, H, W, C) or a sequence of uint8 (H, W, C), C ∈ {1, 3, 4}; CPU
            tensors run DALI's CPU operators, CUDA tensors its GPU operators on that device.
        params: N images' parameters (read on the host: one small device → host copy).
        config: output size, blur kernel size, solarize threshold, mean/std, dtype.
        layout: None, "NHWC" or "NCHW" (:func:`~fastclr.augment.inputs.check_images`).
        validate: check ``params`` by :meth:`AugmentParams.validate` (the shared rule).

    Returns:
        (N, 3, S, S) in ``config.dtype``, channels_last, on the images' device.
    """
    _, _, _, _, dali_torch = import_dali()
    imgs, params = check_apply_args(images, params, layout=layout, validate=validate)
    dev = images_device(imgs)
    device_id = None if dev.type == "cpu" else (dev.index or 0)
    samples = [to_rgb(t).contiguous() for t in imgs]
    n = len(samples)
    if len(params) != n:
        raise ValueError(f"params has {len(params)} images, images has {n}")
    columns = [getattr(params, name).float() for name in _TENSOR_FIELDS]
    table = torch.cat([params.crop.float(), torch.stack(columns, dim=1)], dim=1).cpu()
    key = (config, device_id)
    cached = _TENSOR_PIPES.get(key)
    if cached is None or cached[0] < n:
        _TENSOR_PIPES[key] = (n, _build_tensor_pipeline(config, device_id, n))
    pipe = _TENSOR_PIPES[key][1]
    pipe.feed_input("images", samples if device_id is not None else [t.numpy() for t in samples])
    pipe.feed_input("params", [row.numpy() for row in table])
    (out,) = pipe.run()
    dali_out = out.as_tensor()
    hwc = torch.empty(dali_out.shape(), dtype=_torch_dtype(config), device=dev)
    stream = torch.cuda.current_stream(dev) if device_id is not None else None
    dali_torch.feed_ndarray(dali_out, hwc, cuda_stream=stream)
    x = hwc.permute(0, 3, 1, 2)  # channels_last view, no copy
    return x if x.dtype == config.dtype else x.to(config.dtype)


def _torch_dtype(config: AugmentConfig) -> torch.dtype:
    """The dtype crop_mirror_normalize writes (DALI has no bfloat16 output)."""
    return torch.float16 if config.dtype == torch.float16 else torch.float32


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
        all_files, all_labels = list_images(source, labels)
        good, bad = validate_images(all_files, validate, num_threads, validate_cache)
        for path, reason in bad:
            warnings.warn(
                f"fastclr.augment.dali: skipping unreadable image {path} ({reason})",
                RuntimeWarning,
                stacklevel=2,
            )
        if bad:
            warnings.warn(
                f"fastclr.augment.dali: skipped {len(bad)} of {len(all_files)} files that could "
                f"not be decoded",
                RuntimeWarning,
                stacklevel=2,
            )
        if not good:
            raise RuntimeError(f"none of the {len(all_files)} image files could be decoded")
        if drop_last and len(good) // num_shards < batch_size:
            raise ValueError(
                f"{len(good)} readable files over {num_shards} shard(s) give no full batch of "
                f"{batch_size}; lower batch_size or pass drop_last=False"
            )
        self.skipped: list[tuple[str, str]] = bad
        self.files = [all_files[i] for i in good]
        self.labels = [all_labels[i] for i in good]
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
