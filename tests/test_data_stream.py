"""The streaming loader (fastclr.data.stream): crops from the original image, order, resume,
sharding, unreadable files, workers on many files, and memory that does not grow with the folder.

Cost on 2 cores: the two 2,000/20,000-file folders are written once per session (identical tiny
PNG bytes, about 3 s); an epoch over 20,000 files with 2 workers (about 10 s, marked slow); the
memory test runs two subprocesses (about 10 s idle, 50 s on a busy machine; slow); the DDP test
starts two gloo processes (about 6 s, slow); everything else is well under a second each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fastclr.augment import AugmentConfig, SimCLRAugmentation
from fastclr.augment.params import AugmentParams
from fastclr.augment.reference import apply_reference
from fastclr.data import list_image_folder
from fastclr.data.decode import decode_views, draft_scale, resize_box
from fastclr.data.stream import StreamingLoader, ViewBatch, draw_boxes
from fastclr.train.views import augment_views

# A colour-coded test image: R codes the column, G the row (4:3, like most photos).
CODE_W, CODE_H = 64, 48


def _crop_only(size: int, **kw: Any) -> AugmentConfig:
    return AugmentConfig.imagenet(size, **kw)


@pytest.fixture(scope="module")
def coded_folder(
    tmp_path_factory: pytest.TempPathFactory, write_coded_folder: Callable[..., Path]
) -> Path:
    return write_coded_folder(tmp_path_factory.mktemp("coded"), (CODE_W, CODE_H), 16)


def _recovered_boxes(views: torch.Tensor) -> np.ndarray:
    """(N, 4) (y0, x0, h, w) read back from colour-coded crops of boxes wider than the output.

    Output pixel i samples the box at (i + ½)·h/S − ½: the first and last samples are h/(2S) − ½
    inside the box's first and last pixel centres.
    """
    v = views.numpy().astype(np.float64)
    x = v[..., 0] * (CODE_W - 1) / 255
    y = v[..., 1] * (CODE_H - 1) / 255
    s = v.shape[1]
    # centres of the first/last output pixels sit half a step inside the box
    x_lo, x_hi = x[:, :, 0].mean(1), x[:, :, -1].mean(1)
    y_lo, y_hi = y[:, 0, :].mean(1), y[:, -1, :].mean(1)
    w = (x_hi - x_lo) * s / (s - 1)
    h = (y_hi - y_lo) * s / (s - 1)
    return np.stack([y_lo - h / (2 * s) + 0.5, x_lo - w / (2 * s) + 0.5, h, w], 1)


# ------------------------------------------------------------------ crops from the original


def test_resize_box_is_the_reference_crop_and_resize() -> None:
    """Full-scale decode: the loader's crop equals the augmentation's definition (crop+resize)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    boxes = [(0, 0, 23, 37), (3, 5, 9, 30), (22, 36, 1, 1), (1, 2, 20, 7)]
    for size in (5, 16):
        config = AugmentConfig(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                               dtype=torch.float64)  # fmt: skip
        src = torch.from_numpy(img)[None].expand(len(boxes), -1, -1, -1)
        params = AugmentParams.identity(torch.tensor([[23, 37]]).expand(len(boxes), 2))
        params = AugmentParams(
            **{**params.__dict__, "crop": torch.tensor(boxes, dtype=torch.int32)}
        )
        ref = apply_reference(src, params, config).permute(0, 2, 3, 1) * 255
        got = torch.from_numpy(np.stack([resize_box(img, b, size) for b in boxes])).double()
        assert (got - ref).abs().max().item() <= 0.5 + 1e-6  # rounding to uint8 only


def test_crops_come_from_original_coordinates(coded_folder: Path) -> None:
    """Read each crop's box back from the colours: it is a RandomResizedCrop of the 64×48 original,
    reaching the sides a centre square (the old in-memory path) never shows."""
    listing = list_image_folder(coded_folder)
    # S = 8: every box (area >= 8% of 64×48, so sides >= 13) is wider than the output
    loader = StreamingLoader(listing.files, listing.labels, _crop_only(8), 8, num_workers=0)
    views = torch.cat([b.views.reshape(-1, 8, 8, 3) for e in range(4) for b in loader.epoch(e)])
    boxes = _recovered_boxes(views)
    y0, x0, h, w = boxes.T
    area = h * w / (CODE_W * CODE_H)
    assert (y0 > -0.6).all() and (x0 > -0.6).all(), boxes.min(0)
    assert (y0 + h < CODE_H + 0.6).all() and (x0 + w < CODE_W + 0.6).all()
    assert area.min() < 0.15 and area.max() > 0.6  # scale (0.08, 1) of the ORIGINAL area
    ratio = w / h
    assert ratio.min() > 0.7 and ratio.max() < 1.4  # log-uniform in (3/4, 4/3), ± rounding
    centre_lo, centre_hi = (CODE_W - CODE_H) / 2, (CODE_W + CODE_H) / 2
    assert (x0 < centre_lo - 1).any() and (x0 + w > centre_hi + 1).any()


