"""The native CPU augmentation kernel against the float64 reference, for the same parameters."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastclr.augment import AugmentConfig, SimCLRAugmentation, apply_reference, sample_params
from fastclr.augment.native_backend import apply_native, available
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference

pytestmark = pytest.mark.skipif(not available(), reason="native library not built")


@given(
    n=st.integers(1, 5),
    h=st.integers(3, 41),
    w=st.integers(3, 41),
    size=st.integers(1, 37),
    channels=st.sampled_from([1, 3, 4]),
    preset=st.sampled_from(["cifar", "imagenet", "imagenet-solarize"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_native_matches_reference(
    n: int, h: int, w: int, size: int, channels: int, preset: str, dtype: torch.dtype, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    base = AugmentConfig.cifar(size) if preset == "cifar" else AugmentConfig.imagenet(size)
    cfg = replace(base, dtype=dtype, solarize_p=0.5 if preset.endswith("solarize") else 0.0)
    imgs = torch.randint(0, 256, (n, h, w, channels), dtype=torch.uint8, generator=g)
    params = sample_params(n, torch.tensor([[h, w]] * n), cfg, g)
    got = apply_native(imgs, params, cfg, layout="NHWC")
    ref64 = apply_reference(imgs, params, replace(cfg, dtype=torch.float64), layout="NHWC")
    assert got.shape == (n, 3, size, size) and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(got, ref64, atol=AUGMENT_ATOL, elementwise=True)


def test_every_op_on_with_blur_and_all_orders() -> None:
    """Force jitter, grayscale off/on, blur and each of several orders; compare per image."""
    g = torch.Generator().manual_seed(1)
    cfg = AugmentConfig.imagenet(33, jitter_p=1.0, blur_p=1.0, gray_p=0.0)
    imgs = torch.randint(0, 256, (24, 60, 50, 3), dtype=torch.uint8, generator=g)
    params = sample_params(24, torch.tensor([[60, 50]] * 24), cfg, g)
    assert bool(params.jitter_apply.all()) and bool(params.blur_apply.all())
    assert len({tuple(o) for o in params.order.tolist()}) > 5  # several jitter orders drawn
    got = apply_native(imgs, params, cfg)
    ref = apply_reference(imgs, params, cfg)
    assert_close_to_reference(got, ref, atol=AUGMENT_ATOL)


def test_deterministic_and_thread_count_independent() -> None:
    g = torch.Generator().manual_seed(2)
    cfg = AugmentConfig.imagenet(20)
    imgs = torch.randint(0, 256, (9, 30, 30, 3), dtype=torch.uint8, generator=g)
    params = sample_params(9, torch.tensor([[30, 30]] * 9), cfg, g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = apply_native(imgs, params, cfg)
        torch.set_num_threads(2)
        two = apply_native(imgs, params, cfg)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)  # images are independent: no reduction across threads


def test_auto_picks_native_for_dense_cpu_and_matches_reference_seed() -> None:
    imgs = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    cfg = AugmentConfig.imagenet(24)
    aug = SimCLRAugmentation(cfg, seed=5)
    assert aug.resolve_backend(torch.device("cpu")) == "native"
    v1, v2 = aug(imgs)
    r1, r2 = SimCLRAugmentation(cfg, backend="reference", seed=5)(imgs)
    assert not torch.equal(v1, v2)
    assert_close_to_reference(v1, r1, atol=AUGMENT_ATOL, name="view 1")
    assert_close_to_reference(v2, r2, atol=AUGMENT_ATOL, name="view 2")


def test_errors_name_the_problem() -> None:
    cfg = AugmentConfig.cifar(8)
    ragged = [torch.zeros(8, 8, 3, dtype=torch.uint8), torch.zeros(9, 7, 3, dtype=torch.uint8)]
    params = sample_params(2, torch.tensor([[8, 8], [9, 7]]), cfg, torch.Generator())
    with pytest.raises(ValueError, match="dense"):
        apply_native(ragged, params, cfg)
    dense = torch.zeros(3, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="params has 2 images"):
        apply_native(dense, params, cfg)
    with pytest.raises(TypeError, match="uint8"):
        apply_native(dense.float(), params, cfg)
