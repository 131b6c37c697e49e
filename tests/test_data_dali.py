"""The DALI loader (fastclr.data.dali) on the CPU (device_id=None): the graph a GPU runs with
nvJPEG ("mixed"), minus the device. Same contract as the streaming loader: same boxes, order,
resume and skipping. Tiny images; about 3 s in all on 2 cores (each graph build is ~0.3 s).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastclr.augment import AugmentConfig
from fastclr.data import list_image_folder
from fastclr.data.stream import StreamingLoader

pytestmark = pytest.mark.dali


def _dali() -> None:
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (fastclr[dali])")


@pytest.fixture(scope="module")
def folder(
    tmp_path_factory: pytest.TempPathFactory, write_coded_folder: Callable[..., Path]
) -> Path:
    root = tmp_path_factory.mktemp("dali_loader")
    return write_coded_folder(root, (40, 30), 6, (".png", ".jpg"))


def _loaders(root: Path, size: int, batch: int, **kw: object):  # type: ignore[no-untyped-def]
    from fastclr.data.dali import DaliLoader

    listing = list_image_folder(root)
    crop = AugmentConfig.imagenet(size)
    dali = DaliLoader(listing.files, listing.labels, crop, batch, num_threads=1, **kw)  # type: ignore[arg-type]
    stream = StreamingLoader(
        listing.files,
        listing.labels,
        crop,
        batch,
        num_workers=0,
        draft=False,
        **kw,  # type: ignore[arg-type]
    )
    return dali, stream


def test_same_boxes_order_and_labels_as_the_streaming_loader(folder: Path) -> None:
    _dali()
    dali, stream = _loaders(folder, 12, 4, seed=5)
    assert dali.steps_per_epoch == stream.steps_per_epoch == 6
    for a, b in zip(dali.epoch(1), stream.epoch(1), strict=True):
        assert a.views is not None and b.views is not None
        assert a.views.shape == (2, 4, 12, 12, 3) and a.views.dtype == torch.uint8
        assert torch.equal(a.labels, b.labels)
        # same boxes on the same originals; decoders and the resize's edge rule differ slightly
        diff = (a.views.int() - b.views.int()).abs()
        assert diff[..., :2].float().mean() < 2.0 and diff[..., :2].max() <= 16


def test_resume_and_sharding(folder: Path) -> None:
    _dali()
    full, _ = _loaders(folder, 8, 3, seed=2, rank=1, world_size=2)
    batches = [b.views.clone() for b in full.epoch(0)]
    again, _ = _loaders(folder, 8, 3, seed=2, rank=1, world_size=2)
    resumed = [b.views.clone() for b in again.epoch(0, start_step=2)]
    assert len(batches) == 4 and len(resumed) == 2
    for x, y in zip(batches[2:], resumed, strict=True):
        assert torch.equal(x, y)


def test_corrupt_truncated_and_unsupported_files_are_replaced(tmp_path: Path) -> None:
    _dali()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.jpg", quality=90
        )
    data = (tmp_path / "0.jpg").read_bytes()
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(data[: int(len(data) * 0.6)])  # header intact: only a decode finds it
    garbage = tmp_path / "g.jpg"
    garbage.write_bytes(b"nope" * 10)
    gif = tmp_path / "x.gif"
    Image.new("P", (8, 8)).save(gif)
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(deep)
    from fastclr.data.dali import DaliLoader

    listing = list_image_folder(tmp_path)
    loader = DaliLoader(listing.files, listing.labels, AugmentConfig.imagenet(8), 4, num_threads=1)
    with pytest.warns(RuntimeWarning):
        batches = [b for e in range(3) for b in loader.epoch(e)]
    assert len(batches) == 3 * 3 and all(b.views.shape == (2, 4, 8, 8, 3) for b in batches)
    assert set(loader.summary.skipped) == {str(truncated), str(garbage), str(gif), str(deep)}
    assert "use loader 'stream'" in loader.summary.skipped[str(deep)]


def test_missing_dali_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastclr.optional import import_dali

    monkeypatch.setitem(sys.modules, "nvidia.dali.fn", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install fastclr\[dali\]"):
        import_dali()
