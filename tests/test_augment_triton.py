"""The fused Triton augmentation against the float64 reference, for the same parameters.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); sizes stay small (outputs ≤ 20 px, N ≤ 4) so the module runs in well under
two minutes on two cores.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastclr.augment.params import AugmentConfig, AugmentParams, sample_params
from fastclr.augment.reference import apply_reference
from fastclr.augment.triton_backend import apply_triton, apply_triton_views, pack_sources
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference, ulp

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1 (CPU interpreter)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _sources(n: int, h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8).to(DEVICE)


def _sizes(images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        n, h, w = images.shape[:3]
        return torch.tensor([[h, w]] * n)
    return torch.tensor([[t.shape[0], t.shape[1]] for t in images])


def _params(images: torch.Tensor | list[torch.Tensor], config: AugmentConfig, seed: int,
            **force: bool) -> AugmentParams:  # fmt: skip
    """sample_params on the CPU (device-independent draw), with flags optionally forced on/off."""
    sizes = _sizes(images)
    p = sample_params(sizes.shape[0], sizes, config, torch.Generator().manual_seed(seed))
    if force:
        p = replace(p, **{k: torch.full_like(getattr(p, k), v) for k, v in force.items()})
    return p.to(DEVICE)


def _check(images: torch.Tensor | list[torch.Tensor], params: AugmentParams,
           config: AugmentConfig, out: torch.Tensor) -> None:  # fmt: skip
    s = config.size
    n = len(params)
    assert out.shape == (n, 3, s, s)
    assert out.dtype == config.dtype
    assert out.device.type == torch.device(DEVICE).type
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref64 = apply_reference(
        images, params, replace(config, dtype=torch.float64), layout="NHWC"
    ).cpu()
    if config.dtype in (torch.float16, torch.bfloat16) and os.environ.get("TRITON_INTERPRET"):
        # Triton's interpreter casts to bf16/fp16 by truncation, not to nearest: the reference's
        # own error in that dtype is then up to one ulp per element, which is what is allowed
        lowp = ref64 + ulp(ref64, config.dtype)
        assert_close_to_reference(out.cpu(), ref64, lowp, k=1, atol=AUGMENT_ATOL, elementwise=True)
    else:
        assert_close_to_reference(out.cpu(), ref64, atol=AUGMENT_ATOL, elementwise=True)


# (config, forced flags): blur on and off, solarize, CIFAR recipe, an odd output side.
CASES = [
    pytest.param(AugmentConfig.imagenet(size=20, blur_p=1.0), {}, id="imagenet-blur-all"),
    pytest.param(AugmentConfig.imagenet(size=13), {"jitter_apply": True}, id="odd-13-jitter"),
    pytest.param(AugmentConfig.cifar(size=12), {}, id="cifar-12"),
    pytest.param(
        AugmentConfig.imagenet(size=16, solarize_p=1.0, blur_p=0.5),
        {"gray": False},
        id="solarize",
    ),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("config", "force"), CASES)
def test_matches_reference_dense(config: AugmentConfig, force: dict[str, bool],
                                 dtype: torch.dtype) -> None:  # fmt: skip
    config = replace(config, dtype=dtype)
    images = _sources(4, 23, 31, seed=1)
    params = _params(images, config, seed=2, **force)
    _check(images, params, config, apply_triton(images, params, config))


def test_every_jitter_order_matches_reference() -> None:
    """All 24 orders: contrast's mean is taken after whatever precedes it (the multi-pass case)."""
    perms = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.int32)
    n = perms.shape[0]
    config = AugmentConfig.imagenet(size=8, blur_p=0.0, strength=1.0)
    images = _sources(n, 11, 9, seed=3)
    params = _params(images, config, seed=4, jitter_apply=True, gray=False)
    # Strong factors so that each op visibly changes the image before the contrast step.
    g = torch.Generator().manual_seed(5)
    params = replace(
        params,
        order=perms.to(DEVICE),
        brightness=(0.2 + 1.6 * torch.rand(n, generator=g)).to(DEVICE),
        contrast=(0.2 + 1.6 * torch.rand(n, generator=g)).to(DEVICE),
        saturation=(0.2 + 1.6 * torch.rand(n, generator=g)).to(DEVICE),
        hue=(torch.rand(n, generator=g) - 0.5).to(DEVICE),
    )
    _check(images, params, config, apply_triton(images, params, config))


def test_blur_flag_is_honoured_when_config_blur_p_is_zero() -> None:
    """Hand-made parameters may blur under a no-blur config (CIFAR); the reference does."""
    config = AugmentConfig.cifar(size=20)
    images = _sources(2, 15, 18, seed=14)
    params = _params(images, config, seed=15, blur_apply=True)
    _check(images, params, config, apply_triton(images, params, config))


