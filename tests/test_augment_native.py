"""The native CPU augmentation kernel against the float64 reference, for the same parameters."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastclr.augment import (
    AugmentConfig,
    AugmentParams,
    SimCLRAugmentation,
    apply_reference,
    sample_params,
)
from fastclr.augment.native_backend import (
    WorkerViews,
    apply_native,
    apply_native_sources,
    available,
)
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


# --- one source per view (apply_native_sources): the loaders' crop + resize + recipe in one pass


def _draw(
    sources: list[torch.Tensor], cfg: AugmentConfig, g: torch.Generator
) -> tuple[list[torch.Tensor], AugmentParams]:
    sizes = torch.tensor([[t.shape[0], t.shape[1]] for t in sources])
    return sources, sample_params(len(sources), sizes, cfg, g)


@given(
    sizes=st.lists(st.tuples(st.integers(1, 41), st.integers(1, 41)), min_size=1, max_size=5),
    size=st.integers(1, 23),
    channels=st.sampled_from([1, 3, 4]),
    preset=st.sampled_from(["cifar", "imagenet", "imagenet-solarize"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_sources_of_their_own_sizes_match_reference(
    sizes: list[tuple[int, int]],
    size: int,
    channels: int,
    preset: str,
    dtype: torch.dtype,
    seed: int,
) -> None:
    """Each view cut from its own (odd-sized) source by the kernel = the float64 definition."""
    g = torch.Generator().manual_seed(seed)
    base = AugmentConfig.cifar(size) if preset == "cifar" else AugmentConfig.imagenet(size)
    cfg = replace(base, dtype=dtype, solarize_p=0.5 if preset.endswith("solarize") else 0.0)
    if size > 2:  # blur needs K/2 < S
        cfg = replace(cfg, blur_p=0.5)
    srcs = [
        torch.randint(0, 256, (h, w, channels), dtype=torch.uint8, generator=g) for h, w in sizes
    ]
    srcs, params = _draw(srcs, cfg, g)
    got = apply_native_sources(srcs, params, cfg)
    ref64 = apply_reference(srcs, params, replace(cfg, dtype=torch.float64), layout="NHWC")
    assert got.shape == (len(sizes), 3, size, size) and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(got, ref64, atol=AUGMENT_ATOL, elementwise=True)


@given(
    k=st.sampled_from([2, 4, 8]),
    size=st.integers(1, 9),
    extra=st.tuples(st.integers(0, 17), st.integers(0, 17)),
    data=st.data(),
)
def test_reduced_decode_is_the_reference_on_the_reduced_image(
    k: int, size: int, extra: tuple[int, int], data: st.DataObject
) -> None:
    """A source decoded at 1/k with a box of ORIGINAL pixels k·(y0, x0, h, w): the kernel's
    mapping (x + ½)/k − ½ lands exactly where the definition samples box (y0, x0, h, w) of the
    reduced image (boxes of at least S reduced pixels, as the loader's draft rule guarantees)."""
    hr, wr = size + extra[0], size + extra[1]  # reduced image, odd sizes included
    bh = data.draw(st.integers(size, hr), label="box h")
    bw = data.draw(st.integers(size, wr), label="box w")
    y0 = data.draw(st.integers(0, hr - bh), label="y0")
    x0 = data.draw(st.integers(0, wr - bw), label="x0")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    cfg = AugmentConfig.imagenet(size, blur_p=0.5 if size > 2 else 0.0)
    img = torch.randint(0, 256, (hr, wr, 3), dtype=torch.uint8, generator=g)
    params = sample_params(1, torch.tensor([[hr, wr]]), cfg, g)
    reduced = replace(params, crop=torch.tensor([[y0, x0, bh, bw]], dtype=torch.int32))
    original = replace(params, crop=reduced.crop * k)
    got = apply_native_sources([img], original, cfg, scales=[k])
    ref64 = apply_reference(img[None], reduced, replace(cfg, dtype=torch.float64), layout="NHWC")
    assert_close_to_reference(got, ref64, atol=AUGMENT_ATOL, elementwise=True)


@given(
    k=st.sampled_from([1, 2, 4, 8]),
    size=st.integers(1, 13),
    hw=st.tuples(st.integers(1, 29), st.integers(1, 29)),
    data=st.data(),
)
def test_any_box_at_any_scale_samples_where_the_loader_does(
    k: int, size: int, hw: tuple[int, int], data: st.DataObject
) -> None:
    """Any box in original pixels (not a multiple of k, smaller than S too): the crop alone
    equals fastclr.data.decode.resize_box, the loaders' rule, up to its rounding to uint8."""
    from fastclr.data.decode import resize_box

    hr, wr = hw
    h0, w0 = hr * k, wr * k  # the original is at most k × the reduced decode
    bh, bw = data.draw(st.integers(1, h0), label="h"), data.draw(st.integers(1, w0), label="w")
    y0, x0 = data.draw(st.integers(0, h0 - bh), label="y0"), data.draw(st.integers(0, w0 - bw))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    img = torch.randint(0, 256, (hr, wr, 3), dtype=torch.uint8, generator=g)
    cfg = AugmentConfig.imagenet(size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    box = torch.tensor([[y0, x0, bh, bw]], dtype=torch.int32)
    params = replace(AugmentParams.identity(torch.tensor([[h0, w0]])), crop=box)
    got = apply_native_sources([img], params, cfg, scales=[k])[0].permute(1, 2, 0) * 255
    want = resize_box(img.numpy(), (y0, x0, bh, bw), size, k)
    err = (got.double() - torch.from_numpy(want).double()).abs().max().item()
    assert err <= 0.5 + 1e-3, f"crop differs from resize_box by {err:.4f} levels (rounding: 0.5)"


def test_sources_share_one_image_and_keep_their_rows() -> None:
    """Views of one image passed twice, interleaved with another: row i is params row i's view."""
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 256, (37, 23, 3), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (19, 41, 3), dtype=torch.uint8, generator=g)
    cfg = AugmentConfig.imagenet(15)
    srcs, params = _draw([a, b, a, b], cfg, g)
    got = apply_native_sources(srcs, params, cfg)
    for i in range(4):
        one = apply_native_sources([srcs[i]], params.select(slice(i, i + 1)), cfg)
        assert torch.equal(got[i : i + 1], one)


def test_worker_views_are_the_reference_views_of_their_params() -> None:
    g = torch.Generator().manual_seed(4)
    cfg = AugmentConfig.imagenet(17, dtype=torch.bfloat16)
    shapes = [(40, 31), (25, 47), (33, 33)]
    imgs = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in shapes]
    boxes = np.stack(
        [
            sample_params(2, torch.tensor([[t.shape[0], t.shape[1]]] * 2), cfg, g).crop.numpy()
            for t in imgs
        ]
    )  # (B, V, 4)
    finish = WorkerViews(cfg)
    views = finish([t.numpy() for t in imgs], [1, 1, 1], boxes, seed=11)
    assert views.shape == (2, 3, 3, 17, 17) and views.dtype == torch.bfloat16
    assert all(views[v].is_contiguous(memory_format=torch.channels_last) for v in range(2))
    params = finish.params(boxes, 11)  # view-major rows: v·B + j
    ref = apply_reference(imgs * 2, params, replace(cfg, dtype=torch.float64), layout="NHWC")
    assert_close_to_reference(views.reshape(6, 3, 17, 17), ref, atol=AUGMENT_ATOL)
    assert torch.equal(params.crop[3], torch.from_numpy(boxes[0, 1]).int())  # view 1, image 0
    again = pickle.loads(pickle.dumps(finish))([t.numpy() for t in imgs], [1, 1, 1], boxes, 11)
    assert torch.equal(views, again)  # the seed alone decides the parameters
    other = finish([t.numpy() for t in imgs], [1, 1, 1], boxes, seed=12)
    assert not torch.equal(views, other)


def test_source_errors_name_the_problem() -> None:
    cfg = AugmentConfig.imagenet(8)
    img = torch.zeros(10, 12, 3, dtype=torch.uint8)
    params = AugmentParams.identity(torch.tensor([[20, 24]]))  # the original of a 1/2 decode
    with pytest.raises(ValueError, match=r"scales\[0\] = 9"):
        apply_native_sources([img], params, cfg, scales=[9])
    with pytest.raises(ValueError, match="does not fit"):  # 20 x 24 is not inside 10 x 12
        apply_native_sources([img], params, cfg)
    # the kernel refuses by itself when the shared check is skipped (positive control)
    with pytest.raises(ValueError, match=r"crop\[0\].*does not fit the 10x12 source"):
        apply_native_sources([img], params, cfg, validate=False)
    with pytest.raises(ValueError, match="params has 1 views, images has 2"):
        apply_native_sources([img, img], params, cfg, scales=[2, 2])
    with pytest.raises(ValueError, match=r"boxes must be \(1, V, 4\)"):
        WorkerViews(cfg)([img.numpy()], [2], np.zeros((2, 2, 4), dtype=np.int64), 0)
