"""The pretraining loop, checkpoints, data, evaluation and the command line.

Runs use a tiny encoder (ResNet-18 at width 1/8), 8-px views and a slice of the digits so every
run takes a second or two on a busy CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from fastclr.augment import AugmentConfig, SimCLRAugmentation
from fastclr.data import ImageData, TensorImageDataset, load_digits, load_image_folder
from fastclr.evaluate import evaluate_checkpoint, knn_accuracy, linear_probe_accuracy
from fastclr.loss import NTXentLoss
from fastclr.train import (
    CHECKPOINT_NAME,
    CheckpointError,
    NonFiniteLossError,
    TrainConfig,
    load_checkpoint,
    pretrain,
    save_checkpoint_atomic,
)
from fastclr.train.recipe import lr_for

REPO = Path(__file__).resolve().parents[1]
TINY = {"width": 0.125, "image_size": 8, "batch_size": 32, "log_every": 10, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def _augment(seed: int = 0) -> SimCLRAugmentation:
    return SimCLRAugmentation(AugmentConfig.cifar(size=8), backend="torch", seed=seed)


@pytest.fixture(scope="module")
def small_digits() -> ImageData:
    d = load_digits()
    assert d.heldout is not None and d.train.labels is not None and d.heldout.labels is not None
    return ImageData(
        "digits[:96]",
        TensorImageDataset(d.train.images[:96], d.train.labels[:96]),
        TensorImageDataset(d.heldout.images[:40], d.heldout.labels[:40]),
        d.classes,
    )


def _cfg(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {**TINY, "epochs": 2, "limit_steps": 2, "out": str(out)}
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg: TrainConfig, data: ImageData, loss_fn: Any = None) -> dict[str, Tensor]:
    result = pretrain(cfg, augment=_augment(cfg.seed), data=data, loss_fn=loss_fn)
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _assert_identical(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


class _NanFrom:
    """NT-Xent whose value is NaN from its ``nan_from``-th call on (counting from 1)."""

    def __init__(self, nan_from: int):
        self.inner = NTXentLoss(0.5, check_finite=False)
        self.calls = 0
        self.nan_from = nan_from

    def __call__(self, z1: Tensor, z2: Tensor) -> Tensor:
        self.calls += 1
        loss = self.inner(z1, z2)
        return loss * float("nan") if self.calls >= self.nan_from else loss


# ---------------------------------------------------------------------------------- resume


def test_resume_after_an_epoch_is_bit_identical(tmp_path: Path, small_digits: ImageData) -> None:
    straight = _run(_cfg(tmp_path / "a"), small_digits)
    _run(_cfg(tmp_path / "b", stop_after_epochs=1), small_digits)
    ckpt = load_checkpoint(tmp_path / "b")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 0, 2)
    resumed = _run(_cfg(tmp_path / "c", resume=str(tmp_path / "b" / CHECKPOINT_NAME)), small_digits)
    _assert_identical(straight, resumed)
    # a different seed really gives different weights (the comparison can fail)
    other = _run(_cfg(tmp_path / "d", seed=1), small_digits)
    assert not all(torch.equal(straight[k], other[k]) for k in straight)


def test_ctrl_c_checkpoints_at_a_step_boundary_and_resumes_identically(
    tmp_path: Path, small_digits: ImageData, interrupt_at: Callable[[int], Any]
) -> None:
    straight = _run(_cfg(tmp_path / "a", limit_steps=3), small_digits)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the second step
        _run(_cfg(tmp_path / "b", limit_steps=3), small_digits, loss_fn=interrupt_at(2))
    ckpt = load_checkpoint(tmp_path / "b")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (0, 2, 2)
    resumed = _run(_cfg(tmp_path / "c", limit_steps=3, resume=str(tmp_path / "b")), small_digits)
    _assert_identical(straight, resumed)


def test_ctrl_c_in_an_epochs_last_step_finishes_the_epoch(
    tmp_path: Path, small_digits: ImageData, interrupt_at: Callable[[int], Any]
) -> None:
    straight = _run(_cfg(tmp_path / "a"), small_digits)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during the epoch's last (second) step
        _run(_cfg(tmp_path / "b"), small_digits, loss_fn=interrupt_at(2))
    ckpt = load_checkpoint(tmp_path / "b")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (1, 0, 2)
    assert len((tmp_path / "b" / "epochs.csv").read_text().strip().splitlines()) == 2
    resumed = _run(_cfg(tmp_path / "c", resume=str(tmp_path / "b")), small_digits)
    _assert_identical(straight, resumed)


# ---------------------------------------------------------------------------------- failures


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, small_digits: ImageData
) -> None:
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1 step 0"):
        _run(_cfg(out), small_digits, loss_fn=_NanFrom(3))
    ckpt = load_checkpoint(out)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 2)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_atomic_save_never_leaves_a_torn_file(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint_atomic({"format": "x", "v": torch.arange(3)}, path)
    good = path.read_bytes()

    def broken_save(obj: object, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_atomic({"format": "x", "v": torch.arange(5)}, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_unreadable_and_foreign_checkpoints(tmp_path: Path, small_digits: ImageData) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="binary file of another kind, not a PyTorch file"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a fastclr SimCLR checkpoint"):
        load_checkpoint(other)

    _run(_cfg(tmp_path / "r18", epochs=1, limit_steps=1), small_digits)
    with pytest.raises(CheckpointError, match=r"resnet18.*resnet34"):
        _run(_cfg(tmp_path / "r34", arch="resnet34", resume=str(tmp_path / "r18")), small_digits)
    with pytest.raises(CheckpointError, match=r"resnet18 encoder, not the requested resnet50"):
        evaluate_checkpoint(tmp_path / "r18", data=small_digits, arch="resnet50")


def test_bad_training_inputs(tmp_path: Path, small_digits: ImageData) -> None:
    with pytest.raises(ValueError, match="larger than the dataset"):
        _run(_cfg(tmp_path, batch_size=200), small_digits)
    with pytest.raises(ValueError, match="precision"):
        _run(_cfg(tmp_path, precision="fp8"), small_digits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        _run(_cfg(tmp_path, epochs=0), small_digits)


# ---------------------------------------------------------------------------------- data


def test_digits_split_is_fixed_disjoint_and_rgb() -> None:
    a, b = load_digits(), load_digits()
    assert a.heldout is not None and b.heldout is not None
    assert a.train.images.shape == (1438, 32, 32, 3) and a.train.images.dtype == torch.uint8
    assert len(a.train) + len(a.heldout) == 1797
    assert torch.equal(a.heldout.images, b.heldout.images)
    assert torch.equal(a.train.images[..., 0], a.train.images[..., 2])  # grey replicated
    assert a.heldout.labels is not None
    assert torch.bincount(a.heldout.labels).min() >= 30  # stratified: every class held out


def test_batches_shard_ranks_and_repeat_per_epoch() -> None:
    ds = TensorImageDataset(
        torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 2, 2, 3), torch.arange(20)
    )
    seen = []
    for rank in range(2):
        for _, y in ds.batches(4, seed=3, epoch=1, rank=rank, world_size=2):
            assert y is not None
            seen.append(y)
    ids = torch.cat(seen)
    assert len(ids) == 16 and len(set(ids.tolist())) == 16
    again = torch.cat(
        [y for _, y in ds.batches(4, seed=3, epoch=1, rank=0, world_size=2) if y is not None]
    )
    assert torch.equal(again, torch.cat(seen[:2]))
    epoch2 = torch.cat([y for _, y in ds.batches(4, seed=3, epoch=2) if y is not None])
    assert not torch.equal(epoch2[:8], torch.cat(seen[:2]))
    with pytest.raises(ValueError, match="larger than the dataset"):
        next(ds.batches(11, seed=0, epoch=0, world_size=2))


def _write_folder(root: Path, n_per_class: int = 4) -> None:
    from PIL import Image

    for c, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.new("RGB", (12 + i, 10), colour).save(root / c / f"{i}.png")


def test_image_folder_skips_and_reports_corrupt_files(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    bad = tmp_path / "dogs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(RuntimeWarning) as record:
        data = load_image_folder(tmp_path, size=8)
    messages = [str(w.message) for w in record]
    assert any(str(bad) in m for m in messages), messages
    assert any("skipped 1 of 9" in m for m in messages), messages
    assert data.skipped == 1 and data.classes == ["cats", "dogs"]
    assert data.heldout is not None and data.heldout.labels is not None
    assert len(data.train) + len(data.heldout) == 8
    assert data.train.images.shape[1:] == (8, 8, 3) and data.train.images.dtype == torch.uint8
    assert sorted(data.heldout.labels.tolist()) == [0, 1]
    red = data.train.images[data.train.labels == 0]  # type: ignore[operator]
    assert int(red[..., 0].min()) > 150 and int(red[..., 2].max()) < 100


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope", size=8)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path / "empty", size=8)


def test_pretrain_and_evaluate_on_an_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _write_folder(folder, n_per_class=6)
    out = tmp_path / "run"
    cfg = _cfg(out, data=str(folder), batch_size=4, epochs=1, limit_steps=1)
    result = pretrain(cfg, augment=_augment())
    assert result.knn_top1 is not None  # labelled folder: the monitor ran on the held-out split
    r = evaluate_checkpoint(out, data=str(folder))
    assert (r.n_train, r.n_test, r.arch) == (10, 2, "resnet18")
    assert 0.0 <= r.linear_top1 <= 1.0 and 0.0 <= r.knn_top1 <= 1.0


# ---------------------------------------------------------------------------------- evaluation


def test_knn_and_linear_probe_on_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    ytr, yte = torch.arange(60) % 3, torch.arange(30) % 3
    ftr = centres[ytr] + torch.randn(60, 16, generator=g)
    fte = centres[yte] + torch.randn(30, 16, generator=g)
    assert knn_accuracy(ftr, ytr, fte, yte, k=200) == 1.0  # k capped at 60
    assert linear_probe_accuracy(ftr, ytr, fte, yte) == 1.0
    shuffled = ytr[torch.randperm(60, generator=g)]
    assert knn_accuracy(ftr, shuffled, fte, yte, k=5) < 0.8


# ---------------------------------------------------------------------------------- CLI


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _tiny_cli_args(out: Path, steps: int) -> list[str]:
    """``fastclr pretrain`` options for a one-epoch run of ``steps`` steps of a tiny model."""
    return ["--epochs", "1", "--limit-steps", str(steps), "--width", "0.125", "--image-size", "8",
            "--batch-size", "32", "--out", str(out), "--no-progress"]  # fmt: skip


def test_cli_pretrain_then_linear_eval(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    args = ["pretrain", *_tiny_cli_args(out, steps=1)]
    proc = subprocess.run(
        [sys.executable, "-m", "fastclr", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: 1 epochs, 1 steps" in proc.stdout
    for name in (CHECKPOINT_NAME, "steps.csv", "epochs.csv", "loss.png"):
        assert (out / name).exists(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "knn_top1" in (out / "epochs.csv").read_text()

    from fastclr.cli import main

    assert main(["linear-eval", "--checkpoint", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "linear top-1" in printed and "kNN top-1" in printed and "1438 train / 359" in printed
    assert main(["linear-eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _pretrain_parser() -> argparse.ArgumentParser:
    from fastclr.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["pretrain"]
    return parser


def test_cli_pretrain_has_a_flag_per_config_field_with_its_default_once() -> None:
    parser = _pretrain_parser()
    options = {a.dest: a for a in parser._actions if a.dest not in ("help", "debug")}
    assert set(options) == {f.name for f in dataclasses.fields(TrainConfig)}
    # every option but the one-way on/off switches shows its default (two-way switches do: their
    # default is a rule)
    values = [
        a for a in options.values() if a.nargs != 0 or isinstance(a, argparse.BooleanOptionalAction)
    ]
    text = " ".join(parser.format_help().split())  # unwrap the columns
    assert text.count("(default:") == len(values) and "None" not in text
    for a in values:
        assert a.help is not None and a.help.count("(default:") == 1, a.dest
        if a.choices is not None:
            assert "{" + ",".join(a.choices) + "}" in text, a.dest
    assert "--augment-backend {auto,reference,torch,native" in text
    assert "(default: 16 for the embedded digits' demo, else 224, or the images' median" in text
    assert "--head-bn, --no-head-bn BatchNorm in the projection head (default: off for the" in text


def test_cli_and_library_share_one_set_of_defaults(tmp_path: Path) -> None:
    """``fastclr pretrain`` and ``pretrain(TrainConfig())`` are the same run: the command line
    passes only the flags given, and what depends on the data is decided by the run plan."""
    from fastclr.cli import build_parser, pretrain_config
    from fastclr.train.plan import plan_run

    def cfg(*argv: str) -> TrainConfig:
        return pretrain_config(build_parser().parse_args(["pretrain", *argv]))

    assert cfg() == TrainConfig()
    assert cfg("--data", str(tmp_path)) == TrainConfig(data=str(tmp_path))
    demo = plan_run(cfg())  # the digits demo recipe, decided by the plan
    assert (demo.width, demo.image_size, demo.batch, demo.epochs) == (0.25, 16, 128, 15)
    assert (demo.lr, demo.threads, demo.stem, demo.head_bn) == (6.0, 1, "cifar", False)
    _write_folder(tmp_path / "f", n_per_class=6)
    folder = plan_run(cfg("--data", str(tmp_path / "f"), "--batch-size", "4"))
    # 10-px images: views of their own size, raised to 16 (not 224-px upsamples), so CIFAR's stem
    assert (folder.width, folder.image_size, folder.threads, folder.head_bn) == (
        1.0,
        16,
        None,
        True,
    )
    assert folder.stem == "cifar" and folder.lr == lr_for(4, 100)[0]
    large = plan_run(cfg("--data", str(tmp_path / "f"), "--batch-size", "4", "--image-size", "96"))
    assert large.stem == "imagenet"
    given = cfg("--width", "0.5", "--no-progress", "--compile", "--stem", "imagenet", "--lr", "2")
    assert (given.width, given.progress, given.compile, given.stem, given.lr) == (
        0.5,
        False,
        True,
        "imagenet",
        2.0,
    )
    assert cfg("--knn-k", "7", "--proj-dim", "64").knn_k == 7


def _steps(out: Path) -> list[tuple[str, str]]:
    import csv

    with open(out / "steps.csv", newline="") as f:
        return [(r["global_step"], r["loss"]) for r in csv.DictReader(f)]


def test_cli_resume_takes_the_saved_options(tmp_path: Path, capsys: Any) -> None:
    """``--out RUN --resume`` alone continues with the settings the run was started with (not
    the command line's defaults) and ends equal to an uninterrupted run; a larger ``--epochs``
    extends it (said in the log); a different batch size is refused naming both values."""
    from fastclr.cli import main

    started = ["pretrain", "--epochs", "2", "--limit-steps", "2", "--width", "0.125",
               "--image-size", "8", "--batch-size", "24", "--lr", "0.5", "--seed", "3",
               "--log-every", "1", "--no-progress", "--threads", "1"]  # fmt: skip
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert main([*started, "--out", str(a)]) == 0
    assert main([*started, "--stop-after-epochs", "1", "--out", str(b)]) == 0
    assert load_checkpoint(b)["epoch"] == 1
    capsys.readouterr()
    assert main(["pretrain", "--out", str(b), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "with the settings it was started with\n" in printed
    assert "batch:       24 (given)" in printed and "lr:          0.5 (given" in printed, printed
    assert _steps(b) == _steps(a) and len(_steps(a)) == 4
    ck_a, ck_b = load_checkpoint(a), load_checkpoint(b)
    assert ck_b["epoch"] == 2
    _assert_identical(ck_a["model"], ck_b["model"])

    assert main(["pretrain", "--resume", str(b), "--epochs", "3"]) == 0  # --out: its folder
    printed = capsys.readouterr().out
    assert "changed: --epochs 2 → 3" in printed, printed
    ck = load_checkpoint(b)
    assert ck["epoch"] == 3 and len(_steps(b)) == 6
    assert (ck["config"]["batch_size"], ck["config"]["lr"], ck["config"]["seed"]) == (24, 0.5, 3)

    assert main(["pretrain", "--out", str(b), "--resume", "--batch-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 32 differs from the 24" in err and "leave --batch-size out" in err, err
    assert main(["pretrain", "--out", str(b), "--resume", "--stem", "imagenet"]) == 2
    assert "--stem imagenet differs from the cifar" in capsys.readouterr().err
    assert load_checkpoint(b)["epoch"] == 3  # refused before anything was written


def test_num_workers_auto_rule(tmp_path: Path, one_process_data: Callable[..., Any]) -> None:
    from fastclr.data.select import MAX_AUTO_WORKERS, resolve_num_workers

    assert resolve_num_workers(None, "stream", cpus=16, local_ranks=1)[0] == MAX_AUTO_WORKERS
    assert resolve_num_workers(None, "stream", cpus=16, local_ranks=4)[0] == 3
    n, why = resolve_num_workers(None, "stream", cpus=2, local_ranks=1)
    assert n == 1 and "2 usable CPUs per local rank" in why
    assert resolve_num_workers(None, "stream", cpus=1, local_ranks=1)[0] == 0
    assert resolve_num_workers(None, "stream", cpus=2, local_ranks=8)[0] == 0
    assert resolve_num_workers(None, "memory", cpus=64)[0] == 0
    assert resolve_num_workers(None, "dali", cpus=64)[0] == 0
    assert resolve_num_workers(5, "stream", cpus=2) == (5, "--num-workers")

    folder = tmp_path / "images"
    _write_folder(folder)
    from fastclr.train.plan import plan_run

    def workers(**kw: Any) -> tuple[int, str]:
        plan = plan_run(TrainConfig(image_size=8, batch_size=2, **kw))
        return plan.num_workers, plan.reason("workers")

    assert workers(data=str(folder), loader="stream") == resolve_num_workers(None, "stream")
    n, why = workers(loader="auto")  # the digits: in memory
    assert n == 0 and "in-memory" in why
    assert workers(data=str(folder), loader="stream", num_workers=0) == (0, "--num-workers")
    with pytest.raises(ValueError, match="--num-workers"):
        TrainConfig(num_workers=-1).validate()
    plan = plan_run(TrainConfig(data=str(folder), image_size=8, batch_size=2, loader="stream"))
    built = one_process_data(plan, AugmentConfig.cifar(size=8), monitor=False)
    assert built.num_workers == plan.num_workers

    from fastclr.train.header import run_header

    lines = run_header(plan, TrainConfig(), built, torch.device("cpu"), torch.nn.Linear(2, 2))
    shown = {line.key: line.value for line in lines}
    n, why = plan.num_workers, plan.reason("workers")
    want = f"{n} decode worker{'s' if n != 1 else ''} ({why})" if n else f"0 ({why})"
    assert shown["workers"] == want
    assert shown["loader"] == "stream (given)"


@pytest.mark.slow
@pytest.mark.parametrize(
    "chunk",
    [[], ["--chunk-size", "2"], ["--views-forward", "separate"]],
    ids=["one-forward", "chunked", "per-view"],
)
def test_torchrun_two_cpu_processes(tmp_path: Path, chunk: list[str]) -> None:
    """Two ranks; chunked, each rank forwards its share in chunks (gradient caching), gathers
    the embeddings once and all-reduces the gradients once per step; per view, each rank's
    model forwards the views one after the other inside one DDP forward."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fastclr",
        "pretrain",
        *_tiny_cli_args(out, steps=2),
        "--loss-backend",
        "reference",
        *chunk,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("done: 1 epochs, 2 steps") == 1  # rank 0 reports
    if "--chunk-size" in chunk:
        assert "chunk:       2 images per forward" in proc.stdout
    if "--views-forward" in chunk:
        assert "views:       separate forward (given)" in proc.stdout
    ckpt = load_checkpoint(out)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert ckpt["rng"][0]["python"] != ckpt["rng"][1]["python"]  # per-rank streams
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        CHECKPOINT_NAME,
        "epochs.csv",
        "loss.png",
        "steps.csv",
    ]
    rows = (out / "steps.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 steps, written once (rank 0)


def test_step_rates_reports_both_rates(monkeypatch: Any) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # the benchmark helper lives in bench/
    from train_bench import step_rates

    aug = _augment()
    r = step_rates(
        batch_size=16,
        image_size=8,
        width=0.125,
        steps=2,
        warmup_steps=1,
        augment=aug,
        loss_backend="reference",
    )
    for key in ("end_to_end_images_per_s", "model_only_images_per_s", "augment_only_images_per_s"):
        assert r[key] > 0
    assert r["ratio"] == pytest.approx(r["end_to_end_images_per_s"] / r["model_only_images_per_s"])
    assert r["precision"] == "fp32" and r["device"] == "cpu"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs_on_cpu(tmp_path: Path, small_digits: ImageData, precision: str) -> None:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    aug = SimCLRAugmentation(AugmentConfig.cifar(size=8, dtype=dtype), backend="torch", seed=0)
    cfg = _cfg(tmp_path, epochs=1, limit_steps=1, precision=precision)
    result = pretrain(cfg, augment=aug, data=small_digits)
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.last_loss))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["scaler"]["scale"] > 0 if precision == "fp16" else ckpt["scaler"] == {}
