"""Views finished in the streaming loader's workers (``StreamingLoader(finish_views=...)``).

Training hands the loader a callable (here :class:`fastclr.augment.native_backend.WorkerViews`):
the workers decode each file, draw the crop boxes on its ORIGINAL size as before, and the callable
turns the decoded pixels into the finished views in one native pass (crop, resize and the rest of
the recipe). Checked against the float64 definition, across worker counts and resume, with the
reduced-scale JPEG decode. About 5 s on 2 cores (two loaders start 2 workers each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from fastclr.augment import AugmentConfig, apply_reference
from fastclr.augment.native_backend import WorkerViews, available
from fastclr.data import list_image_folder
from fastclr.data.decode import open_rgb
from fastclr.data.stream import StreamingLoader, ViewBatch, draw_boxes
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference

pytestmark = pytest.mark.skipif(not available(), reason="native library not built")

#: odd sizes on purpose: (width, height) of the files
SIZES = [(61, 47), (47, 61), (33, 33), (90, 71)]


@pytest.fixture(scope="module")
def noise_folder(
    tmp_path_factory: pytest.TempPathFactory, write_noise_folder: Callable[..., Path]
) -> Path:
    return write_noise_folder(tmp_path_factory.mktemp("noise"), SIZES, 6)


class Recording(WorkerViews):
    """WorkerViews that keeps what each call was given (num_workers=0: in this process)."""

    def __init__(self, config: AugmentConfig) -> None:
        super().__init__(config)
        self.calls: list[tuple[list[np.ndarray], list[int], np.ndarray, int]] = []

    def __call__(
        self, images: Sequence[np.ndarray], scales: Sequence[int], boxes: np.ndarray, seed: int
    ) -> Tensor:
        self.calls.append(([a.copy() for a in images], list(scales), boxes.copy(), seed))
        return super().__call__(images, scales, boxes, seed)


def _loader(folder: Path, cfg: AugmentConfig, finish: WorkerViews, **kw: object) -> StreamingLoader:
    listing = list_image_folder(folder)
    return StreamingLoader(
        listing.files,
        listing.labels,
        cfg,
        4,
        seed=3,
        finish_views=finish,
        **kw,  # type: ignore[arg-type]
    )


def test_finished_views_are_the_definition_on_the_original_files(noise_folder: Path) -> None:
    cfg = AugmentConfig.imagenet(9, blur_p=0.5)
    finish = Recording(cfg)
    loader = _loader(noise_folder, cfg, finish, num_workers=0, draft=False)
    batch = next(loader.epoch(2))
    assert batch.views is not None and batch.views.dtype == torch.float32
    assert batch.views.shape == (2, 4, 3, 9, 9)
    ((images, scales, boxes, seed),) = finish.calls
    idx = loader.order(2)[0]
    originals = [open_rgb(loader.files[int(i)])[0] for i in idx]
    for got, want in zip(images, originals, strict=True):
        assert np.array_equal(got, want)  # the whole file, decoded at full size
    assert scales == [1, 1, 1, 1]
    sizes = np.array([a.shape[:2] for a in originals])
    assert np.array_equal(boxes, draw_boxes(sizes, cfg, 2, 3, 2, 0, 0))  # (seed, epoch, rank, step)
    params = finish.params(boxes, seed)
    srcs = [torch.from_numpy(a) for a in originals] * 2  # view-major rows
    ref = apply_reference(srcs, params, replace(cfg, dtype=torch.float64), layout="NHWC")
    assert_close_to_reference(batch.views.reshape(8, 3, 9, 9), ref, atol=AUGMENT_ATOL)


def test_finished_views_do_not_depend_on_workers_or_resume(noise_folder: Path) -> None:
    cfg = AugmentConfig.imagenet(7, dtype=torch.bfloat16)
    a = _loader(noise_folder, cfg, WorkerViews(cfg), num_workers=0)
    b = _loader(noise_folder, cfg, WorkerViews(cfg), num_workers=2)
    full = [ViewBatch(x.labels.clone(), x.views.clone()) for x in a.epoch(1)]  # type: ignore[union-attr]
    resumed = list(b.epoch(1, start_step=1))
    assert len(full) == 3 and len(resumed) == 2
    for x, y in zip(full[1:], resumed, strict=True):
        assert y.views is not None and y.views.dtype == torch.bfloat16
        assert torch.equal(x.views, y.views) and torch.equal(x.labels, y.labels)  # type: ignore[arg-type]
    assert not torch.equal(full[0].views, full[1].views)  # type: ignore[arg-type]


def test_reduced_scale_jpeg_decode_reaches_the_kernel(tmp_path: Path) -> None:
    """Big JPEGs and small views: the workers decode at 1/k and the kernel maps the boxes."""
    rng = np.random.default_rng(1)
    for i in range(4):
        smooth = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(smooth).resize((512, 384)).save(tmp_path / f"{i}.jpg", quality=95)
    cfg = AugmentConfig.imagenet(8, scale=(0.5, 1.0))
    finish = Recording(cfg)
    loader = _loader(tmp_path, cfg, finish, num_workers=0)
    reduced = next(loader.epoch(0)).views
    ((images, scales, _, _),) = finish.calls
    assert min(scales) > 1  # every box spans >= 2·k·S pixels: decoded at 1/k
    for a, k in zip(images, scales, strict=True):
        assert (a.shape[0] - 1) * k < 384 <= a.shape[0] * k  # ceil(original / k)
    full = next(_loader(tmp_path, cfg, WorkerViews(cfg), num_workers=0, draft=False).epoch(0))
    assert reduced is not None and full.views is not None
    # the same boxes and parameters; only the decode's low-pass differs (smooth picture)
    assert (reduced.float() - full.views.float()).abs().mean() < 0.05
