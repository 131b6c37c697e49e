"""DALI's augmentation operators: the all-DALI pipeline from files (fastclr.data.dali_pipeline)
run on the CPU (device_id=None) on small folders this test writes, and apply_dali on tensors.

DALI differs from the reference by design (fixed jitter order, YIQ hue, uint8 rounding, its own
crop sampler; see fastclr/augment/dali.py), so these tests check what it promises: shapes, dtype,
channels_last, normalisation, independent views, flip/gray rates, labels, and that corrupt files
are reported, skipped and counted instead of killing the run.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fastclr.augment.params import AugmentConfig
from fastclr.testing import assert_close_to_reference

pytestmark = pytest.mark.dali

SIDE = 16  # source and output side of the test images (small: the CPU pipeline is slow to build)
N_RATE = 64  # images for the rate tests: 128 views per epoch


def _dali():
    return pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (fastclr[dali])")


def _write_images(folder: Path, n: int, *, classes: int = 2, seed: int = 0) -> list[Path]:
    """Colourful JPEGs, dark on the left and bright on the right (so a flip is visible)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(10, 245, SIDE)[None, :, None]
    paths = []
    for i in range(n):
        sub = folder / f"class{i % classes}" if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        tint = rng.uniform(0.3, 1.0, size=(1, 1, 3))
        noise = rng.normal(0, 4, size=(SIDE, SIDE, 3))
        arr = np.clip(ramp * tint + noise, 0, 255).astype(np.uint8)
        path = sub / f"img{i:03d}.jpg"
        Image.fromarray(arr).save(path, quality=95)
        paths.append(path)
    return paths


def _plain(size: int = SIDE, **overrides: object) -> AugmentConfig:
    """Full-image crop of a square source and no colour ops: only what the test switches on."""
    base = AugmentConfig.imagenet(
        size=size,
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        gray_p=0.0,
        blur_p=0.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _denormalise(x: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return x.float() * std + mean


def _epoch(loader):
    views, labels = [], []
    for batch in loader:
        views.append([v.clone() for v in batch.views])
        labels.append(batch.labels)
    return [torch.cat(vs) for vs in zip(*views, strict=True)], torch.cat(labels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dali_images")
    _write_images(root, 12)
    return root


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_shapes_dtype_layout_and_independent_views(folder: Path, dtype: torch.dtype) -> None:
    _dali()
    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    config = AugmentConfig.imagenet(size=12, dtype=dtype)
    loader = DaliSimCLRLoader(folder, config, batch_size=4, num_threads=1, seed=1)
    assert len(loader) == 3
    assert loader.skipped == []
    n_batches = 0
    for batch in loader:
        n_batches += 1
        assert len(batch.views) == 2
        for v in batch.views:
            assert v.shape == (4, 3, 12, 12)
            assert v.dtype == dtype
            assert v.is_contiguous(memory_format=torch.channels_last)
            assert torch.isfinite(v.float()).all()
        assert batch.labels.shape == (4,)
        assert batch.labels.dtype == torch.int64
        assert set(batch.labels.tolist()) <= {0, 1}
        # Two views of the same image are drawn independently.
        assert not torch.equal(batch.views[0], batch.views[1])
    assert n_batches == 3


def test_normalisation_range_and_identity(folder: Path) -> None:
    """With nothing random switched on, the output is the decoded image, normalised."""
    _dali()
    from PIL import Image

    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    config = _plain()
    loader = DaliSimCLRLoader(folder, config, 4, num_threads=1, shuffle=False, drop_last=False)
    (view, _), labels = _epoch(loader)
    lo = (0 - torch.tensor(config.mean)) / torch.tensor(config.std)
    hi = (1 - torch.tensor(config.mean)) / torch.tensor(config.std)
    per_channel = view.float().transpose(0, 1).reshape(3, -1)
    assert (per_channel.amin(1) >= lo - 1e-4).all()
    assert (per_channel.amax(1) <= hi + 1e-4).all()
    pixels = _denormalise(view, config)
    expected = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).float() / 255
            for f in loader.files
        ]
    )
    # Decoders differ by a grey level or two (libjpeg-turbo vs PIL's IDCT).
    assert (pixels - expected).abs().max().item() < 4 / 255
    assert labels.tolist() == loader.labels


