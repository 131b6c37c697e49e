"""The default recipe's rules (lr switch, warm-up, preset, kNN k), the run plan that applies each
of them once, and the plateau watcher."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fastclr.augment.presets import SMALL_CROP_SCALE, preset_config
from fastclr.data import load_digits, plan_data
from fastclr.data.select import images_are_grey
from fastclr.errors import UsageError
from fastclr.evaluate import knn_accuracy, knn_k_for
from fastclr.train import TrainConfig
from fastclr.train.plan import RunPlan, plan_run
from fastclr.train.recipe import (
    DEFAULT_BATCH,
    MIN_AUTO_BATCH,
    MIN_STEPS_PER_EPOCH,
    batch_for,
    linear_lr,
    lr_for,
    preset_for,
    size_for,
    sqrt_lr,
    warmup_for,
)
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


def test_batch_rule_below_its_floor_takes_every_image(
    tmp_path: Path, write_noise_folder: Callable[..., Path]
) -> None:
    assert batch_for(5) == (
        5,
        "5 images, fewer than the rule's smallest batch 32: all of them in one step",
    )
    assert batch_for(31)[0] == 31 and batch_for(32)[0] == 32
    assert batch_for(5, world_size=2) == (  # every rank the same share
        4,
        "5 images, fewer than the rule's smallest batch 32: 4 (a multiple of 2 ranks) in one step",
    )
    with pytest.raises(UsageError, match=r"1 training image.*at least 2"):
        batch_for(1)
    few = write_noise_folder(tmp_path / "few", [(40, 40)], 3)  # 6 files, no held-out image
    plan = plan_run(TrainConfig(data=str(few)))
    assert (plan.batch, plan.steps_per_epoch) == (plan.data.n_train, 1)


def test_batch_rule_splits_over_ranks() -> None:
    assert batch_for(1437, world_size=4)[0] == 128
    assert batch_for(1437, world_size=3)[0] % 3 == 0
    assert batch_for(100, world_size=48)[0] == 48  # every rank gets at least one image


def _saved(**values: object) -> dict[str, object]:
    """A checkpoint's stored plan holding ``values`` (what a resume reads)."""
    return {k: {"value": v, "reason": "x"} for k, v in values.items()}


def test_plan_batch_given_checkpoint_then_rule() -> None:
    digits = load_digits(8)
    plan = plan_run(TrainConfig(batch_size=24, image_size=8), data=digits)
    assert (plan.batch, plan.reason("batch")) == (24, "given")  # an explicit batch always wins
    plan = plan_run(TrainConfig(image_size=8), data=digits, saved=_saved(batch=40))
    assert (plan.batch, plan.reason("batch")) == (40, "the checkpoint's")  # resume keeps it
    plan = plan_run(TrainConfig(image_size=8), data=digits)
    assert plan.batch == batch_for(len(digits.train))[0] == 128
    assert plan.reason("batch").startswith(f"{len(digits.train)} images")
    assert plan.steps_per_epoch == len(digits.train) // 128 and plan.per_rank == 128
    demo = plan_run(TrainConfig())  # --data digits itself: the demo recipe, said so
    assert (demo.batch, demo.image_size, demo.width, demo.epochs, demo.lr) == (
        128,
        16,
        0.25,
        15,
        6.0,
    )
    assert "digits demo" in demo.reason("lr") and "rule would give" in demo.reason("lr")
    # the plateau watcher and the NaN advice measure the demo's lr against its own recipe
    assert demo.rule_lr == demo.lr == 6.0 and plan.rule_lr == plan.lr != 6.0


def test_plan_refuses_a_batch_the_data_or_ranks_cannot_take() -> None:
    from fastclr.errors import UsageError

    digits = load_digits(8)
    with pytest.raises(UsageError, match="larger than the dataset"):
        plan_run(TrainConfig(batch_size=4096, image_size=8), data=digits)
    with pytest.raises(UsageError, match="does not split evenly over 3 ranks"):
        plan_run(TrainConfig(batch_size=64, image_size=8), data=digits, world_size=3)