def test_crops_are_the_boxes_drawn_on_the_original_size(
    coded_folder: Path, coded_image: Callable[[int, int], np.ndarray]
) -> None:
    """Exactly: batch k's crops are resize_box of draw_boxes on the (H, W) headers."""
    listing = list_image_folder(coded_folder)
    crop = _crop_only(16)
    loader = StreamingLoader(listing.files, listing.labels, crop, 4, seed=3, num_workers=0)
    batch = next(loader.epoch(2, start_step=1))
    idx = loader.order(2)[1]
    boxes = draw_boxes(np.full((4, 2), (CODE_H, CODE_W)), crop, 2, 3, 2, 0, 1)
    img = coded_image(CODE_W, CODE_H)
    for j in range(4):
        for v in range(2):
            want = resize_box(img, tuple(int(t) for t in boxes[j, v]), 16)  # type: ignore[arg-type]
            assert np.array_equal(batch.views[v, j].numpy(), want)
        assert int(batch.labels[j]) == int(listing.labels[idx[j]])


def test_reduced_scale_jpeg_keeps_the_box_and_the_picture(
    tmp_path: Path, coded_image: Callable[[int, int], np.ndarray]
) -> None:
    """A 1/k decode is used only when the box spans >= k·S pixels; the box (drawn on the original
    size) is the same, and the crop agrees with the full decode's on a colour-coded image."""
    path = tmp_path / "big.jpg"
    Image.fromarray(coded_image(512, 384)).save(path, quality=95)
    sizes_seen: list[tuple[int, int]] = []
    box = np.array([[40, 100, 300, 280], [0, 0, 384, 512]])

    def draw(h: int, w: int) -> np.ndarray:
        sizes_seen.append((h, w))
        return box

    reduced, _, k = decode_views(str(path), draw, 32, draft=True)
    full, _, k1 = decode_views(str(path), draw, 32, draft=False)
    assert sizes_seen == [(384, 512), (384, 512)]  # drawn on the ORIGINAL size both times
    assert k == draft_scale(box, 32) == 8 and k1 == 1
    diff = np.abs(reduced.astype(int) - full.astype(int))
    # the coordinate code survives: same region; the low-pass only softens JPEG noise
    assert diff[..., :2].mean() < 2.0 and diff[..., :2].max() <= 12, diff.max()
    assert draft_scale(np.array([[0, 0, 63, 500]]), 32) == 1  # a side under 2·S: full decode


# ------------------------------------------------------------------ order, resume, workers


def _epoch_views(loader: StreamingLoader, epoch: int, start: int = 0) -> list[ViewBatch]:
    return [ViewBatch(b.labels.clone(), b.views.clone()) for b in loader.epoch(epoch, start)]


def test_resume_mid_epoch_gives_the_same_batches(coded_folder: Path) -> None:
    listing = list_image_folder(coded_folder)
    crop = _crop_only(8)
    a = StreamingLoader(listing.files, listing.labels, crop, 4, seed=7, num_workers=0)
    full = _epoch_views(a, 1)
    assert len(full) == a.steps_per_epoch == 8
    # a new loader (a new process after a restart), with workers this time
    b = StreamingLoader(listing.files, listing.labels, crop, 4, seed=7, num_workers=2)
    resumed = _epoch_views(b, 1, start=5)
    assert len(resumed) == 3
    for x, y in zip(full[5:], resumed, strict=True):
        assert torch.equal(x.views, y.views) and torch.equal(x.labels, y.labels)
    other = _epoch_views(a, 2)
    assert not torch.equal(full[0].views, other[0].views)  # a new epoch: new order and crops