def _left_brighter(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x[..., :half].float().mean((1, 2, 3)) > x[..., half:].float().mean((1, 2, 3))


def _is_gray(x: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    px = _denormalise(x, config)
    return (px.amax(1) - px.amin(1)).amax((1, 2)) < 1e-3


def test_flip_and_gray_rates(tmp_path: Path) -> None:
    _dali()
    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    _write_images(tmp_path, N_RATE)
    config = _plain(flip_p=0.5, gray_p=0.2)
    loader = DaliSimCLRLoader(tmp_path, config, 16, num_threads=1, seed=3)
    views, _ = _epoch(loader)
    x = torch.cat(views)
    n = x.shape[0]
    assert n == 2 * N_RATE
    flipped = _left_brighter(x).float().mean().item()
    gray = _is_gray(x, config).float().mean().item()
    # 128 Bernoulli draws: ±0.5 / ±0.2 with a margin of about 3.5 standard deviations.
    assert 0.35 <= flipped <= 0.65, flipped
    assert 0.08 <= gray <= 0.33, gray


def test_corrupt_files_are_reported_skipped_and_counted(tmp_path: Path) -> None:
    _dali()
    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    good = _write_images(tmp_path, 6, classes=0)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a JPEG" * 8)
    truncated = tmp_path / "truncated.jpg"
    data = good[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.warns(RuntimeWarning) as record:
        loader = DaliSimCLRLoader(tmp_path, _plain(), 2, num_threads=1, drop_last=False)
    messages = "\n".join(str(w.message) for w in record)
    assert str(garbage) in messages
    assert str(truncated) in messages
    assert "skipped 2 of 8" in messages
    assert sorted(p for p, _ in loader.skipped) == sorted([str(garbage), str(truncated)])
    assert sorted(loader.files) == sorted(str(p) for p in good)
    (view, _), labels = _epoch(loader)
    assert view.shape[0] == 6  # flat folder: every good file once, label 0
    assert labels.tolist() == [0] * 6


def test_header_validation_lets_truncation_through_to_a_clear_error(tmp_path: Path) -> None:
    """A file only the decoder finds broken ends the run with a message naming it, not silently."""
    _dali()
    from PIL import Image

    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    rng = np.random.default_rng(4)
    for i in range(3):
        noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"img{i}.jpg", quality=90)
    data = (tmp_path / "img0.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: int(len(data) * 0.9)])  # headers intact, scan data cut short
    # Headers alone do not show the truncation; the iterator's first batch (read while it is
    # built, or on the first next()) hits it.
    with pytest.raises(RuntimeError, match="DALI pipeline failed while reading") as info:
        for _ in DaliSimCLRLoader(tmp_path, _plain(), 4, num_threads=1, validate="header"):
            pass
    assert str(truncated) in str(info.value)


def test_too_few_files_for_one_batch(tmp_path: Path) -> None:
    _dali()
    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    _write_images(tmp_path, 3, classes=0)
    with pytest.raises(ValueError, match="no full batch of 5"):
        DaliSimCLRLoader(tmp_path, _plain(), 5, num_threads=1)
    loader = DaliSimCLRLoader(tmp_path, _plain(), 5, num_threads=1, drop_last=False)
    assert [b.views[0].shape[0] for b in loader] == [3]


def test_all_files_corrupt_is_an_error(tmp_path: Path) -> None:
    _dali()
    from fastclr.data.dali_pipeline import DaliSimCLRLoader

    (tmp_path / "a.jpg").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="none of the 1 image files"):
            DaliSimCLRLoader(tmp_path, _plain(), 1, num_threads=1)


def test_list_images_folder_layouts_and_file_lists(tmp_path: Path) -> None:
    from fastclr.data.files import list_images

    paths = _write_images(tmp_path / "classes", 4, classes=2)
    files, labels = list_images(tmp_path / "classes")
    assert len(files) == 4
    assert sorted(zip(files, labels, strict=True)) == sorted(
        (str(p), int(p.parent.name[-1])) for p in paths
    )
    _write_images(tmp_path / "flat", 3, classes=0)
    assert list_images(tmp_path / "flat")[1] == [0, 0, 0]
    assert list_images([paths[0], paths[1]], labels=[5, 7]) == (
        [str(paths[0]), str(paths[1])],
        [5, 7],
    )
    with pytest.raises(ValueError, match="labels"):
        list_images([paths[0]], labels=[1, 2])
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_missing_dali_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastclr.data import dali_pipeline

    monkeypatch.setitem(sys.modules, "nvidia.dali.fn", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install fastclr\[dali\]"):
        dali_pipeline.build_simclr_pipeline(["x.jpg"], [0], AugmentConfig.cifar(), 1)


def _fixed_order_params(images, config: AugmentConfig, seed: int):
    """sample_params with DALI's fixed jitter order and no hue (the part DALI cannot match)."""
    from fastclr.augment.inputs import src_sizes_of
    from fastclr.augment.params import sample_params

    sizes = src_sizes_of(images)
    n = sizes.shape[0]
    p = sample_params(n, sizes, config, torch.Generator().manual_seed(seed))
    order = torch.arange(4, dtype=torch.int32).expand(n, 4).contiguous()
    return replace(p, order=order, hue=torch.zeros(n))


#: apply_dali rounds to uint8 after the resize and after each colour op: a few grey levels.
DALI_GREY_LEVELS = 4


@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
def test_apply_dali_matches_reference_in_fixed_order(ragged: bool) -> None:
    _dali()
    from fastclr.augment import SimCLRAugmentation
    from fastclr.augment.dali import apply_dali
    from fastclr.augment.reference import apply_reference

    config = AugmentConfig.imagenet(size=12, blur_p=0.5, solarize_p=0.3, jitter_p=1.0)
    g = torch.Generator().manual_seed(12)
    if ragged:
        shapes = [(9, 14, 3), (20, 5, 1), (12, 12, 4), (30, 22, 3)]
        images = [torch.randint(0, 256, s, generator=g, dtype=torch.uint8) for s in shapes]
    else:
        images = torch.randint(0, 256, (6, 23, 31, 3), generator=g, dtype=torch.uint8)
    params = _fixed_order_params(images, config, seed=13)
    out = apply_dali(images, params, config)
    n = len(params)
    assert out.shape == (n, 3, 12, 12)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = apply_reference(images, params, config)
    atol = DALI_GREY_LEVELS / 255 / min(config.std)
    assert_close_to_reference(out, ref, atol=atol, name="apply_dali")
    # A smaller batch reuses the cached pipeline; the public API reaches the same function.
    aug = SimCLRAugmentation(config, backend="dali")
    torch.testing.assert_close(aug.apply(images[:2], params.select(slice(0, 2))), out[:2])


def test_validation_cache_checks_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastclr.data import validate

    paths = [str(p) for p in _write_images(tmp_path / "img", 4, classes=0)]
    cache = tmp_path / "validated.json"
    calls: list[str] = []
    check = validate.check_file

    def counting(path: str, mode: str) -> str | None:
        calls.append(path)
        return check(path, mode)

    monkeypatch.setattr(validate, "check_file", counting)
    assert validate.validate_images(paths, "full", 1, cache) == ([0, 1, 2, 3], [])
    assert len(calls) == 4 and cache.exists()
    calls.clear()
    assert validate.validate_images(paths, "header", 1, cache) == ([0, 1, 2, 3], [])
    assert calls == []  # a full check answers a header request
    Path(paths[2]).write_bytes(b"now broken")  # new size and mtime: checked again
    good, bad = validate.validate_images(paths, "full", 1, cache)
    assert calls == [paths[2]]
    assert good == [0, 1, 3] and [p for p, _ in bad] == [paths[2]]
