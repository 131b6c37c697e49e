"""SimCLR augmentation: parameter statistics, reference closed forms, torch path vs reference,
kornia baseline promises, API errors.

Statistical tests use n draws and accept |k/n − p| ≤ 5·√(p(1 − p)/n) (a false failure about once
in 3·10⁶ runs); every bound is tight enough that the nearest wrong setting (kornia's gray p = 0.1,
an unapplied jitter p, a flipped comparison) fails it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastclr.augment import (
    AugmentConfig,
    AugmentParams,
    SimCLRAugmentation,
    apply_reference,
    apply_torch,
    sample_params,
)
from fastclr.augment.reference import _blur, gaussian_taps, hsv_to_rgb, rgb_to_hsv
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference

N_STAT = 20_000


def _binomial_ok(mask: torch.Tensor, p: float) -> bool:
    n = mask.numel()
    k = int(mask.sum())
    return abs(k / n - p) <= 5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


def _draw(config: AugmentConfig, n: int = N_STAT, hw: tuple[int, int] = (480, 640), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return sample_params(n, torch.tensor([hw]).expand(n, 2), config, g)


def _with(p: AugmentParams, **kw: torch.Tensor) -> AugmentParams:
    fields = {f: getattr(p, f) for f in p.__dataclass_fields__}
    fields.update(kw)
    return AugmentParams(**fields)


def _unnormalise(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float64).view(1, 3, 1, 1)
    return x.double() * std + mean


# ---------------------------------------------------------------- parameter statistics


@pytest.mark.parametrize(
    ("cfg", "blur_p"), [(AugmentConfig.imagenet(), 0.5), (AugmentConfig.cifar(), 0.0)]
)
def test_probabilities(cfg: AugmentConfig, blur_p: float) -> None:
    p = _draw(cfg)
    assert _binomial_ok(p.flip, 0.5)
    assert _binomial_ok(p.jitter_apply, 0.8)
    assert _binomial_ok(p.gray, 0.2)
    assert _binomial_ok(p.blur_apply, blur_p)
    assert not p.solarize.any()
    # the draws are independent: flip and gray co-occur at 0.5 · 0.2
    assert _binomial_ok(p.flip & p.gray, 0.1)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_jitter_factor_ranges(strength: float) -> None:
    cfg = AugmentConfig.imagenet(strength=strength)
    p = _draw(cfg)
    lo, hi = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.dtype == torch.float32
        assert lo <= float(f.min()) < lo + 0.01 and hi - 0.01 < float(f.max()) <= hi
        assert abs(float(f.double().mean()) - (lo + hi) / 2) < 0.02
    h = 0.2 * strength
    assert -h <= float(p.hue.min()) < -h + 0.01 and h - 0.01 < float(p.hue.max()) <= h
    assert float(p.sigma.max()) <= 2.0
    assert float(p.sigma.min()) >= 0.1 and abs(float(p.sigma.mean()) - 1.05) < 0.03


def test_order_is_uniform_permutation() -> None:
    p = _draw(AugmentConfig.imagenet())
    assert p.order.dtype == torch.int32
    assert torch.equal(
        p.order.sort(dim=1).values, torch.arange(4, dtype=torch.int32).expand_as(p.order)
    )
    for op in range(4):
        for step in range(4):
            assert _binomial_ok(p.order[:, step] == op, 0.25)
    codes = (p.order.long() * torch.tensor([64, 16, 4, 1])).sum(1)
    assert codes.unique().numel() == 24


def test_crop_area_and_ratio() -> None:
    hw = (1000, 1000)
    p = _draw(AugmentConfig.imagenet(), hw=hw)
    y0, x0, h, w = p.crop.double().unbind(1)
    assert p.crop.dtype == torch.int32
    assert (
        (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= hw[0]).all() and (x0 + w <= hw[1]).all()
    )
    area = h * w / (hw[0] * hw[1])
    logr = torch.log(w / h)
    # rounding to integers moves area and ratio by at most ~0.5 px / 280 px
    assert float(area.min()) >= 0.08 * (1 - 0.01) and float(area.max()) <= 1.0
    assert (
        float(logr.min()) >= math.log(3 / 4) - 0.01 and float(logr.max()) <= math.log(4 / 3) + 0.01
    )
    # accepted draws of a square source: area uniform on [0.08, 0.75] (every ratio fits there)
    inside = area[(area >= 0.08) & (area < 0.75)]
    edges = torch.linspace(0.08, 0.75, 5, dtype=torch.float64)
    for a, b in itertools.pairwise(edges):
        assert _binomial_ok((inside >= a) & (inside < b), 0.25)
    # the corner is uniform over the valid positions
    free = (hw[0] - h).clamp_min(1)
    assert abs(float((y0 / free).mean()) - 0.5) < 0.01
    assert abs(float((x0 / (hw[1] - w).clamp_min(1)).mean()) - 0.5) < 0.01


@pytest.mark.peers
def test_crop_matches_torchvision_distribution() -> None:
    tv = pytest.importorskip("torchvision.transforms")
    hw = (300, 500)
    p = _draw(AugmentConfig.imagenet(), n=4000, hw=hw)
    ours = (p.crop[:, 2].double() * p.crop[:, 3]).mean() / (hw[0] * hw[1])
    img = torch.zeros(1, *hw)
    theirs = []
    for _ in range(4000):
        _, _, h, w = tv.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        theirs.append(h * w / (hw[0] * hw[1]))
    t = torch.tensor(theirs, dtype=torch.float64)
    # area fraction has sd ≈ 0.26: two means of 4000 differ by ≤ 5·0.26·√(2/4000) ≈ 0.03
    assert abs(float(ours) - float(t.mean())) < 0.03


@pytest.mark.parametrize(
    ("hw", "box"),
    # no try can fit: torchvision's fallback, the centre crop with the ratio clamped to [3/4, 4/3]
    [((10, 1000), (0, 493, 10, 13)), ((1000, 10), (493, 0, 13, 10)), ((2000, 4), (997, 0, 5, 4))],
)
def test_crop_fallback_is_torchvision_centre_crop(
    hw: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    p = _draw(AugmentConfig.imagenet(), n=64, hw=hw)
    assert torch.equal(p.crop, torch.tensor(box, dtype=torch.int32).expand(64, 4))


@pytest.mark.peers
@pytest.mark.parametrize("hw", [(10, 1000), (1000, 10), (2000, 4)])
def test_crop_fallback_box_is_torchvisions(hw: tuple[int, int]) -> None:
    tv = pytest.importorskip("torchvision.transforms")
    p = _draw(AugmentConfig.imagenet(), n=4, hw=hw)
    expected = tv.RandomResizedCrop.get_params(torch.zeros(1, *hw), [0.08, 1.0], [3 / 4, 4 / 3])
    assert tuple(expected) == tuple(int(v) for v in p.crop[0])


def test_sampling_is_deterministic_and_views_differ() -> None:
    imgs = torch.randint(0, 256, (6, 40, 48, 3), dtype=torch.uint8)
    cfg = AugmentConfig.imagenet(24)
    a1, a2 = SimCLRAugmentation(cfg, seed=7)(imgs)
    b1, b2 = SimCLRAugmentation(cfg, seed=7)(imgs)
    c1, _ = SimCLRAugmentation(cfg, seed=8)(imgs)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, c1)
    aug = SimCLRAugmentation(cfg, seed=7)
    p1, p2 = aug.sample(6, torch.tensor([[40, 48]] * 6))
    assert not torch.equal(p1.crop, p2.crop)
    assert torch.equal(aug.apply(imgs, p1), a1)


# ---------------------------------------------------------------- reference closed forms


def _identity(n: int, hw: tuple[int, int]) -> AugmentParams:
    return AugmentParams.identity(torch.tensor([hw]).expand(n, 2))


def test_identity_params_are_resize_and_normalise() -> None:
    cfg = AugmentConfig.imagenet(16)
    imgs = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    out = apply_reference(imgs, _identity(3, (16, 16)), cfg)
    assert out.shape == (3, 3, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    expected = imgs.permute(0, 3, 1, 2).double() / 255
    assert torch.allclose(_unnormalise(out, cfg), expected, atol=1e-6)
    # a different size: plain bilinear, align_corners=False, no antialias
    imgs = torch.randint(0, 256, (2, 37, 23, 3), dtype=torch.uint8)
    out = apply_reference(imgs, _identity(2, (37, 23)), cfg)
    ref = F.interpolate(
        imgs.permute(0, 3, 1, 2).double() / 255, (16, 16), mode="bilinear", align_corners=False
    )
    assert torch.allclose(_unnormalise(out, cfg), ref, atol=1e-6)


def test_channel_rules() -> None:
    cfg = AugmentConfig.imagenet(8)
    rgb = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8)
    rgba = torch.cat([rgb, torch.randint(0, 256, (8, 8, 1), dtype=torch.uint8)], -1)
    gray = rgb[..., :1]
    p = _identity(1, (8, 8))
    assert torch.equal(apply_reference([rgba], p, cfg), apply_reference([rgb], p, cfg))
    assert torch.equal(
        apply_reference([gray], p, cfg), apply_reference([gray.expand(8, 8, 3)], p, cfg)
    )


@pytest.mark.parametrize("f", [0.3, 1.0, 1.7])
def test_brightness_on_constant_image(f: float) -> None:
    cfg = AugmentConfig.imagenet(8)
    imgs = torch.full((1, 10, 10, 3), 200, dtype=torch.uint8)
    p = _with(
        _identity(1, (10, 10)), jitter_apply=torch.tensor([True]), brightness=torch.tensor([f])
    )
    out = _unnormalise(apply_reference(imgs, p, cfg), cfg)
    assert torch.allclose(out, torch.full_like(out, min(200 / 255 * f, 1.0)), atol=1e-6)


def test_grayscale_channels_equal_and_luma() -> None:
    cfg = AugmentConfig.imagenet(8)
    imgs = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    p = _with(_identity(2, (8, 8)), gray=torch.tensor([True, True]))
    out = _unnormalise(apply_reference(imgs, p, cfg), cfg)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-6)
    assert torch.allclose(out[:, 1], out[:, 2], atol=1e-6)
    x = imgs.permute(0, 3, 1, 2).double() / 255
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(out[:, 0], luma, atol=1e-6)


def test_blur_of_constant_is_constant() -> None:
    cfg = AugmentConfig.imagenet(40)  # kernel side int(4.0) = 4 → forced odd 5
    assert cfg.blur_kernel_size == 5 and AugmentConfig.imagenet(224).blur_kernel_size == 23
    assert AugmentConfig.cifar(32).blur_kernel_size == 3
    imgs = torch.full((1, 40, 40, 3), 77, dtype=torch.uint8)
    p = _with(_identity(1, (40, 40)), blur_apply=torch.tensor([True]), sigma=torch.tensor([1.7]))
    out = _unnormalise(apply_reference(imgs, p, cfg), cfg)
    assert torch.allclose(out, torch.full_like(out, 77 / 255), atol=1e-6)
    # a single bright pixel spreads into the (normalised, symmetric) kernel's outer product
    x = torch.zeros(1, 11, 11, dtype=torch.float64)
    x[0, 5, 5] = 1.0
    taps = gaussian_taps(torch.tensor(0.9, dtype=torch.float64), 5)
    assert torch.allclose(_blur(x, 0.9, 5)[0, 3:8, 3:8], torch.outer(taps, taps), atol=1e-12)


@pytest.mark.peers
def test_blur_matches_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(3, 20, 20, dtype=torch.float64)
    ref = tvf.gaussian_blur(x, [5, 5], [1.3, 1.3])
    assert torch.allclose(_blur(x, 1.3, 5), ref, atol=1e-6)


def test_saturation_and_contrast_closed_forms() -> None:
    from fastclr.augment.reference import _jitter_op, rgb_to_gray

    x = torch.rand(3, 9, 9, dtype=torch.float64)
    assert torch.allclose(_jitter_op(x, 2, 0.0), rgb_to_gray(x).expand(3, 9, 9), atol=1e-12)
    m = rgb_to_gray(x).mean()
    assert torch.allclose(_jitter_op(x, 1, 0.0), m.expand(3, 9, 9), atol=1e-12)
    assert torch.allclose(_jitter_op(x, 1, 1.0), x) and torch.allclose(_jitter_op(x, 2, 1.0), x)


def test_flip_twice_is_identity() -> None:
    cfg = AugmentConfig.imagenet(12)
    imgs = torch.randint(0, 256, (2, 15, 19, 3), dtype=torch.uint8)
    p = _identity(2, (15, 19))
    flipped = apply_reference(imgs, _with(p, flip=torch.tensor([True, True])), cfg)
    assert torch.equal(flipped, apply_reference(imgs.flip(2), p, cfg))
    assert torch.allclose(flipped.flip(3), apply_reference(imgs, p, cfg))


def test_hue_zero_and_hsv_round_trip() -> None:
    cfg = AugmentConfig.imagenet(8)
    imgs = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    p = _identity(2, (8, 8))
    hue0 = _with(p, jitter_apply=torch.tensor([True, True]))  # all factors neutral
    assert torch.allclose(
        apply_reference(imgs, hue0, cfg), apply_reference(imgs, p, cfg), atol=1e-6
    )
    x = torch.rand(3, 9, 9, dtype=torch.float64)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-12)
    # a full turn is the identity too, and ±0.5 commute
    h = rgb_to_hsv(x)
    assert torch.allclose(hsv_to_rgb(torch.stack([(h[0] + 1.0) % 1, h[1], h[2]])), x, atol=1e-12)


@pytest.mark.parametrize(
    ("op", "fn", "factor"),
    [
        (0, "adjust_brightness", 1.4),
        (1, "adjust_contrast", 0.55),
        (2, "adjust_saturation", 1.6),
        (3, "adjust_hue", 0.13),
        (3, "adjust_hue", -0.31),
    ],
)
@pytest.mark.peers
def test_jitter_ops_match_torchvision(op: int, fn: str, factor: float) -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from fastclr.augment.reference import _jitter_op

    x = torch.rand(3, 12, 12, dtype=torch.float64)
    # torchvision's luma uses 0.2989 for R (ours 0.299): contrast/saturation differ by ≤ 1e-4
    assert torch.allclose(_jitter_op(x, op, factor), getattr(tvf, fn)(x, factor), atol=2e-4)


# ---------------------------------------------------------------- torch path vs reference


@st.composite
def _batch(draw: st.DrawFn) -> tuple[list[torch.Tensor] | torch.Tensor, AugmentConfig, int]:
    n = draw(st.integers(1, 4))
    size = draw(st.sampled_from([1, 7, 16, 23, 32]))
    ragged = draw(st.booleans())
    channels = draw(st.sampled_from([1, 3, 4]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if ragged:
        shapes = [(draw(st.integers(1, 41)), draw(st.integers(1, 41))) for _ in range(n)]
        imgs: list[torch.Tensor] | torch.Tensor = [
            torch.randint(0, 256, (h, w, channels), dtype=torch.uint8, generator=g)
            for h, w in shapes
        ]
    else:
        h, w = draw(st.integers(1, 41)), draw(st.integers(1, 41))
        imgs = torch.randint(0, 256, (n, h, w, channels), dtype=torch.uint8, generator=g)
    cfg = AugmentConfig.imagenet(
        size,
        strength=draw(st.sampled_from([0.5, 1.0, 2.0])),
        jitter_p=draw(st.sampled_from([0.8, 1.0])),
        gray_p=draw(st.sampled_from([0.0, 0.2, 0.5])),
        blur_p=draw(st.sampled_from([0.0, 0.5, 1.0])),
        solarize_p=draw(st.sampled_from([0.0, 0.5])),
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])),
    )
    return imgs, cfg, seed


def _sizes(imgs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    if isinstance(imgs, torch.Tensor):
        return torch.tensor([imgs.shape[1:3]]).expand(imgs.shape[0], 2)
    return torch.tensor([t.shape[:2] for t in imgs])


def _assert_close_to_reference(out: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype) -> None:
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(out, ref64, atol=AUGMENT_ATOL)


@given(_batch())
def test_torch_matches_reference(
    case: tuple[list[torch.Tensor] | torch.Tensor, AugmentConfig, int],
) -> None:
    imgs, cfg, seed = case
    n = len(imgs)
    p = sample_params(n, _sizes(imgs), cfg, torch.Generator().manual_seed(seed))
    ref64 = apply_reference(imgs, p, replace(cfg, dtype=torch.float64), layout="NHWC")
    _assert_close_to_reference(apply_torch(imgs, p, cfg, layout="NHWC"), ref64, cfg.dtype)


@pytest.mark.parametrize("hw", [(50, 61), (90, 71)])  # matmul resize, F.interpolate per image
def test_torch_matches_reference_all_ops_on(hw: tuple[int, int]) -> None:
    """Every op on for every image (jitter in each drawn order, gray, blur, solarize)."""
    cfg = AugmentConfig.imagenet(45, jitter_p=1.0, blur_p=1.0, solarize_p=1.0)
    imgs = torch.randint(0, 256, (24, *hw, 3), dtype=torch.uint8)
    p = sample_params(24, _sizes(imgs), cfg, torch.Generator().manual_seed(3))
    ref = apply_reference(imgs, p, AugmentConfig.imagenet(45, dtype=torch.float64))
    _assert_close_to_reference(apply_torch(imgs, p, cfg), ref, torch.float32)
    p = _with(p, gray=torch.zeros(24, dtype=torch.bool))
    ref = apply_reference(imgs, p, AugmentConfig.imagenet(45, dtype=torch.float64))
    _assert_close_to_reference(apply_torch(imgs, p, cfg), ref, torch.float32)


def test_torch_matches_reference_imagenet_sizes() -> None:
    """224 px from ~300-px noise sources: float32 sample positions at their worst."""
    cfg = AugmentConfig.imagenet(224, jitter_p=1.0, blur_p=0.5)
    imgs = [
        torch.randint(0, 256, (h, w, 3), dtype=torch.uint8) for h, w in [(288, 288), (320, 257)]
    ]
    p = sample_params(2, _sizes(imgs), cfg, torch.Generator().manual_seed(11))
    ref = apply_reference(imgs, p, replace(cfg, dtype=torch.float64))
    _assert_close_to_reference(apply_torch(imgs, p, cfg), ref, torch.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_resize_paths_and_chunking_agree(threads: int) -> None:
    """The three resizes, cache-sized chunks (1 thread) and the whole batch agree."""
    from fastclr.augment import torch_backend as tb

    imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8) for h, w in [(70, 33), (5, 9)]]
    imgs += [torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8)] * 3
    cfg = AugmentConfig.imagenet(24, jitter_p=1.0, blur_p=0.5)
    p = sample_params(5, _sizes(imgs), cfg, torch.Generator().manual_seed(5))
    src = tb._dense_planar(imgs)
    a = tb._crop_resize(src, p, 24, matmul=True)
    b = tb._crop_resize(src, p, 24, matmul=False)
    c = tb._crop_resize_each(imgs, p, 24)  # per-image F.interpolate (CPU, large sources)
    d = tb._crop_resize_nhwc(imgs, p, 24)  # NHWC bmm (CPU, small sources)
    assert (a - b).abs().max() < 1e-6 and (a - d).abs().max() < 1e-6
    assert (a - c).abs().max() < 5e-6  # F.interpolate's float32 sample positions
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        whole = apply_torch(imgs, p, cfg)
        old = tb.CPU_CHUNK_BYTES
        tb.CPU_CHUNK_BYTES = 1  # one image per chunk when single-threaded
        try:
            chunked = apply_torch(imgs, p, cfg)
        finally:
            tb.CPU_CHUNK_BYTES = old
    finally:
        torch.set_num_threads(before)
    assert (whole - chunked).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_on_cuda_matches_reference() -> None:
    cfg = AugmentConfig.imagenet(32, jitter_p=1.0, blur_p=0.5)
    imgs = torch.randint(0, 256, (16, 40, 37, 3), dtype=torch.uint8)
    p = sample_params(16, _sizes(imgs), cfg, torch.Generator().manual_seed(0))
    ref = apply_reference(imgs, p, AugmentConfig.imagenet(32, dtype=torch.float64))
    out = apply_torch(imgs.cuda(), p.to("cuda"), cfg).cpu()
    _assert_close_to_reference(out, ref, torch.float32)


# ---------------------------------------------------------------- kornia baseline


def test_kornia_backend_promises() -> None:
    cfg = AugmentConfig.imagenet(8, blur_p=0.0)
    imgs = torch.randint(0, 256, (1000, 10, 10, 3), dtype=torch.uint8)
    torch.manual_seed(0)
    v1, v2 = SimCLRAugmentation(cfg, backend="kornia")(imgs)
    for v in (v1, v2):
        assert v.shape == (1000, 3, 8, 8) and v.dtype == torch.float32
        assert v.is_contiguous(memory_format=torch.channels_last)
        x = _unnormalise(v, cfg)
        assert float(x.min()) >= -1e-5 and float(x.max()) <= 1 + 1e-5
    assert not torch.equal(v1, v2)
    # grayscale p = 0.2 (kornia's own default is 0.1); jitter cannot make exact gray at s = 1
    x = _unnormalise(v1, cfg)
    gray = ((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 1e-5) & (
        (x[:, 1] - x[:, 2]).abs().amax((1, 2)) < 1e-5
    )
    assert _binomial_ok(gray, 0.2)


def test_kornia_rejects_ragged_and_sample() -> None:
    aug = SimCLRAugmentation(AugmentConfig.cifar(), backend="kornia")
    with pytest.raises(ValueError, match="ragged"):
        aug([torch.zeros(8, 8, 3, dtype=torch.uint8), torch.zeros(9, 9, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="kornia"):
        aug.sample(2, torch.tensor([[8, 8], [8, 8]]))


# ---------------------------------------------------------------- API and errors


def test_api_shapes_backends_and_auto() -> None:
    imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8) for h, w in [(20, 30), (9, 11)]]
    aug = SimCLRAugmentation(AugmentConfig.cifar(16, dtype=torch.bfloat16), seed=0)
    assert aug.resolve_backend(torch.device("cpu"), ragged=True) == "torch"
    v1, v2 = aug(imgs)
    assert v1.shape == v2.shape == (2, 3, 16, 16) and v1.dtype == torch.bfloat16
    assert v1.is_contiguous(memory_format=torch.channels_last)
    p1, _ = aug.sample(2, _sizes(imgs))
    ref = SimCLRAugmentation(aug.config, backend="reference").apply(imgs, p1)
    assert (ref.float() - aug.apply(imgs, p1).float()).abs().max() < 0.05


def test_auto_falls_back_to_torch_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastclr.augment as aug_mod
    from fastclr import backends

    registry = aug_mod.REGISTRY
    monkeypatch.delitem(registry._loaded, "triton", raising=False)
    monkeypatch.setitem(registry._errors, "triton", "No module named 'triton'")
    monkeypatch.setattr(backends, "_announced", set())
    with pytest.warns(RuntimeWarning, match=r"augmentation on cuda falls back to backend='torch'"):
        assert SimCLRAugmentation().resolve_backend(torch.device("cuda")) == "torch"
    with pytest.raises(
        RuntimeError, match=r"backend='triton' is not available.*pip install triton"
    ):
        SimCLRAugmentation(backend="triton").apply(
            torch.zeros(1, 8, 8, 3, dtype=torch.uint8),
            AugmentParams.identity(torch.tensor([[8, 8]])),
        )


@pytest.mark.parametrize(
    ("images", "exc", "match"),
    [
        (torch.zeros(2, 8, 8, 3), TypeError, "images must have dtype torch.uint8"),
        (torch.zeros(2, 8, 8, 2, dtype=torch.uint8), ValueError, "channels"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), ValueError, "rank 4"),
        (torch.zeros(0, 8, 8, 3, dtype=torch.uint8), ValueError, "empty"),
        ([], ValueError, "empty"),
        ([torch.zeros(2, 8, 8, 3, dtype=torch.uint8)], ValueError, r"images\[0\] must have rank 3"),
        ([torch.zeros(8, 8, 3, dtype=torch.int32)], TypeError, r"images\[0\] must have dtype"),
        ("abc", TypeError, "images must be"),
    ],
)
def test_input_errors(images: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        SimCLRAugmentation(AugmentConfig.cifar(8), seed=0)(images)  # type: ignore[arg-type]


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="backend"):
        SimCLRAugmentation(backend="cuda")
    with pytest.raises(TypeError, match="config"):
        SimCLRAugmentation(config={"size": 8})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gray_p"):
        AugmentConfig(gray_p=1.5)
    aug = SimCLRAugmentation(AugmentConfig.cifar(8), seed=0)
    imgs = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    p1, _ = aug.sample(2, _sizes(imgs))
    with pytest.raises(ValueError, match=r"params\.crop"):
        aug.apply(
            imgs, _with(p1, crop=torch.tensor([[0, 0, 9, 8], [0, 0, 8, 8]], dtype=torch.int32))
        )
    with pytest.raises(ValueError, match="params has 2 images"):
        aug.apply(imgs[:1], p1)
    with pytest.raises(ValueError, match="src_sizes"):
        sample_params(3, torch.tensor([[8, 8]]), aug.config)
    with pytest.raises(ValueError, match=r"params\.flip"):
        _with(p1, flip=torch.zeros(3, dtype=torch.bool))
