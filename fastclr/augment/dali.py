"""SimCLR augmentation with NVIDIA DALI operators: the colour part shared by DALI graphs, and
:func:`apply_dali`, the ``backend="dali"`` path of :class:`fastclr.augment.SimCLRAugmentation`.

Needs the optional extra: ``pip install fastclr[dali]`` (``nvidia-dali-cuda120``). DALI is
imported lazily, so importing this module never fails; building a graph without DALI raises an
ImportError naming the extra.

:func:`colour_and_tail` adds, per image (independent draws)::

    if coin(jitter_p): brightness → contrast → saturation → hue   (FIXED order, see below)
    if coin(gray_p):   BT.601 gray (0.299, 0.587, 0.114) in all three channels
    if coin(blur_p):   fn.gaussian_blur (side config.blur_kernel_size, σ ~ U(config.sigma))
    if coin(solarize_p): x ← 255 − x where x ≥ 255 · threshold
    fn.crop_mirror_normalize (mirror = coin(flip_p), mean/std, HWC float out)

:func:`apply_dali` runs these ops on image *tensors* with explicit :class:`AugmentParams`
(external_source; exact integer crop, then resize), for comparisons on the same batch. Reading
image files with DALI is a loader's job: :mod:`fastclr.data.dali` (decode + crops, then fastclr's
augmentation) and :mod:`fastclr.data.dali_pipeline` (an all-DALI pipeline with these ops).

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
* **Flip** happens at the end (fused into ``crop_mirror_normalize``) instead of after the resize:
  every later op is pixel-wise or a symmetric blur with symmetric padding, so the result is the
  same and one pass over the image is saved.
* Contrast blends towards the mean gray of the image as it is at that step, as torchvision, so
  that part is exact up to rounding.

Tested on the CPU only (CPU tensors); the GPU variants (GPU operators, CUDA tensors) use the same
graph but have not been run on a GPU yet. Timing: call ``apply_dali(images, params, config)`` once
(builds and caches the graph), then time it per view like ``apply_triton``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastclr.augment.inputs import checked_apply, images_device, to_rgb
from fastclr.augment.params import AugmentConfig, AugmentParams
from fastclr.optional import import_dali

__all__ = ["apply_dali", "can_blur", "colour_and_tail", "uniform_draw"]


def _hue_degrees(turns: Any) -> Any:
    """torchvision hue units (a fraction of a full turn, in [−0.5, 0.5]) → DALI degrees.

    The ONE place where hue units change: degrees = 360 · turns.
    """
    return 360.0 * turns


def uniform_draw(fn: Any, lo: float, hi: float) -> Any:
    """A per-sample U(lo, hi) draw; a constant when the range is empty (DALI needs lo < hi)."""
    if hi <= lo:
        return float(lo)
    return fn.random.uniform(range=(float(lo), float(hi)))


def colour_and_tail(
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


def can_blur(config: AugmentConfig) -> bool:
    return config.blur_p > 0 and config.blur_kernel_size > 1


#: AugmentParams fields fed per sample to the tensor pipeline, after the crop box (y0, x0, h, w).
_TENSOR_FIELDS = (
    "flip",
    "jitter_apply",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "gray",
    "blur_apply",
    "sigma",
    "solarize",
)
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
            name="images",
            layout="HWC",
            dtype=types.UINT8,
            ndim=3,
            device="gpu" if on_gpu else "cpu",
        )
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
        return colour_and_tail((fn, types, dmath), config, on_gpu, x, gates, factors, mirror)

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


@checked_apply
def apply_dali(imgs: Tensor | list[Tensor], params: AugmentParams, config: AugmentConfig) -> Tensor:
    """Apply ONE view's explicit ``params`` to image tensors with DALI operators.

    The ``backend="dali"`` path of :class:`fastclr.augment.SimCLRAugmentation`, for comparing DALI
    with the other backends on the same batch. It feeds the tensors through ``external_source``:
    exact integer crop (``fn.slice``) → bilinear resize → the colour ops of the folder pipeline,
    gated and parameterised per image by ``params``. Differences from the reference are those of
    the module docstring: the jitter runs in the FIXED order brightness, contrast, saturation,
    hue (``params.order`` is ignored), hue is DALI's YIQ rotation, and the image is rounded to
    uint8 after the resize and after each colour op. With hue 0 and that order the result is the
    reference's within a few grey levels. The arguments are checked by
    :func:`~fastclr.augment.inputs.checked_apply` before DALI is imported.

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
    dev = images_device(imgs)
    device_id = None if dev.type == "cpu" else (dev.index or 0)
    samples = [to_rgb(t).contiguous() for t in imgs]
    n = len(samples)  # check_apply_args has matched it with len(params)
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
