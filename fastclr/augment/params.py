"""SimCLR augmentation configuration and per-image parameters, drawn on the device.

Every backend (reference, torch, Triton, kornia, DALI) consumes the same :class:`AugmentParams`,
so the same random draw can be applied by two backends and the results compared. The semantics
follow the SimCLR paper (Chen et al. 2020, Appendix A); parameters are in the units users know
from torchvision. Parameters given explicitly are checked by one rule,
:meth:`AugmentParams.validate` (:data:`PARAM_RULES`), at every entry point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum

import torch
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JITTER_OPS",
    "PARAM_RULES",
    "AugmentConfig",
    "AugmentParams",
    "JitterOp",
    "sample_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

#: Index of each colour-jitter op in ``AugmentParams.order`` (torchvision's ``fn_idx`` numbering).
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


class JitterOp(IntEnum):
    """The code of each colour-jitter op in ``AugmentParams.order`` (:data:`JITTER_OPS`'s
    positions; the Triton and native kernels use the same numbers)."""

    BRIGHTNESS = 0
    CONTRAST = 1
    SATURATION = 2
    HUE = 3


# Number of uniforms one image consumes per view; see ``sample_params`` for the column layout.
_DRAWS_AFTER_CROP = 2 + 1 + 1 + 4 + 4 + 1 + 1 + 1 + 1


@dataclass(frozen=True)
class AugmentConfig:
    """What the SimCLR augmentation draws and produces (SimCLR paper, Appendix A).

    Attributes:
        size: output side S; every view is (3, S, S).
        strength: colour-distortion strength s (1.0 ImageNet, 0.5 CIFAR). Jitter factors are
            brightness/contrast/saturation U[max(0, 1 − 0.8s), 1 + 0.8s] and hue U[−0.2s, 0.2s]
            (torchvision ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``).
        scale: range of the crop's area as a fraction of the source area (RandomResizedCrop).
        ratio: range of the crop's aspect ratio w/h; its log is drawn uniformly.
        max_tries: crop draws before the centre-crop fallback (torchvision: 10).
        flip_p: probability of a horizontal flip.
        jitter_p: probability of applying the colour jitter (``RandomApply(ColorJitter, 0.8)``).
        gray_p: probability of converting to grayscale (after the jitter).
        blur_p: probability of a Gaussian blur; 0 turns blur off (32-px data).
        sigma: range of the blur's standard deviation in output pixels, drawn uniformly.
        solarize_p: probability of solarizing (0: off, the SimCLR default).
        solarize_threshold: pixels ≥ this value (in [0, 1]) become 1 − value. At 0.5 the map is
            continuous, which keeps backends comparable within a tolerance.
        mean, std: per-channel (RGB) normalisation applied last, in [0, 1] units.
        dtype: floating dtype of the output (float32, bfloat16 or float16).
    """

    size: int = 224
    strength: float = 1.0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    max_tries: int = 10
    flip_p: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dtype: torch.dtype = field(default=torch.float32)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0 < self.sigma[0] <= self.sigma[1]:
            raise ValueError(f"sigma must satisfy 0 < lo <= hi, got {self.sigma}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values with std > 0, got {self.mean}/{self.std}")
        if self.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype must be a floating dtype, got {self.dtype}")

    @classmethod
    def imagenet(cls, size: int = 224, **overrides: object) -> AugmentConfig:
        """SimCLR's ImageNet recipe: s = 1, blur p = 0.5, ImageNet mean/std."""
        return replace(cls(size=size), **overrides)  # type: ignore[arg-type]

    @classmethod
    def cifar(cls, size: int = 32, **overrides: object) -> AugmentConfig:
        """SimCLR's CIFAR-10 recipe: s = 0.5, no blur, CIFAR-10 mean/std."""
        base = cls(size=size, strength=0.5, blur_p=0.0, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        return replace(base, **overrides)  # type: ignore[arg-type]

    @property
    def brightness_range(self) -> tuple[float, float]:
        """Range of the brightness/contrast/saturation factor: [max(0, 1 − 0.8s), 1 + 0.8s]."""
        m = 0.8 * self.strength
        return (max(0.0, 1.0 - m), 1.0 + m)

    @property
    def hue_range(self) -> tuple[float, float]:
        """U-range of the hue shift in turns (1.0 = 360°): [−0.2s, 0.2s], at most ±0.5."""
        m = min(0.2 * self.strength, 0.5)
        return (-m, m)

    @property
    def blur_kernel_size(self) -> int:
        """Blur kernel side: int(0.1 · size), forced odd (+1 if even); at least 1."""
        k = int(0.1 * self.size)
        return k + 1 if k % 2 == 0 else k


#: Fields of :class:`AugmentParams` that are per-image on/off switches (bool tensors).
_FLAG_FIELDS = ("flip", "jitter_apply", "gray", "blur_apply", "solarize")

#: Allowed closed range of each float field, and how an error states it. Factors follow
#: torchvision's ``adjust_*`` contracts: brightness/contrast/saturation ≥ 0, hue in [−0.5, 0.5]
#: turns; σ must be positive (and is in output pixels).
_FACTOR_RULES: dict[str, tuple[float, float, str]] = {
    "brightness": (0.0, math.inf, "finite and >= 0"),
    "contrast": (0.0, math.inf, "finite and >= 0"),
    "saturation": (0.0, math.inf, "finite and >= 0"),
    "hue": (-0.5, 0.5, "finite and in [-0.5, 0.5] (turns)"),
    "sigma": (0.0, math.inf, "finite and > 0"),
}

#: The rule :meth:`AugmentParams.validate` applies, in words (for docs and error hints).
PARAM_RULES = (
    "crop boxes (y0, x0, h, w) inside their source (y0, x0 >= 0, h, w >= 1, y0 + h <= H, "
    "x0 + w <= W), integer; order rows permutations of 0..3; brightness, contrast, saturation "
    "finite and >= 0; hue finite in [-0.5, 0.5]; sigma finite and > 0; flags bool"
)


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters of ONE view of N images; every field is a tensor on the same device.

    Fields (N = number of images):
        crop: (N, 4) int32, columns (y0, x0, h, w): the crop box in SOURCE pixels, integers as in
            torchvision's RandomResizedCrop. Rows y0 … y0+h−1 and columns x0 … x0+w−1 are read;
            0 ≤ y0, 1 ≤ h, y0 + h ≤ H (same for x with W). The box is resized to (S, S) by plain
            bilinear sampling with align_corners=False and no antialias, sampling clamped to the
            box's edge pixels (what ``F.interpolate`` does on the cropped tensor).
        flip: (N,) bool, flip the output horizontally (after the resize).
        jitter_apply: (N,) bool, apply the colour jitter (all four ops, in ``order``). When False
            the four factors below are ignored.
        brightness: (N,) float32 factor f: x ← clamp(f·x).
        contrast: (N,) float32 factor f: x ← clamp(f·x + (1 − f)·mean(gray(x))), the mean over
            the whole (S, S) image as it is at that step.
        saturation: (N,) float32 factor f: x ← clamp(f·x + (1 − f)·gray(x)).
        hue: (N,) float32 shift in turns (torchvision units, 0.1 = 36°): RGB → HSV, h ← (h + shift)
            mod 1, → RGB.
        order: (N, 4) int32, a permutation of 0..3 per image: ``order[n, k]`` is the op applied in
            step k, numbered 0 brightness, 1 contrast, 2 saturation, 3 hue (``JITTER_OPS``).
        gray: (N,) bool, replace RGB by gray = 0.299 R + 0.587 G + 0.114 B in all three channels.
        blur_apply: (N,) bool, apply the Gaussian blur.
        sigma: (N,) float32 blur standard deviation in output pixels (ignored when not applied).
        solarize: (N,) bool, x ← 1 − x where x ≥ config.solarize_threshold.

    The pipeline order is crop+resize → flip → jitter → gray → blur → solarize → normalise;
    ``fastclr.augment.reference.apply_reference`` is the definition.
    """

    crop: Tensor
    flip: Tensor
    jitter_apply: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor
    gray: Tensor
    blur_apply: Tensor
    sigma: Tensor
    solarize: Tensor

    def __post_init__(self) -> None:
        n = self.crop.shape[0]
        if self.crop.shape != (n, 4) or self.order.shape != (n, 4):
            raise ValueError(
                f"params.crop and params.order must be (N, 4), got {tuple(self.crop.shape)} and "
                f"{tuple(self.order.shape)}"
            )
        for f in fields(self):
            t: Tensor = getattr(self, f.name)
            if f.name not in ("crop", "order") and t.shape != (n,):
                raise ValueError(f"params.{f.name} must have shape ({n},), got {tuple(t.shape)}")
            if t.device != self.crop.device:
                raise ValueError(f"params.{f.name} is on {t.device}, crop on {self.crop.device}")

    def __len__(self) -> int:
        return int(self.crop.shape[0])

    @property
    def device(self) -> torch.device:
        return self.crop.device

    def to(self, device: torch.device | str) -> AugmentParams:
        """The same parameters on ``device``."""
        return AugmentParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: Tensor | slice) -> AugmentParams:
        """The parameters of a subset of the images (``index`` into dimension 0)."""
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def cat(parts: Sequence[AugmentParams]) -> AugmentParams:
        """Concatenate the parameters of several batches along the image dimension."""
        return AugmentParams(
            **{
                f.name: torch.cat([getattr(p, f.name) for p in parts])
                for f in fields(AugmentParams)
            }
        )

    @classmethod
    def identity(cls, src_sizes: Tensor) -> AugmentParams:
        """Full-image crop and nothing else: the output is just resize + normalise."""
        n = src_sizes.shape[0]
        dev = src_sizes.device
        zeros = torch.zeros(n, dtype=torch.int32, device=dev)
        crop = torch.stack([zeros, zeros, src_sizes[:, 0].int(), src_sizes[:, 1].int()], dim=1)
        false = torch.zeros(n, dtype=torch.bool, device=dev)
        ones = torch.ones(n, dtype=torch.float32, device=dev)
        order = torch.arange(4, dtype=torch.int32, device=dev).expand(n, 4).contiguous()
        return cls(
            crop=crop,
            flip=false,
            jitter_apply=false.clone(),
            brightness=ones,
            contrast=ones.clone(),
            saturation=ones.clone(),
            hue=torch.zeros(n, dtype=torch.float32, device=dev),
            order=order,
            gray=false.clone(),
            blur_apply=false.clone(),
            sigma=ones.clone(),
            solarize=false.clone(),
        )

    def check_crop(self, src_sizes: Tensor) -> None:
        """Raise ValueError if a crop box leaves its source (part of :meth:`validate`)."""
        y0, x0, h, w = self.crop.long().unbind(1)
        hh, ww = src_sizes.to(self.device).long().unbind(1)
        ok = (y0 >= 0) & (x0 >= 0) & (h >= 1) & (w >= 1) & (y0 + h <= hh) & (x0 + w <= ww)
        if not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"params.crop[{bad}] = {self.crop[bad].tolist()} (y0, x0, h, w) does not fit its "
                f"source of size {src_sizes[bad].tolist()} (H, W)"
            )

    def validate(self, src_sizes: Tensor) -> None:
        """Raise ValueError naming the first field and image that break :data:`PARAM_RULES`.

        The one rule every entry point that takes explicit parameters applies (the reference,
        the torch, native, Triton and DALI backends, ``SimCLRAugmentation.apply``). Every row is
        checked, also rows whose op is switched off. A host sync: parameters drawn by
        :func:`sample_params` satisfy it by construction and skip it (``validate=False``).

        Args:
            src_sizes: (N, 2) integer (H, W) of the sources the parameters are applied to.
        """
        if src_sizes.shape != (len(self), 2):
            raise ValueError(
                f"src_sizes must be ({len(self)}, 2) (H, W), got {tuple(src_sizes.shape)}"
            )
        for name in ("crop", "order"):
            t: Tensor = getattr(self, name)
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise ValueError(f"params.{name} must be an integer tensor, got {t.dtype}")
        for name in _FLAG_FIELDS:
            t = getattr(self, name)
            if t.dtype != torch.bool:
                raise ValueError(f"params.{name} must be a bool tensor, got {t.dtype}")
        if len(self) == 0:
            return
        self.check_crop(src_sizes)
        perm = torch.arange(4, device=self.device)
        ok = (self.order.long().sort(dim=1).values == perm).all(dim=1)
        if not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"params.order[{bad}] = {self.order[bad].tolist()} is not a permutation of "
                f"0..3 ({', '.join(f'{i} {op}' for i, op in enumerate(JITTER_OPS))})"
            )
        for name, (lo, hi, text) in _FACTOR_RULES.items():
            t = getattr(self, name)
            if not t.dtype.is_floating_point:
                raise ValueError(f"params.{name} must be a floating tensor, got {t.dtype}")
            v = t.double()
            ok = torch.isfinite(v) & (v >= lo) & (v <= hi)
            if name == "sigma":
                ok &= v > 0
            if not bool(ok.all()):
                bad = int((~ok).nonzero()[0, 0])
                raise ValueError(f"params.{name}[{bad}] = {float(t[bad])} must be {text}")


def _crop_boxes(
    u_area: Tensor, u_logr: Tensor, u_y: Tensor, u_x: Tensor, hw: Tensor, config: AugmentConfig
) -> Tensor:
    """torchvision's RandomResizedCrop rule, vectorised over images and tries (float64 maths).

    For each try t: area = A·U(scale), log r = U(log ratio), w = round(√(area·r)),
    h = round(√(area/r)) (round half to even, as Python's ``round``); a try is accepted when
    0 < w ≤ W and 0 < h ≤ H, and the first accepted try wins, its corner uniform over the valid
    positions. With no accepted try: the centre crop of the largest box whose ratio is clamped to
    the ratio range.
    """
    hh = hw[:, 0:1].double()
    ww = hw[:, 1:2].double()
    area = hh * ww
    lo, hi = config.scale
    target = area * (lo + (hi - lo) * u_area)
    llo, lhi = math.log(config.ratio[0]), math.log(config.ratio[1])
    r = torch.exp(llo + (lhi - llo) * u_logr)
    w = torch.round(torch.sqrt(target * r))
    h = torch.round(torch.sqrt(target / r))
    ok = (w > 0) & (w <= ww) & (h > 0) & (h <= hh)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # first accepted try (0 when none)
    found = ok.any(dim=1)
    w_t = w.gather(1, first).squeeze(1)
    h_t = h.gather(1, first).squeeze(1)
    hh1, ww1 = hh.squeeze(1), ww.squeeze(1)
    y_t = torch.floor(u_y * (hh1 - h_t + 1)).clamp_max(hh1 - h_t)
    x_t = torch.floor(u_x * (ww1 - w_t + 1)).clamp_max(ww1 - w_t)

    # Fallback: centre crop with the ratio clamped into [ratio_lo, ratio_hi].
    in_ratio = ww1 / hh1
    too_tall = in_ratio < config.ratio[0]
    too_wide = in_ratio > config.ratio[1]
    w_f = torch.where(too_wide, torch.round(hh1 * config.ratio[1]), ww1)
    h_f = torch.where(too_tall, torch.round(ww1 / config.ratio[0]), hh1)
    y_f = torch.div(hh1 - h_f, 2, rounding_mode="floor")
    x_f = torch.div(ww1 - w_f, 2, rounding_mode="floor")

    box = torch.stack(
        [
            torch.where(found, y_t, y_f),
            torch.where(found, x_t, x_f),
            torch.where(found, h_t, h_f),
            torch.where(found, w_t, w_f),
        ],
        dim=1,
    )
    return box.to(torch.int32)


def sample_params(
    n: int,
    src_sizes: Tensor,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Draw the parameters of one view of ``n`` images, on ``src_sizes.device``, with no host sync.

    Args:
        n: number of images.
        src_sizes: (n, 2) integer tensor of source (H, W), on the device the draw happens on.
        config: what to draw (probabilities, ranges).
        generator: a seeded ``torch.Generator`` on the same device (None: torch's default one).

    All randomness comes from ONE ``torch.rand((n, 2·T + 16), float64)`` call (T = max_tries),
    so a fixed seed gives the same parameters on the same device type. Columns: T area draws,
    T log-ratio draws, crop y, crop x, flip, jitter, brightness, contrast, saturation, hue, four
    order keys (argsort → a uniform random permutation per image), gray, blur, sigma, solarize.
    """
    if src_sizes.ndim != 2 or src_sizes.shape != (n, 2):
        raise ValueError(f"src_sizes must be ({n}, 2) (H, W), got {tuple(src_sizes.shape)}")
    if src_sizes.dtype.is_floating_point or src_sizes.dtype == torch.bool:
        raise ValueError(f"src_sizes must be an integer tensor, got {src_sizes.dtype}")
    dev = src_sizes.device
    t = config.max_tries
    u = torch.rand(
        (n, 2 * t + _DRAWS_AFTER_CROP), generator=generator, device=dev, dtype=torch.float64
    )
    crop = _crop_boxes(u[:, :t], u[:, t : 2 * t], u[:, 2 * t], u[:, 2 * t + 1], src_sizes, config)
    c = 2 * t + 2
    flip, jit, ub, uc, us, uh = u[:, c : c + 6].unbind(1)
    keys = u[:, c + 6 : c + 10]
    ug, ubl, usg, usol = u[:, c + 10 : c + 14].unbind(1)

    f_lo, f_hi = config.brightness_range
    h_lo, h_hi = config.hue_range
    s_lo, s_hi = config.sigma

    def factor(v: Tensor, lo: float, hi: float) -> Tensor:
        return (lo + (hi - lo) * v).float()

    return AugmentParams(
        crop=crop,
        flip=flip < config.flip_p,
        jitter_apply=jit < config.jitter_p,
        brightness=factor(ub, f_lo, f_hi),
        contrast=factor(uc, f_lo, f_hi),
        saturation=factor(us, f_lo, f_hi),
        hue=factor(uh, h_lo, h_hi),
        order=keys.argsort(dim=1).to(torch.int32),
        gray=ug < config.gray_p,
        blur_apply=ubl < config.blur_p,
        sigma=factor(usg, s_lo, s_hi),
        solarize=usol < config.solarize_p,
    )
