"""The default recipe's rules (lr switch, warm-up, preset, kNN k) and the plateau watcher."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastclr.augment.presets import SMALL_CROP_SCALE, preset_config
from fastclr.evaluate import knn_accuracy, knn_k_for
from fastclr.train import TrainConfig
from fastclr.train.builders import augment_preset_for, warmup_steps
from fastclr.train.loop import resolve_batch, resolve_preset
from fastclr.train.recipe import (
    DEFAULT_BATCH,
    MIN_AUTO_BATCH,
    MIN_STEPS_PER_EPOCH,
    batch_for,
    linear_lr,
    lr_for,
    preset_for,
    sqrt_lr,
    warmup_for,
)
from fastclr.train.rundir import ResumePlan
from fastclr.train.watch import PlateauWatcher, patience_for


@pytest.mark.parametrize(
    ("batch", "epochs", "rule"),
    [
        (256, 20, "sqrt"),
        (256, 1000, "sqrt"),  # small batch, long run
        (4096, 99, "sqrt"),  # large batch, short run
        (4096, 100, "linear"),  # both sides of each threshold
        (4095, 100, "sqrt"),
        (8192, 800, "linear"),
    ],
)
def test_lr_rule_switch(batch: int, epochs: int, rule: str) -> None:
    lr, why = lr_for(batch, epochs)
    want = linear_lr(batch) if rule == "linear" else sqrt_lr(batch)
    assert lr == pytest.approx(want)
    assert ("linear rule" if rule == "linear" else "square-root rule") in why


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (1_281_167, 256),  # ImageNet: the default
        (4000, 256),  # the folder: 15 steps at 256
        (2048, 256),  # exactly 8 steps at 256
        (2047, 128),
        (1437, 128),  # the 28-px digits folder: 5 steps at 256, 11 at 128
        (1023, 64),  # 7 steps at 128, 15 at 64
        (511, 32),  # 7 steps at 64: the rule's floor
        (100, 32),  # the floor, whatever the steps
    ],
)
def test_batch_rule_for_small_data(n: int, want: int) -> None:
    batch, why = batch_for(n)
    assert batch == want
    assert str(n) in why
    # the largest power of two <= the default with >= 16 steps an epoch, at least the floor
    assert batch & (batch - 1) == 0 and MIN_AUTO_BATCH <= batch <= DEFAULT_BATCH
    assert n // batch >= MIN_STEPS_PER_EPOCH or batch == MIN_AUTO_BATCH
    assert batch == DEFAULT_BATCH or n // (2 * batch) < MIN_STEPS_PER_EPOCH


def test_batch_rule_splits_over_ranks() -> None:
    assert batch_for(1437, world_size=4)[0] == 128
    assert batch_for(1437, world_size=3)[0] % 3 == 0
    assert batch_for(100, world_size=48)[0] == 48  # every rank gets at least one image


def test_resolve_batch_given_checkpoint_then_rule() -> None:
    from fastclr.data import load_digits

    digits = load_digits(8)
    cfg, line = resolve_batch(TrainConfig(batch_size=24), None, digits, 1)
    assert (cfg.batch_size, line.reason) == (24, "given")  # an explicit --batch-size always wins
    plan = ResumePlan(checkpoint={"config": {"batch_size": 40}})
    cfg, line = resolve_batch(TrainConfig(), plan, digits, 1)
    assert (cfg.batch_size, line.reason) == (40, "the checkpoint's")  # resume keeps its batch
    cfg, line = resolve_batch(TrainConfig(), None, digits, 1)
    assert cfg.batch_size == batch_for(len(digits.train))[0] == 128
    assert line.line().startswith(f"batch: 128 ({len(digits.train)} images")
    with pytest.raises(RuntimeError, match="not resolved"):
        TrainConfig().batch()


def test_count_train_images_leaves_out_the_held_out_part(tmp_path: Path) -> None:
    from PIL import Image

    from fastclr.data.select import build_train_data, count_train_images

    def fill(root: Path, per_class: int) -> None:
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (4, 4), (i, 0, 0)).save(root / c / f"{i}.png")

    fill(tmp_path / "flat", 10)  # no val/: 10% of each class is held out for the monitor
    fill(tmp_path / "split" / "train", 7)
    fill(tmp_path / "split" / "val", 2)
    for root, want in ((tmp_path / "flat", 18), (tmp_path / "split", 14)):
        assert count_train_images(str(root)) == want
        built = build_train_data(
            str(root), loader="auto", crop=preset_config("small", 4), image_size=4, batch_size=2,
            seed=0, rank=0, world_size=1, device=torch.device("cpu"), num_workers=0,
        )  # fmt: skip
        assert built.n_images == want  # the count is the one the loader trains on


def test_lr_rules_are_the_papers() -> None:
    assert sqrt_lr(256) == pytest.approx(1.2)  # 0.075 × 16
    assert linear_lr(256) == pytest.approx(0.3)
    assert sqrt_lr(4096) == pytest.approx(linear_lr(4096)) == pytest.approx(4.8)  # they meet


@pytest.mark.parametrize(
    ("spe", "epochs", "want"),
    [
        (5, 20, 10),  # 10% of 100 steps
        (100, 1000, 1000),  # capped at 10 epochs (1% of the run)
        (100, 100, 1000),  # exactly 10 epochs = 10%
        (1, 3, 1),  # at least one step
    ],
)
def test_warmup_is_a_tenth_capped_at_ten_epochs(spe: int, epochs: int, want: int) -> None:
    assert warmup_for(spe, spe * epochs)[0] == want
    cfg = TrainConfig(epochs=epochs)
    assert warmup_steps(cfg, spe, spe * epochs) == want
    cfg.warmup_epochs = 2.0  # a user's value is kept, capped at 10% of the run
    assert warmup_steps(cfg, spe, spe * epochs) == min(2 * spe, int(0.1 * spe * epochs))


@pytest.mark.parametrize(
    ("size", "preset"),
    [
        (16, "small"),
        (28, "small"),
        (31, "small"),
        (32, "cifar"),
        (64, "cifar"),
        (65, "imagenet"),
        (224, "imagenet"),
    ],
)
def test_preset_rule(size: int, preset: str) -> None:
    assert preset_for(size)[0] == preset
    assert augment_preset_for(TrainConfig(data="/some/folder", image_size=size)) == preset
    assert augment_preset_for(TrainConfig(data="digits", image_size=size)) == "digits"
    user = TrainConfig(data="/some/folder", image_size=size, augment_preset="imagenet")
    assert augment_preset_for(user) == "imagenet"


def test_small_preset_is_cifar_with_milder_crops() -> None:
    small, cifar = preset_config("small", 28), preset_config("cifar", 28)
    assert small.scale == SMALL_CROP_SCALE and cifar.scale == (0.08, 1.0)
    assert small.flip_p == cifar.flip_p and small.strength == cifar.strength


def _png(path: Path, pixels: np.ndarray, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)


def test_grey_detection_in_memory_and_in_files(tmp_path: Path) -> None:
    from fastclr.data import ImageData, TensorImageDataset
    from fastclr.data.select import images_are_grey

    g = torch.randint(0, 256, (10, 8, 8, 1), dtype=torch.uint8).expand(-1, -1, -1, 3)
    assert images_are_grey(ImageData("g", TensorImageDataset(g.contiguous()), None))
    c = g.clone()
    c[9, 2, 2, 1] ^= 1  # one channel of one pixel of the last image
    assert not images_are_grey(ImageData("c", TensorImageDataset(c), None))
    assert images_are_grey("digits")

    rng = np.random.default_rng(0)
    root = tmp_path / "grey"
    for i in range(5):  # mode L files, and RGB files that hold a grey picture
        _png(root / "a" / f"{i}.png", rng.integers(0, 256, (9, 9), dtype=np.uint8), "L")
        rgb = np.repeat(rng.integers(0, 256, (9, 9, 1), dtype=np.uint8), 3, axis=2)
        _png(root / "b" / f"{i}.png", rgb, "RGB")
    (root / "b" / "broken.png").write_bytes(b"not a png")  # skipped, not fatal
    assert images_are_grey(str(root))
    colour = rgb.copy()
    colour[0, 0, 2] ^= 1
    _png(root / "b" / "9.png", colour, "RGB")
    assert not images_are_grey(str(root))
    empty = tmp_path / "unreadable" / "a"
    empty.mkdir(parents=True)
    (empty / "x.png").write_bytes(b"nothing")
    assert not images_are_grey(str(tmp_path / "unreadable"))  # nothing opened: not called grey


def test_grey_presets_are_the_size_presets_without_flips() -> None:
    for size, name in ((28, "small"), (32, "cifar"), (224, "imagenet")):
        grey, why = preset_for(size, grey=True)
        assert grey == name + "-grey" and "no horizontal flips" in why
        assert preset_for(size, grey=False)[0] == name
        plain, mono = preset_config(name, size), preset_config(grey, size)
        assert mono.flip_p == 0.0 and plain.flip_p == 0.5
        assert dataclasses.replace(mono, flip_p=plain.flip_p) == plain


def test_resolve_preset_rule_given_and_resumed(tmp_path: Path) -> None:
    from fastclr.data import load_digits

    root = tmp_path / "f"
    rng = np.random.default_rng(1)
    for i in range(4):
        _png(root / "a" / f"{i}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8), "L")
    cfg, line = resolve_preset(TrainConfig(data=str(root), image_size=28), None, None)
    assert cfg.augment_preset == "small-grey" and line.value == "small-grey"
    _png(root / "a" / "c.png", rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB")
    cfg, line = resolve_preset(TrainConfig(data=str(root), image_size=40), None, None)
    assert cfg.augment_preset == "cifar" and "grayscale" not in line.reason
    cfg, line = resolve_preset(TrainConfig(image_size=16), None, None)
    assert cfg.augment_preset == "digits"  # the embedded demo keeps its preset
    cfg, line = resolve_preset(TrainConfig(image_size=16), None, load_digits(16))
    assert cfg.augment_preset == "small-grey"  # digits handed over as data: the general rule
    given = TrainConfig(data=str(root), image_size=28, augment_preset="imagenet")
    assert resolve_preset(given, None, None)[1].reason == "given"
    plan = ResumePlan(checkpoint={"config": {"augment_preset": "small-grey"}})
    resumed = TrainConfig(data=str(root), augment_preset="small-grey", resume=str(root))
    assert resolve_preset(resumed, plan, None)[1].reason == "the checkpoint's"


def test_knn_k_rule() -> None:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([140, 300, 2000])])
    assert knn_k_for(labels)[0] == 21  # 15% of the smallest class
    assert knn_k_for(torch.arange(10).repeat(5000))[0] == 200  # capped (CIFAR-10: 5,000 a class)
    assert knn_k_for(torch.arange(10))[0] == 1
    assert knn_k_for(None)[0] == 200


def test_knn_default_k_follows_the_rule() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(40)  # 40 a class → k = 6
    f = torch.randn(160, 8, generator=g) + 2 * torch.nn.functional.one_hot(y, 8)
    ft = torch.randn(40, 8, generator=g) + 2 * torch.nn.functional.one_hot(y[:40], 8)
    assert knn_accuracy(f, y, ft, y[:40]) == knn_accuracy(f, y, ft, y[:40], k=6)


def _watcher(**kw: float) -> PlateauWatcher:
    args = {"epochs": 20, "warmup_epochs": 2.0, "lr": 1.2, "rule_lr": 1.2, "chance_loss": 6.24}
    args.update(kw)
    return PlateauWatcher(**args)  # type: ignore[arg-type]


def test_watcher_quiet_while_improving_and_during_warmup() -> None:
    w = _watcher()
    for e in range(18):
        assert w.update(e, 6.0 - 0.1 * e, 0.5 + 0.01 * e) == []


def test_watcher_reports_a_knn_plateau_once_per_patience() -> None:
    w = _watcher()
    assert w.patience == patience_for(20) == 5
    msgs = [(e, m) for e in range(18) for m in w.update(e, 6.0 - 0.1 * e, 0.64)]
    # kNN best at epoch 0; judged after warm-up (epoch 2 ends it): flat 5 epochs → epoch 6, 11, 16
    assert [e for e, _ in msgs] == [6, 11, 16]
    assert "kNN has not improved" in msgs[0][1]
    assert "loss still falls" in msgs[0][1]  # the likely cause when only kNN is flat


def test_watcher_names_a_learning_rate_far_below_the_rule() -> None:
    w = _watcher(lr=0.3, rule_lr=1.5)
    msgs = [m for e in range(18) for m in w.update(e, 5.9, 0.6)]
    assert any("loss has not improved" in m for m in msgs)
    assert all("far below the rule's 1.5" in m for m in msgs)


def test_watcher_names_a_loss_at_chance_and_skips_the_tail() -> None:
    w = _watcher(epochs=40)
    msgs = {e: m for e in range(40) for m in w.update(e, 6.2, None)}
    assert msgs and all("near chance" in m for m in msgs.values())
    assert max(msgs) < 36  # the last 10% of the cosine schedule is not judged


def test_watcher_ignores_non_finite() -> None:
    w = _watcher()
    assert w.update(0, math.nan, None) == []