def test_many_programs_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks: several contrast partial sums and pixel programs per row, ragged tails."""
    from fastclr.augment import triton_backend

    if not triton_backend._interpreting():
        pytest.skip("block sizes are only overridable under the interpreter")
    monkeypatch.setattr(triton_backend, "BLOCK_INTERPRETED", 32)  # 13² = 169 px: 6 chunks
    config = AugmentConfig.imagenet(size=13, blur_p=0.5)
    images = _sources(3, 19, 21, seed=16)
    params = _params(images, config, seed=17, jitter_apply=True)
    _check(images, params, config, apply_triton(images, params, config))


def test_views_in_one_launch_equal_separate_launches() -> None:
    config = AugmentConfig.imagenet(size=10, blur_p=0.5)
    images = _sources(3, 17, 14, seed=6)
    p1, p2 = _params(images, config, seed=7), _params(images, config, seed=8)
    v1, v2 = apply_triton_views(images, [p1, p2], config)
    assert v1.is_contiguous(memory_format=torch.channels_last)
    assert v2.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(v1, apply_triton(images, p1, config), rtol=0, atol=0)
    torch.testing.assert_close(v2, apply_triton(images, p2, config), rtol=0, atol=0)
    assert not torch.equal(v1, v2)


def test_ragged_batch_with_gray_and_rgba_sources() -> None:
    config = AugmentConfig.imagenet(size=12, blur_p=0.5)
    g = torch.Generator().manual_seed(9)
    images = [
        torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(DEVICE)
        for shape in [(7, 30, 3), (25, 5, 1), (12, 12, 4), (1, 1, 3)]
    ]
    params = _params(images, config, seed=10)
    _check(images, params, config, apply_triton(images, params, config, layout="NHWC"))


def test_pack_sources_offsets() -> None:
    images = [torch.zeros(2, 3, 3, dtype=torch.uint8), torch.ones(4, 1, 1, dtype=torch.uint8)]
    flat, table = pack_sources(images)
    assert flat.numel() == 2 * 3 * 3 + 4
    assert table.tolist() == [[0, 2, 3, 3], [18, 4, 1, 1]]
    dense = torch.zeros(3, 5, 2, 3, dtype=torch.uint8)
    flat, table = pack_sources(dense)
    assert flat.data_ptr() == dense.data_ptr()  # used in place
    assert table[:, 0].tolist() == [0, 30, 60]


def test_identity_params_is_resize_and_normalise() -> None:
    config = AugmentConfig.imagenet(size=9)
    images = _sources(2, 9, 9, seed=11)
    params = AugmentParams.identity(_sizes(images).to(DEVICE))
    out = apply_triton(images, params, config).cpu().double()
    mean = torch.tensor(config.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.cpu().permute(0, 3, 1, 2).double() / 255.0 - mean) / std
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    images = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    params = AugmentParams.identity(torch.tensor([[4, 4]]))
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        apply_triton(images, params, AugmentConfig.imagenet(size=4), layout="NHWC")


def test_wrong_number_of_params() -> None:
    images = _sources(2, 4, 4)
    params = AugmentParams.identity(torch.tensor([[4, 4]]).to(DEVICE))
    with pytest.raises(ValueError, match="has 1 images"):
        apply_triton(images, params, AugmentConfig.imagenet(size=4), layout="NHWC")


@st.composite
def _batches(draw: st.DrawFn) -> tuple[torch.Tensor | list[torch.Tensor], AugmentConfig, int]:
    n = draw(st.integers(1, 4))
    size = draw(st.integers(1, 20))
    config = AugmentConfig.imagenet(
        size=size,
        strength=draw(st.sampled_from([0.5, 1.0, 2.0])),
        jitter_p=draw(st.sampled_from([0.8, 1.0])),
        gray_p=draw(st.sampled_from([0.0, 0.2, 1.0])),
        blur_p=draw(st.sampled_from([0.0, 0.5, 1.0])),
        solarize_p=draw(st.sampled_from([0.0, 0.5])),
        flip_p=0.5,
        dtype=draw(st.sampled_from(DTYPES)),
    )
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if draw(st.booleans()):
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        c = draw(st.sampled_from([1, 3, 4]))
        images: torch.Tensor | list[torch.Tensor] = torch.randint(
            0, 256, (n, h, w, c), generator=g, dtype=torch.uint8
        ).to(DEVICE)
    else:
        images = [
            torch.randint(
                0,
                256,
                (draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.sampled_from([1, 3]))),
                generator=g,
                dtype=torch.uint8,
            ).to(DEVICE)
            for _ in range(n)
        ]
    return images, config, seed


@given(_batches())
def test_matches_reference_hypothesis(
    batch: tuple[torch.Tensor | list[torch.Tensor], AugmentConfig, int],
) -> None:
    images, config, seed = batch
    params = _params(images, config, seed)
    _check(images, params, config, apply_triton(images, params, config, layout="NHWC"))


def test_simclr_augmentation_triton_matches_reference_for_same_seed() -> None:
    """SimCLRAugmentation(backend="triton") draws the same parameters as the reference backend
    for one seed and applies both views in one launch sequence; the views must agree."""
    from fastclr.augment import SimCLRAugmentation

    if os.environ.get("TRITON_INTERPRET") != "1":
        # The parameters are drawn on the images' device, and the reference draws on the CPU:
        # one seed gives the same views only when both run on CPU tensors (the interpreter).
        pytest.skip("compares CPU draws: needs CPU images (the interpreter), not compiled kernels")

    imgs = torch.randint(0, 256, (3, 20, 24, 3), dtype=torch.uint8)
    cfg = AugmentConfig.cifar(12)
    v1, v2 = SimCLRAugmentation(cfg, backend="triton", seed=1)(imgs)
    r1, r2 = SimCLRAugmentation(cfg, backend="reference", seed=1)(imgs)
    assert not torch.equal(v1, v2)
    assert_close_to_reference(v1.cpu(), r1, atol=AUGMENT_ATOL, name="view 1")
    assert_close_to_reference(v2.cpu(), r2, atol=AUGMENT_ATOL, name="view 2")


def test_sigma_zero_and_degenerate_params_give_finite_output() -> None:
    """σ → 0 blurs to the identity: σ = 1e-30 is accepted (finite, > 0) but σ² underflows fp32,
    and the centre tap's 0·∞ was NaN before σ was clamped in the kernel; σ = 0 itself is refused
    with a message. Zero jitter factors and a full hue turn stay finite too."""
    config = AugmentConfig.imagenet(size=20, blur_p=1.0)  # blur kernel side 3
    assert config.blur_kernel_size > 1
    images = _sources(3, 15, 17, seed=30)
    p = _params(images, config, seed=31, blur_apply=True, jitter_apply=True)
    zero = torch.zeros_like(p.sigma)
    with pytest.raises(ValueError, match="sigma"):
        apply_triton(images, replace(p, sigma=zero), config)
    degenerate = replace(
        p, sigma=torch.full_like(p.sigma, 1e-30), brightness=zero, contrast=zero, saturation=zero,
        hue=torch.full_like(p.hue, 0.5),
    )  # fmt: skip
    out = apply_triton(images, degenerate, config)
    assert torch.isfinite(out).all()
    # the same as σ = 1e-3 in the reference (only the centre tap survives): no blur
    tiny = replace(degenerate, sigma=torch.full_like(p.sigma, 1e-3))
    ref = apply_reference(images, tiny, replace(config, dtype=torch.float64))
    assert_close_to_reference(out.cpu(), ref.cpu(), atol=AUGMENT_ATOL, elementwise=True)
    no_blur = replace(degenerate, blur_apply=torch.zeros_like(p.blur_apply))
    torch.testing.assert_close(out, apply_triton(images, no_blur, config), rtol=0, atol=1e-6)


def test_launch_grids_are_one_dimensional(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows (views × images) never sit on grid axis y or z, which stop at 65,535."""
    from fastclr.augment import triton_backend

    grids: list[tuple[int, ...]] = []

    class Recorder:
        def __init__(self, kernel: object) -> None:
            self.kernel = kernel

        def __getitem__(self, grid: tuple[int, ...]):  # type: ignore[no-untyped-def]
            grids.append(tuple(grid))
            return self.kernel[grid]  # type: ignore[index]

    for name in ("augment_contrast_mean_kernel", "augment_color_kernel", "augment_blur_kernel"):
        monkeypatch.setattr(triton_backend, name, Recorder(getattr(triton_backend, name)))
    config = AugmentConfig.imagenet(size=20, blur_p=1.0)  # kernel side 3: both blur passes
    images = _sources(3, 12, 10, seed=40)
    views = [_params(images, config, seed=41), _params(images, config, seed=42)]
    triton_backend.apply_triton_views(images, views, config)
    assert len(grids) == 4 and all(len(g) == 1 for g in grids), grids
    assert all(g[0] % 6 == 0 for g in grids)  # 2 views × 3 images, whole rows of programs


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="70,000 rows are minutes in the interpreter"
)
def test_more_rows_than_a_grid_axis_y_holds() -> None:
    config = AugmentConfig.cifar(size=2)
    images = torch.randint(0, 256, (70_000, 2, 2, 3), dtype=torch.uint8, device=DEVICE)
    params = AugmentParams.identity(_sizes(images).to(DEVICE))
    out = apply_triton(images, params, config)
    mean = torch.tensor(config.mean, device=DEVICE).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=DEVICE).view(1, 3, 1, 1)
    want = (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    torch.testing.assert_close(out[-5:].float(), want[-5:], rtol=0, atol=1e-5)
