"""The second hardening round's numerics, data and message probes, in process: weights that
diverge at a run's last step, a checkpoint holding NaN weights, a bit flipped in the key that says
a checkpoint is verified, streamed data that is mostly unreadable, photos stored rotated, split
layouts, and the messages a run gives when it stops.

Each of them failed (a NaN encoder saved as "done", 50% accuracy from NaN features, a corrupted
weight loaded unverified, "unexpected RuntimeError ... DataLoader worker", sideways photos, one
class named "train", advice to use --precision fp32 on an fp32 run) before this round.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from fastclr.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint_atomic,
)
from fastclr.cli import main
from fastclr.data import plan_data
from fastclr.errors import NonFiniteLossError, UsageError
from fastclr.loss import NTXentLoss
from fastclr.train import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient: a finite loss whose update makes the weights NaN."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.full_like(grad, float("nan"))


class _DivergesAt:
    """NT-Xent whose ``at``-th call gives a finite loss and NaN gradients (or a NaN loss)."""

    def __init__(self, at: int, nan_loss: bool = False) -> None:
        self.inner, self.calls, self.at, self.nan_loss = NTXentLoss(0.5), 0, at, nan_loss

    def __call__(self, z1: Tensor, z2: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.at:
            if self.nan_loss:
                return self.inner(z1, z2) * float("nan")
            z1 = _NaNGradient.apply(z1)
        return self.inner(z1, z2)


def test_weights_that_diverge_at_the_last_step_are_not_saved(tmp_path: Path, tiny_run: Any) -> None:
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"weights became NaN or Inf .* by step 4") as e:
        pretrain(tiny_run(out), loss_fn=_DivergesAt(4))
    assert "the last good checkpoint" in str(e.value)
    ck = load_checkpoint(out)
    assert ck["global_step"] == 2  # epoch 1's checkpoint, as it was
    assert all(bool(torch.isfinite(t).all()) for t in ck["model"].values() if t.is_floating_point())


def test_a_nan_loss_says_what_was_kept_and_what_to_change(tmp_path: Path, tiny_run: Any) -> None:
    cfg = tiny_run(tmp_path / "a", precision="fp32")
    with pytest.raises(NonFiniteLossError) as e:
        pretrain(cfg, loss_fn=_DivergesAt(1, nan_loss=True))
    msg = str(e.value)
    assert "no checkpoint had been written yet" in msg and "last good" not in msg
    assert "--precision fp32" not in msg  # an fp32 run is not told to use fp32
    cfg = tiny_run(tmp_path / "b", temperature=1e-30)
    with pytest.raises(NonFiniteLossError, match=r"Likely: --temperature 1e-30 is very small"):
        pretrain(cfg, loss_fn=_DivergesAt(1, nan_loss=True))


@pytest.fixture
def nan_checkpoint(tmp_path: Path, write_checkpoint: Callable[..., Path]) -> Path:
    """A checkpoint whose encoder holds one NaN weight, with a valid digest."""

    def poison(model: dict[str, Tensor]) -> None:
        model["encoder.conv1.weight"][0, 0, 0, 0] = float("nan")

    return write_checkpoint(tmp_path / "ck.pt", image_size=8, edit=poison)


def test_nan_weights_are_never_evaluated_or_loaded(
    nan_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fastclr

    path = nan_checkpoint  # a valid digest: the file is as written
    assert main(["linear-eval", "--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "NaN or Inf (encoder.conv1.weight)" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        fastclr.load_encoder(path)


def test_a_flipped_bit_in_the_version_key_is_not_read_as_a_legacy_file(
    tmp_path: Path, write_checkpoint: Callable[..., Path]
) -> None:
    """The key that says "this file carries a digest" damaged, and a weight too: refused, not
    loaded unverified as a file from before the digest (the probe of the issue)."""
    import struct

    path = write_checkpoint(tmp_path / "ck.pt", image_size=8)
    state = load_checkpoint(path)
    state.pop("_read_from")
    state["model"]["encoder.conv1.weight"][0, 0, 0, 0] = 1234.5  # a value to find in the file
    save_checkpoint_atomic(state, path)
    data = bytearray(path.read_bytes())
    key = data.find(b"format_version")
    value = data.find(struct.pack("<f", 1234.5))
    assert key > 0 and value > 0
    data[key + len("format_versio")] ^= 0x01  # format_version → format_versiom
    data[value + 3] ^= 0x01  # and the weight's exponent
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="carries no integrity digest"):
        load_checkpoint(path)


def test_streamed_data_that_is_mostly_unreadable_is_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """60 broken files and 1 good one (and a flat folder of 8 broken, 1 good), streamed: one
    message naming files and why, before any training; not a DataLoader worker's traceback."""
    for name, n_bad in (("many", 60), ("flat", 8)):
        root = tmp_path / name
        root.mkdir()
        Image.new("RGB", (20, 16), (10, 200, 30)).save(root / "good.png")
        for i in range(n_bad):
            (root / f"bad{i:02d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        argv = [
            *("pretrain", "--data", str(root), "--loader", "stream", "--image-size", "8"),
            *("--batch-size", "2", "--width", "0.125", "--out", str(tmp_path / f"{name}-run")),
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "most of the data set is unreadable" in err and "bad" in err, err
        assert "DataLoader worker" not in err and "Traceback" not in err


def test_a_worker_that_cannot_fill_a_batch_reports_the_files(tmp_path: Path) -> None:
    """Past the up-front look, a batch that cannot be filled (16 replacements in a row failed)
    raises the reason in the training process, through a worker process too."""
    from fastclr.augment import AugmentConfig
    from fastclr.data import list_image_folder
    from fastclr.data.stream import StreamingLoader

    Image.new("RGB", (20, 16), (10, 200, 30)).save(tmp_path / "good.png")
    for i in range(60):
        (tmp_path / f"bad{i:02d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    listing = list_image_folder(tmp_path)
    for workers in (0, 1):
        loader = StreamingLoader(
            listing.files, listing.labels, AugmentConfig.cifar(size=8), 4, num_workers=workers
        )
        with pytest.raises(UsageError, match=r"16 files in a row could not be read \(.*bad"):
            for _ in range(3):
                list(loader.epoch(0))


def _exif_jpeg(path: Path, tag: int) -> np.ndarray:
    """A 16×24 picture stored with EXIF orientation ``tag``; returns the pixels as stored."""
    rng = np.random.default_rng(0)
    a = np.zeros((16, 24, 3), dtype=np.uint8)
    a[:8] = (255, 0, 0)  # a red top half: where it ends up says which way is up
    a[8:] = rng.integers(0, 60, (8, 24, 3))
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = tag
    im.save(path, exif=exif, quality=95)
    return a


def test_photos_stored_rotated_are_turned_upright_and_counted(tmp_path: Path) -> None:
    from PIL import ImageOps

    from fastclr.data.decode import decode_resized_square, decode_views, open_rgb

    path = tmp_path / "portrait.jpg"
    _exif_jpeg(path, 6)  # stored landscape, meant to be seen rotated 90° clockwise
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    got, conversion = open_rgb(path)
    assert got.shape == upright.shape == (24, 16, 3)
    assert np.array_equal(got, upright) and conversion == "EXIF orientation 6 applied"
    sizes: list[tuple[int, int]] = []

    def draw(h: int, w: int) -> np.ndarray:
        sizes.append((h, w))
        return np.array([[0, 0, h, w]])

    views, conversion, _ = decode_views(str(path), draw, 8, draft=False)
    assert sizes == [(24, 16)] and conversion is not None  # boxes drawn on the upright size
    square, _ = decode_resized_square(path, 8)
    assert views.shape == (1, 8, 8, 3) and square.shape == (8, 8, 3)


def test_split_layouts(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / "t" / "train" / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "t" / "train" / c / f"{i}.png")
    plan = plan_data(str(tmp_path / "t"))  # train/ and no val/: not one class named "train"
    assert plan.classes == ["a", "b"] and plan.heldout is not None and len(plan.heldout) == 2
    (tmp_path / "v" / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "v" / "val" / "a" / "0.png")
    with pytest.raises(UsageError, match="has a val/ folder but no train/"):
        plan_data(str(tmp_path / "v"))


def test_mostly_unreadable_held_out_part_names_itself(tmp_path: Path) -> None:
    """A labelled folder whose held-out part cannot be read: the message says it is the held-out
    part and how many files of the folder were unreadable, not "none of the 6 files"."""
    from fastclr.data import load_image_folder

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(22):
            (tmp_path / c / f"{i:02d}.png").write_bytes(b"not a png")
    plan = plan_data(str(tmp_path))
    assert plan.heldout is not None
    for i in range(22):  # make the training part readable, the held-out part not
        for c in ("a", "b", "c"):
            p = tmp_path / c / f"{i:02d}.png"
            if str(p) in set(plan.train.files):  # type: ignore[union-attr]
                Image.new("RGB", (8, 8)).save(p)
    with pytest.warns(RuntimeWarning), pytest.raises(UsageError, match=r"held-out image files"):
        load_image_folder(tmp_path, 8)


def test_fp16_steps_the_scaler_skips_do_not_warn(
    tmp_path: Path, monkeypatch: Any, tiny_run: Any
) -> None:
    """With fp16 the grad scaler skips a step whose gradients overflowed; torch's warning that
    the schedule then stepped first is intended and is not shown."""
    import warnings

    import fastclr.train.loop as loop

    real = loop.make_scaler
    monkeypatch.setattr(
        loop,
        "make_scaler",
        lambda precision, device: (
            torch.amp.GradScaler(device.type, init_scale=2.0**60, enabled=True)
            if precision == "fp16"
            else real(precision, device)
        ),
    )
    cfg = tiny_run(tmp_path / "r", precision="fp16", epochs=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pretrain(cfg)
    assert not [w for w in seen if "lr_scheduler.step()" in str(w.message)]