def test_augment_views_applies_only_the_colour_part(coded_folder: Path) -> None:
    listing = list_image_folder(coded_folder)
    crop = _crop_only(8, jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.0,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # fmt: skip
    loader = StreamingLoader(listing.files, listing.labels, crop, 4, num_workers=0)
    batch = next(loader.epoch(0))
    aug = SimCLRAugmentation(crop, backend="torch", seed=0)
    v1, v2 = augment_views(aug, batch)
    assert v1.shape == (4, 3, 8, 8) and v1.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(v1, batch.views[0].permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(v2, batch.views[1].permute(0, 3, 1, 2).float() / 255)


def test_unreadable_and_vanishing_files_are_skipped_counted_and_replaced(
    tmp_path: Path, coded_image: Callable[[int, int], np.ndarray]
) -> None:
    for i in range(12):
        Image.fromarray(coded_image(CODE_W, CODE_H)).save(tmp_path / f"{i:02d}.png")
    garbage = tmp_path / "90.jpg"
    garbage.write_bytes(b"not an image at all" * 4)
    truncated = tmp_path / "91.png"
    data = (tmp_path / "00.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    vanishing = tmp_path / "92.png"
    Image.fromarray(coded_image(CODE_W, CODE_H)).save(vanishing)
    listing = list_image_folder(tmp_path)
    vanishing.unlink()  # listed, then gone before it is read
    loader = StreamingLoader(listing.files, listing.labels, _crop_only(8), 3, num_workers=2)
    with pytest.warns(RuntimeWarning) as record:
        batches = [b for e in range(3) for b in loader.epoch(e)]
    assert len(batches) == 3 * loader.steps_per_epoch == 15
    assert all(b.views.shape == (2, 3, 8, 8, 3) for b in batches)
    bad = {str(garbage), str(truncated), str(vanishing)}
    assert set(loader.summary.skipped) == bad
    messages = "\n".join(str(w.message) for w in record)
    assert all(p in messages for p in bad)
    assert loader.summary.skip_events >= 3
    assert "skipped 3 " in "; ".join(loader.summary.lines())


# ------------------------------------------------------------------ many files, memory, DDP


@pytest.fixture(scope="session")
def many_files(
    tmp_path_factory: pytest.TempPathFactory, write_many_pngs: Callable[[Path, int], Path]
) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("many")
    return {n: write_many_pngs(base / str(n), n) for n in (2_000, 20_000)}


@pytest.mark.slow
def test_workers_on_twenty_thousand_files(many_files: dict[int, Path]) -> None:
    """The old decode-all path died here ('received 0 items of ancdata'); one tensor per batch."""
    listing = list_image_folder(many_files[20_000])
    assert len(listing) == 20_000
    loader = StreamingLoader(
        listing.files, listing.labels, _crop_only(8), 400, num_workers=2, prefetch_factor=4
    )
    seen = 0
    for batch in loader.epoch(0):
        assert batch.views.shape == (2, 400, 8, 8, 3)
        seen += batch.labels.numel()
    assert seen == 20_000
    assert not loader.summary.skipped


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from fastclr.augment import AugmentConfig
    from fastclr.data import list_image_folder
    from fastclr.data.stream import StreamingLoader

    listing = list_image_folder(sys.argv[1])
    loader = StreamingLoader(listing.files, listing.labels, AugmentConfig.imagenet(224), 32,
                             num_workers=2, prefetch_factor=2)
    n = 0
    for i, batch in enumerate(loader.epoch(0)):
        n += batch.labels.numel()
        if i == 11:
            break
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del loader  # workers exit: their peak counts in RUSAGE_CHILDREN
    import gc; gc.collect()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"files": len(listing), "images": n, "self_kb": me, "children_kb": kids}))
    """
)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_folder(many_files: dict[int, Path]) -> None:
    """Peak RSS (main + largest worker) at 224 px: 2,000 vs 20,000 files differ by < 300 MB.

    Decoding the folder into memory (the old path) would take 20,000 × 150 KB = 3 GB here.
    """
    peaks = {}
    for n, root in many_files.items():
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, str(root)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        assert rec["files"] == n and rec["images"] == 12 * 32
        peaks[n] = (rec["self_kb"] + rec["children_kb"]) / 1024
    growth = peaks[20_000] - peaks[2_000]
    print(f"peak RSS (MB, main + largest worker): {peaks}")
    assert growth < 300, peaks


# One rank as torchrun would start it (RANK / WORLD_SIZE / MASTER_* in the environment).
_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from fastclr.augment import AugmentConfig
    from fastclr.data import list_image_folder
    from fastclr.data.stream import StreamingLoader
    from fastclr.distributed import DistInfo, gather_objects, teardown

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    info = DistInfo(rank, world, rank, initialised_here=True)
    listing = list_image_folder(sys.argv[1])
    loader = StreamingLoader(listing.files, listing.labels, AugmentConfig.imagenet(4), 3,
                             rank=rank, world_size=world, num_workers=0)
    ids = []
    for batch in loader.epoch(5):
        px = batch.views[0, :, 0, 0].long()  # each file is one solid colour coding its index
        ids += (px[:, 0] + 256 * px[:, 1]).tolist()
    gathered = gather_objects(ids, info)  # its tensors freed before exit (see teardown)
    if rank == 0:
        print(json.dumps(gathered))
    teardown(info)
    """
)


@pytest.mark.slow
def test_ddp_ranks_see_disjoint_shards_covering_the_epoch(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    n = 36  # 2 ranks × 6 batches of 3
    for i in range(n):
        (tmp_path / "c").mkdir(exist_ok=True)
        Image.new("RGB", (6, 5), (i % 256, i // 256, 9)).save(tmp_path / "c" / f"{i}.png")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_SCRIPT, str(tmp_path)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    per_rank = json.loads(outs[0].strip().splitlines()[-1])
    assert [len(r) for r in per_rank] == [18, 18]
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(n))