def test_plan_counts_what_the_loader_trains_on(
    tmp_path: Path, one_process_data: Callable[..., Any]
) -> None:
    from PIL import Image

    def fill(root: Path, per_class: int) -> None:
        for c in ("a", "b"):
            (root / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (4, 4), (i, 0, 0)).save(root / c / f"{i}.png")

    fill(tmp_path / "flat", 10)  # no val/: 10% of each class is held out for the monitor
    fill(tmp_path / "split" / "train", 7)
    fill(tmp_path / "split" / "val", 2)
    fill(tmp_path / "trainonly" / "train", 10)  # train/ without val/: the same as flat
    cases = ((tmp_path / "flat", 18), (tmp_path / "split", 14), (tmp_path / "trainonly", 18))
    for root, want in cases:
        data = plan_data(str(root))
        assert data.n_train == want and data.classes == ["a", "b"], root
        for loader in ("memory", "stream"):
            plan = plan_run(
                TrainConfig(data=str(root), image_size=4, batch_size=2, loader=loader),
                data=data,
            )
            built = one_process_data(plan, preset_config("small", 4), num_workers=0)
            assert built.n_images == want == plan.data.n_train  # the loader trains on the count
            assert built.loader.steps_per_epoch == plan.steps_per_epoch == want // 2


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
    from fastclr.data import ImageData, TensorImageDataset

    assert warmup_for(spe, spe * epochs)[0] == want
    images = torch.zeros(spe * 2, 4, 4, 3, dtype=torch.uint8)  # batch 2: spe steps an epoch
    data = ImageData("tiny", TensorImageDataset(images), None)

    def planned(**kw: object) -> RunPlan:
        cfg = TrainConfig(epochs=epochs, image_size=4, batch_size=2, **kw)  # type: ignore[arg-type]
        return plan_run(cfg, data=data)

    plan = planned()
    assert plan.steps_per_epoch == spe and plan.warmup_steps == want
    given = planned(warmup_epochs=2.0)  # a user's value is kept, capped at 10% of the run
    assert given.warmup_steps == min(2 * spe, int(0.1 * spe * epochs))


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
def test_preset_rule(size: int, preset: str, tmp_path: Path) -> None:
    assert preset_for(size)[0] == preset
    rng = np.random.default_rng(0)
    for i in range(4):  # colour images, larger than the views
        _png(tmp_path / "a" / f"{i}.png", rng.integers(0, 256, (70, 70, 3), dtype=np.uint8), "RGB")

    def planned(**kw: object) -> RunPlan:
        cfg = TrainConfig(data=str(tmp_path), image_size=size, batch_size=2, **kw)  # type: ignore[arg-type]
        return plan_run(cfg)

    assert planned().preset == preset
    assert plan_run(TrainConfig(image_size=size)).preset == "digits"  # the embedded demo
    user = planned(augment_preset="imagenet")
    assert (user.preset, user.reason("preset")) == ("imagenet", "given")


def test_view_size_rule_is_the_images_size_when_smaller() -> None:
    assert size_for([]) == (224, "the default (the paper's ImageNet views)")
    assert size_for([28] * 100)[0] == 28 and "the images' own size" in size_for([28])[1]
    assert size_for([32, 32, 500])[0] == 32  # the median, not the largest
    assert size_for([96, 375, 500])[0] == 224  # photos: the paper's size
    assert size_for([224, 224])[0] == 224
    small, why = size_for([8, 9])
    assert small == 16 and "raised to 16" in why  # tiny images are upsampled to 16, no less


def test_plan_view_size_from_the_folder_given_demo_and_resumed(
    tmp_path: Path, write_noise_folder: Callable[..., Path]
) -> None:
    def planned(root: Path, **kw: object) -> RunPlan:
        return plan_run(TrainConfig(data=str(root), batch_size=2, **kw))  # type: ignore[arg-type]

    small = write_noise_folder(tmp_path / "small", [(28, 28), (28, 40)], 3)
    plan = planned(small)
    assert plan.image_size == 28 and "median shorter side of 4 probed" in plan.reason("image_size")
    assert (plan.stem, plan.preset) == ("cifar", "small")  # the rules that follow see 28 px
    large = write_noise_folder(tmp_path / "large", [(300, 250)], 2)
    assert planned(large).image_size == 224
    given = planned(small, image_size=40)
    assert (given.image_size, given.reason("image_size")) == (40, "given")
    resumed = plan_run(
        TrainConfig(data=str(small), batch_size=2), saved=_saved(image_size=224, stem="imagenet")
    )
    assert (resumed.image_size, resumed.stem) == (224, "imagenet")  # an older run keeps its size
    assert plan_run(TrainConfig()).image_size == 16  # the embedded digits' demo
    handed = plan_run(TrainConfig(batch_size=2), data=load_digits(12))
    assert handed.image_size == 16 and "raised to 16" in handed.reason("image_size")


def test_plan_reads_the_probed_headers_once(
    tmp_path: Path, write_noise_folder: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view-size rule, the loader rule and the readability check of one streamed run share
    one look at the headers; a second plan of the same folder looks again (nothing stale)."""
    import fastclr.data.plan as data_plan

    calls: list[int] = []
    real = data_plan.probe_headers

    def counted(files: Any, *args: Any) -> Any:
        calls.append(len(files))
        return real(files, *args)

    monkeypatch.setattr(data_plan, "probe_headers", counted)
    root = write_noise_folder(tmp_path / "photos", [(40, 30)], 4)  # not square: streamed
    plan = plan_run(TrainConfig(data=str(root), batch_size=2))
    assert (plan.image_size, plan.loader) == (30, "stream")  # all three rules ran
    assert calls == [plan.data.n_train]
    plan_run(TrainConfig(data=str(root), batch_size=2))
    assert len(calls) == 2


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

    def grey(data: str | ImageData) -> bool:
        return images_are_grey(plan_data(data))

    g = torch.randint(0, 256, (10, 8, 8, 1), dtype=torch.uint8).expand(-1, -1, -1, 3)
    assert grey(ImageData("g", TensorImageDataset(g.contiguous()), None))
    c = g.clone()
    c[9, 2, 2, 1] ^= 1  # one channel of one pixel of the last image
    assert not grey(ImageData("c", TensorImageDataset(c), None))
    assert grey("digits")

    rng = np.random.default_rng(0)
    root = tmp_path / "grey"
    for i in range(5):  # mode L files, and RGB files that hold a grey picture
        _png(root / "a" / f"{i}.png", rng.integers(0, 256, (9, 9), dtype=np.uint8), "L")
        rgb = np.repeat(rng.integers(0, 256, (9, 9, 1), dtype=np.uint8), 3, axis=2)
        _png(root / "b" / f"{i}.png", rgb, "RGB")
    (root / "b" / "broken.png").write_bytes(b"not a png")  # skipped, not fatal
    assert grey(str(root))
    colour = rgb.copy()
    colour[0, 0, 2] ^= 1
    _png(root / "b" / "9.png", colour, "RGB")
    assert not grey(str(root))
    empty = tmp_path / "unreadable" / "a"
    empty.mkdir(parents=True)
    (empty / "x.png").write_bytes(b"nothing")
    assert not grey(str(tmp_path / "unreadable"))  # nothing opened: not called grey


def test_grey_presets_are_the_size_presets_without_flips() -> None:
    for size, name in ((28, "small"), (32, "cifar"), (224, "imagenet")):
        grey, why = preset_for(size, grey=True)
        assert grey == name + "-grey" and "no horizontal flips" in why
        assert preset_for(size, grey=False)[0] == name
        plain, mono = preset_config(name, size), preset_config(grey, size)
        assert mono.flip_p == 0.0 and plain.flip_p == 0.5
        assert dataclasses.replace(mono, flip_p=plain.flip_p) == plain


def test_plan_preset_rule_given_and_resumed(tmp_path: Path) -> None:
    root = tmp_path / "f"
    rng = np.random.default_rng(1)
    for i in range(4):
        _png(root / "a" / f"{i}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8), "L")

    def planned(size: int, **kw: object) -> RunPlan:
        cfg = TrainConfig(data=str(root), image_size=size, batch_size=2, **kw)  # type: ignore[arg-type]
        return plan_run(cfg)

    assert planned(28).preset == "small-grey"
    _png(root / "a" / "c.png", rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), "RGB")
    colour = planned(40)
    assert colour.preset == "cifar" and "grayscale" not in colour.reason("preset")
    assert plan_run(TrainConfig(image_size=16)).preset == "digits"  # the embedded demo's
    handed = plan_run(TrainConfig(image_size=16), data=load_digits(16))
    assert handed.preset == "small-grey"  # digits handed over as data: the general rule
    assert planned(28, augment_preset="imagenet").reason("preset") == "given"
    resumed = plan_run(
        TrainConfig(data=str(root), image_size=28, batch_size=2), saved=_saved(preset="cifar")
    )
    assert (resumed.preset, resumed.reason("preset")) == ("cifar", "the checkpoint's")


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


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_stays_fp32_on_cpu_and_says_why(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--precision auto`` is fp32 on every CPU (bf16 was faster in the bench but not shown to
    train as well); on a CPU with native bf16 the header says that it exists and why it is not
    the default, elsewhere it does not mention bf16 at all."""
    import fastclr.train.plan as plan_module

    monkeypatch.setattr(plan_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(plan_module, "cpu_bf16_support", lambda: "native bf16: amx_bf16")
    plan = plan_run(TrainConfig(image_size=8), data=load_digits(8))
    assert plan.precision == "fp32"
    assert plan.reason("precision").startswith("auto: fp32 on the CPU")
    assert ("bf16" in plan.reason("precision")) is native
    given = plan_run(TrainConfig(image_size=8, precision="bf16"), data=load_digits(8))
    assert (given.precision, given.reason("precision")) == ("bf16", "given")
