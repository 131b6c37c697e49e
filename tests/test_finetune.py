"""``fastclr finetune`` end to end: header and last line, logs and curves, the labelled subset's
file list, resume, overwrite, the classifier it leaves, and one clear message for bad input.

Runs use a ResNet-18 at width 1/8 on 8-px views (a seeded random "pretrained" checkpoint from the
``write_checkpoint`` fixture) and folders of a few dozen 12-px PNGs, so each run takes a second
or two.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fastclr
from fastclr.checkpoint import load_checkpoint
from fastclr.cli import main
from fastclr.finetune import SUBSET_FILE, read_subset

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("ant", "bee", "cat")
TINY = ["--epochs", "2", "--no-progress", "--log-every", "1", "--num-workers", "0"]


def _png(path: Path, cls: int, i: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(100 * cls + i)
    img = rng.integers(0, 60, (12, 12, 3), dtype=np.uint8)
    img[..., cls] += 150  # the class is the dominant channel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _folder(root: Path, per_class: int = 12, val: int = 0) -> Path:
    """``root/<class>/`` (or ``root/train`` + ``root/val`` when ``val``) of 12-px PNGs."""
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            sub = root / "train" / name if val else root / name
            _png(sub / f"{i:03d}.png", c, i)
        for i in range(val):
            _png(root / "val" / name / f"v{i:03d}.png", c, 1000 + i)
    return root


@pytest.fixture
def ckpt(tmp_path: Path, write_checkpoint: Callable[..., Path]) -> Path:
    return write_checkpoint(tmp_path / "pre.pt", image_size=8, head_bn=True)


def _run(args: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main(["finetune", *args])
    got = capsys.readouterr()
    return code, got.out, got.err


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ end to end


def test_cli_end_to_end(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    data, out = _folder(tmp_path / "data"), tmp_path / "ft"
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "4-per-class"]
    code, printed, err = _run([*args, *TINY, "--out", str(out)], capsys)
    assert code == 0, err
    lines = printed.strip().splitlines()
    assert re.fullmatch(r"top-1 \d{1,3}\.\d\d%", lines[-1]), lines[-1]
    header = dict(line.strip().split(":", 1) for line in lines if line.startswith("  "))
    assert "--labels 4-per-class, --seed 0" in header["labelled"]
    assert "12 of 33 training images" in header["labelled"]  # 3 of 36 held out
    assert "the checkpoint's" in header["network"] and "pretrained" in header["weights"]
    assert "LARS at 1 (trust ratio 0.001)" in header["optimizer"]
    assert "the default" in header["optimizer"] and "no warm-up" in header["schedule"]
    assert "10% of each class held out" in header["validation"]
    steps, epochs = _rows(out / "steps.csv"), _rows(out / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    assert len(steps) == 2 * int(header["steps"].split()[0])
    last = float(epochs[-1]["top1"])
    assert lines[-1] == f"top-1 {last:.2%}"
    assert 0 <= float(epochs[-1]["top1"]) <= float(epochs[-1]["top5"]) == 1.0  # 3 classes
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ck = load_checkpoint(out)
    assert ck["kind"] == "finetune" and ck["classifier"]["classes"] == list(CLASSES)
    assert ck["accuracy"]["top1"] == pytest.approx(last)
    # a fine-tuning run is neither a pretraining run to resume nor one to fine-tune
    assert main(["pretrain", "--resume", str(out), "--no-progress"]) == 2
    assert "is a fine-tuning run" in capsys.readouterr().err
    code, _, err = _run(
        [*args, *TINY, "--out", str(tmp_path / "again"), "--checkpoint", str(out)], capsys
    )
    assert code == 2 and "is a fine-tuning run; pass the pretraining run" in err


def test_the_classifier_is_usable_afterwards(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    data, out = _folder(tmp_path / "data", val=3), tmp_path / "ft"
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "100%"]
    assert _run([*args, *TINY, "--out", str(out), "--from-head-layer", "1"], capsys)[0] == 0
    clf = fastclr.load_classifier(out)
    assert not clf.training and clf.classes == list(CLASSES) and clf.head_layer == 1
    from PIL import Image

    files = sorted((data / "val").rglob("*.png"))
    images = [Image.open(f) for f in files]
    with torch.no_grad():
        logits = clf(clf.preprocess(images))
    assert logits.shape == (9, 3)
    predicted = [clf.classes[i] for i in logits.argmax(1)]
    top1 = np.mean([p == f.parent.name for p, f in zip(predicted, files, strict=True)])
    assert float(_rows(out / "epochs.csv")[-1]["top1"]) == pytest.approx(top1)
    # the fine-tuned encoder, for load_encoder / linear-eval / export
    enc = fastclr.load_encoder(out)
    with torch.no_grad():
        assert torch.allclose(enc(clf.preprocess(images)), clf.encoder(clf.preprocess(images)))
    with pytest.raises(fastclr.checkpoint.CheckpointError, match="pretraining run's"):
        fastclr.load_classifier(ckpt)
    # a classifier record missing its class names is named, not a KeyError
    state = fastclr.checkpoint.load_checkpoint(out / "checkpoint.pt")
    del state["classifier"]["classes"]
    fastclr.checkpoint.save_checkpoint_atomic(state, tmp_path / "broken.pt")
    with pytest.raises(fastclr.checkpoint.CheckpointError, match="malformed fine-tuning record"):
        fastclr.load_classifier(tmp_path / "broken.pt")


def test_readme_classifier_example_runs(
    tmp_path: Path, ckpt: Path, capsys: Any, monkeypatch: Any
) -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Fine-tuning with a few labels") :]
    code = next(
        c for c in re.findall(r"```python\n(.*?)```", section, re.S) if "load_classifier" in c
    )
    data = _folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", str(ckpt), "--data", "data", "--labels", "4-per-class"]
    assert _run([*args, *TINY, "--epochs", "1", "--out", "runs/ft-1pct"], capsys)[0] == 0
    images = torch.randint(0, 256, (5, 3, 20, 16), dtype=torch.uint8)
    scope: dict[str, Any] = {"fastclr": fastclr, "torch": torch, "images": images}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["predicted"]) == 5 and set(scope["predicted"]) <= set(CLASSES)
    assert data.is_dir()


# ------------------------------------------------------------------------------ the split


@pytest.mark.parametrize("layout", ["held-out", "train+val", "digits"])
def test_validation_never_holds_a_labelled_image(tmp_path: Path, layout: str) -> None:
    from fastclr.finetune.config import FinetuneConfig
    from fastclr.finetune.plan import plan_finetune, training_ids

    if layout == "digits":
        data = "digits"
    else:
        data = str(_folder(tmp_path / "d", per_class=20, val=4 if layout == "train+val" else 0))
    cfg = FinetuneConfig(checkpoint="x", data=data, labels="100%")
    source = _source()
    plan = plan_finetune(cfg, source)
    ids, _ = training_ids(plan.data)
    labelled = {ids[i] for i in plan.labelled}
    assert len(labelled) == plan.data.n_train  # 100%: every training image
    if plan.data.memory is not None:
        held = plan.data.memory.heldout
        assert held is not None and len(held) == 359
        return  # digits: a fixed split of distinct images (tests/test_train.py)
    assert plan.data.heldout is not None and plan.data.train is not None
    val = {plan.data.heldout.files[i] for i in range(len(plan.data.heldout))}
    train = {plan.data.train.files[i] for i in plan.labelled}
    assert val and not (val & train)


def _source() -> Any:
    from fastclr.downstream.load import RunInfo

    return RunInfo("pre.pt", "resnet18", "cifar", 0.125, 16, True, 8, (0.5,) * 3, (0.2,) * 3, 1, 9)


def test_the_subset_file_is_written_and_reused(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    data = _folder(tmp_path / "data", per_class=20, val=2)
    common = ["--checkpoint", str(ckpt), "--data", str(data), *TINY, "--epochs", "1"]
    assert (
        _run([*common, "--labels", "10%", "--seed", "3", "--out", str(tmp_path / "a")], capsys)[0]
        == 0
    )
    listed = read_subset(tmp_path / "a" / SUBSET_FILE)
    assert (listed.labels, listed.seed, len(listed.rows)) == ("10%", 3, 6)
    assert all(not i.startswith("v") and "/" in i for i, _ in listed.rows)  # train images
    sub = ["--subset", str(tmp_path / "a"), "--out", str(tmp_path / "b")]
    assert _run([*common, *sub], capsys)[0] == 0
    again = read_subset(tmp_path / "b" / SUBSET_FILE)
    assert again.rows == listed.rows


def test_the_crop_decision_and_runs_planned_before_it(
    tmp_path: Path, ckpt: Path, capsys: Any
) -> None:
    from fastclr.augment.presets import preset_config
    from fastclr.finetune.data import augment_config
    from fastclr.finetune.plan import plan_finetune

    data = _folder(tmp_path / "data")
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "4-per-class", *TINY]
    out, mild = tmp_path / "ft", tmp_path / "mild"
    code, printed, err = _run([*args, "--out", str(out), "--stop-after-epochs", "1"], capsys)
    assert code == 0, err
    # small-grey: 8-px views fine-tune on milder crops than the preset's 0.3 to 1
    assert "crop:        area 0.8 to 1 (8-px views < 32: milder than the pretraining" in printed
    assert "preset's 0.3 to 1;" in printed
    code, printed, err = _run([*args, "--out", str(mild), "--crop-min", "0.5"], capsys)
    assert code == 0 and "area 0.5 to 1 (given (--crop-min))" in printed, err
    mild_plan = load_checkpoint(mild)["plan"]
    assert mild_plan["crop"]["value"] == [0.5, 1.0]
    # a run planned before the crop was a decision resumes with its preset's crop
    state = load_checkpoint(out)
    del state["plan"]["crop"]
    fastclr.checkpoint.save_checkpoint_atomic(state, out / "checkpoint.pt")
    plan = plan_finetune(
        fastclr.finetune.FinetuneConfig(resume=str(out), data=str(data), crop_min=0.8),
        None,
        saved=state["plan"],
        labelled_file=str(out / SUBSET_FILE),
    )
    assert plan.crop is None and "crop" not in plan.decisions
    assert augment_config(plan).scale == preset_config(plan.preset, plan.image_size).scale
    code, printed, err = _run(["--resume", str(out), "--no-progress"], capsys)
    assert code == 0 and "crop:" not in printed, err


def test_crop_rule_is_milder_only_under_32_px() -> None:
    """Fine-tuning's crop: 0.8 to 1 below the small presets' 32 px, the preset's from there on,
    a given --crop-min always."""
    from fastclr.finetune.recipe import SMALL_CROP_MIN, crop_scale

    assert crop_scale(28, (0.3, 1.0), None)[0] == (SMALL_CROP_MIN, 1.0)
    assert crop_scale(31, (0.3, 1.0), None)[0] == (SMALL_CROP_MIN, 1.0)
    assert crop_scale(32, (0.08, 1.0), None)[0] == (0.08, 1.0)
    assert crop_scale(224, (0.08, 1.0), None)[0] == (0.08, 1.0)
    assert crop_scale(28, (0.3, 1.0), 0.5) == ((0.5, 1.0), "given (--crop-min)")


def _update_norms(clf: torch.nn.Module, step: Callable[[], None]) -> dict[str, float]:
    """‖Δw‖ / ‖w‖ of every conv weight over one call of ``step``."""
    before = {n: p.detach().clone() for n, p in clf.named_parameters() if p.dim() == 4}
    step()
    named = {n: p.detach() for n, p in clf.named_parameters()}
    return {n: float((named[n] - w).norm() / w.norm()) for n, w in before.items()}


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_the_optimiser_moves_each_layer_as_it_says(
    tmp_path: Path, ckpt: Path, optimizer: str
) -> None:
    """With LARS a step moves every conv weight by lars_lr x 0.001 of its norm (plus momentum)
    and the classifier by plain SGD; the paper's SGD moves layers by their gradients (not all
    alike)."""
    from fastclr.downstream.load import read_run
    from fastclr.finetune.plan import plan_finetune
    from fastclr.finetune.state import build_optimizer
    from fastclr.models import Classifier

    data = _folder(tmp_path / "data")
    cfg = fastclr.finetune.FinetuneConfig(
        checkpoint=str(ckpt), data=str(data), labels="4-per-class", optimizer=optimizer
    )
    plan = plan_finetune(cfg, read_run(str(ckpt))[0])
    torch.manual_seed(0)
    clf = Classifier(plan.architecture.build(), 0, 3)
    opt = build_optimizer(clf, plan, cfg.momentum, cfg.weight_decay)
    names = {id(p): n for n, p in clf.named_parameters()}
    assert sorted(names[id(p)] for g in opt.param_groups for p in g["params"]) == sorted(
        n for n, _ in clf.named_parameters()
    )  # every parameter once
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()

    step()  # the classifier starts at zero: one step gives the encoder a gradient
    moved = _update_norms(clf, step)
    if optimizer == "lars":
        assert plan.lars_lr == 1.0 and [g["lars"] for g in opt.param_groups] == [False, True]
        assert {n for n in names.values() if n.startswith("fc.")} <= {
            names[id(p)] for p in opt.param_groups[0]["params"]
        }
        # the second step adds momentum 0.9 of the first: 1.9 x lr x eta at most
        assert all(1e-3 * 0.1 <= r <= 1e-3 * 1.9 + 1e-6 for r in moved.values()), moved
    else:
        assert plan.lars_lr is None and isinstance(opt, torch.optim.SGD)
        assert max(moved.values()) > 3 * min(moved.values()), moved


def test_a_run_planned_before_the_optimiser_choice_resumes_with_sgd(
    tmp_path: Path, ckpt: Path, capsys: Any
) -> None:
    data = _folder(tmp_path / "data")
    out = tmp_path / "ft"
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "4-per-class", *TINY]
    code, printed, err = _run(
        [*args, "--out", str(out), "--optimizer", "sgd", "--stop-after-epochs", "1"], capsys
    )
    assert code == 0 and "SGD, Nesterov momentum 0.9, no weight decay (given" in printed, err
    code, _, err = _run([*args, "--out", str(tmp_path / "o2"), "--stop-after-epochs", "1"], capsys)
    state = load_checkpoint(tmp_path / "o2")
    assert code == 0 and state["plan"]["optimizer"]["value"]["name"] == "lars", err
    # what a run planned before the choice holds: a sentence, and no such options
    state = load_checkpoint(out)
    state["plan"]["optimizer"]["value"] = "SGD, Nesterov momentum 0.9, no weight decay"
    for key in ("optimizer", "lars_lr"):
        state["config"].pop(key)
    fastclr.checkpoint.save_checkpoint_atomic(state, out / "checkpoint.pt")
    code, printed, err = _run(["--resume", str(out), "--no-progress"], capsys)
    assert code == 0 and "optimizer:   SGD, Nesterov momentum 0.9, no weight decay" in printed, err
    assert "planned when SGD was the only optimiser" in printed
    resumed = load_checkpoint(out)["plan"]["optimizer"]["value"]
    assert resumed["name"] == "sgd" and resumed["lars_lr"] is None


# ------------------------------------------------------------------------------ resume


def test_resume_is_bit_identical_and_overwrite_replaces(
    tmp_path: Path, ckpt: Path, capsys: Any
) -> None:
    data = _folder(tmp_path / "data")
    common = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "6-per-class"]
    common += [*TINY, "--epochs", "3", "--batch-size", "6"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run([*common, "--out", str(a)], capsys)[0] == 0
    assert _run([*common, "--out", str(b), "--stop-after-epochs", "1"], capsys)[0] == 0
    code, printed, _ = _run(["--resume", str(b), "--no-progress"], capsys)
    assert code == 0 and "resuming" in printed
    ka, kb = load_checkpoint(a), load_checkpoint(b)
    for key in ka["model"]:
        assert torch.equal(ka["model"][key], kb["model"][key]), key
    assert torch.equal(ka["classifier"]["fc"]["weight"], kb["classifier"]["fc"]["weight"])
    assert _rows(a / "epochs.csv") != [] and [
        (r["epoch"], r["loss"], r["top1"]) for r in _rows(a / "epochs.csv")
    ] == [(r["epoch"], r["loss"], r["top1"]) for r in _rows(b / "epochs.csv")]
    # a different seed gives other weights: the comparison above can fail
    assert _run([*common, "--out", str(tmp_path / "c"), "--seed", "1"], capsys)[0] == 0
    kc = load_checkpoint(tmp_path / "c")
    assert not torch.equal(ka["classifier"]["fc"]["weight"], kc["classifier"]["fc"]["weight"])
    # the folder holds a run: refused, then replaced with --overwrite
    code, _, err = _run([*common, "--out", str(a)], capsys)
    assert code == 2 and "already holds a run" in err
    code, printed, _ = _run([*common, "--out", str(a), "--overwrite", "--epochs", "1"], capsys)
    assert code == 0 and len(_rows(a / "epochs.csv")) == 1
    code, printed, _ = _run(["--resume", str(a), "--no-progress"], capsys)
    assert code == 0 and "already finished" in printed and printed.strip().endswith("%")


def test_ctrl_c_mid_epoch_checkpoints_and_resumes_identically(
    tmp_path: Path, ckpt: Path, capsys: Any, monkeypatch: Any
) -> None:
    import os
    import signal

    import fastclr.finetune.loop as loop

    data = _folder(tmp_path / "data")
    common = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "6-per-class"]
    common += [*TINY, "--batch-size", "6"]  # 3 steps an epoch, 2 epochs
    assert _run([*common, "--out", str(tmp_path / "a")], capsys)[0] == 0
    calls = {"n": 0}
    one_view = loop.one_view

    def interrupt_at_fifth_step(augment: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return one_view(augment, batch)

    monkeypatch.setattr(loop, "one_view", interrupt_at_fifth_step)
    code, _, err = _run([*common, "--out", str(tmp_path / "b")], capsys)
    assert code == 130 and "interrupted" in err
    ck = load_checkpoint(tmp_path / "b")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 2, 5)
    monkeypatch.undo()
    assert _run(["--resume", str(tmp_path / "b"), "--no-progress"], capsys)[0] == 0
    ka, kb = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key in ka["model"]:
        assert torch.equal(ka["model"][key], kb["model"][key]), key
    logged = [
        [(r["global_step"], r["loss"], r["lr"]) for r in _rows(tmp_path / run / "steps.csv")]
        for run in ("a", "b")
    ]
    assert logged[0] == logged[1] and len(logged[0]) == 6  # every step once, in order


def test_resume_notices_changed_data_and_not_the_working_directory(
    tmp_path: Path, ckpt: Path, capsys: Any, monkeypatch: Any
) -> None:
    data = _folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["--checkpoint", str(ckpt), "--data", "data", "--labels", "4-per-class", *TINY]
    args += ["--epochs", "3"]
    assert _run([*args, "--out", "run", "--stop-after-epochs", "1"], capsys)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative --data was stored as the folder it named
    code, _, err = _run(["--resume", str(tmp_path / "run"), "--stop-after-epochs", "1"], capsys)
    assert code == 0, err
    _png(data / "ant" / "new.png", 0, 99)
    code, _, err = _run(["--resume", str(tmp_path / "run")], capsys)
    assert code == 2 and "is not the data the checkpoint was fine-tuned on" in err


def test_a_diverging_run_stops_with_exit_1(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    data = _folder(tmp_path / "data")
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "6-per-class"]
    code, _, err = _run([*args, *TINY, "--lr", "1e30", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "NaN or Inf" in err and "Lower --lr" in err, err


# ------------------------------------------------------------------------------ bad input


BAD: list[tuple[list[str], str]] = [
    (["--labels", "0%"], "more than 0% and at most 100%"),
    (["--labels", "150%"], "at most 100%"),
    (["--labels", "1%"], r"fewer than the 3 classes"),
    (["--labels", "20-per-class"], "has only 11 training image"),
    (["--labels", "10%", "--arch", "resnet50"], "not the --arch resnet50"),
    (["--labels", "10%", "--from-head-layer", "3"], "beyond the projection head, which has 2"),
    (["--labels", "10%", "--batch-size", "99"], "larger than the 3 labelled"),
    ([], "--labels is required"),
    (["--labels", "10%", "--subset", "x.txt"], "pass one of them"),
    (["--labels", "10%", "--optimizer", "sgd", "--lars-lr", "2"], "does not use LARS"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_input_is_one_message_and_exit_2(
    tmp_path: Path, ckpt: Path, capsys: Any, extra: list[str], message: str
) -> None:
    data = _folder(tmp_path / "data")
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "o")]
    code, _, err = _run([*args, *extra, "--no-progress"], capsys)
    assert code == 2, err
    assert re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--lr", "0"],
        ["--lr", "nan"],
        ["--momentum", "1"],
        ["--weight-decay=-1"],
        ["--from-head-layer=-1"],
        ["--seed=-1"],
        ["--num-workers=-1"],
        ["--crop-min", "0"],
        ["--crop-min", "1.5"],
        ["--lars-lr", "0"],
        ["--lars-lr", "inf"],
    ],
)
def test_bad_numbers_are_refused_by_name(flags: list[str], capsys: Any) -> None:
    code, _, err = _run(["--checkpoint", "x", "--labels", "1%", *flags], capsys)
    assert code == 2 and flags[0].split("=")[0] in err and "Traceback" not in err


def test_an_unknown_optimiser_is_refused_by_argparse(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        _run(["--checkpoint", "x", "--labels", "1%", "--optimizer", "adam"], capsys)
    assert e.value.code == 2 and "--optimizer: invalid choice" in capsys.readouterr().err


def test_a_flag_per_config_field_with_its_default_once() -> None:
    import argparse
    import dataclasses

    from fastclr.cli import build_parser
    from fastclr.finetune.config import FinetuneConfig

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["finetune"]
    options = {a.dest for a in parser._actions if a.dest not in ("help", "debug")}
    assert options == {f.name for f in dataclasses.fields(FinetuneConfig)}
    text = " ".join(parser.format_help().split())
    assert "--from-head-layer FROM_HEAD_LAYER" in text and "None" not in text
    assert "(default: required unless --resume)" in text


def test_unreadable_labelled_images_are_named_not_a_crash(
    tmp_path: Path, ckpt: Path, capsys: Any
) -> None:
    data = _folder(tmp_path / "data")
    for f in sorted(data.rglob("*.png"))[:6]:
        f.write_bytes(b"not a png")
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "100%", "--loader"]
    args += ["memory", "--batch-size", "30", "--out", str(tmp_path / "o"), *TINY]
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        code, _, err = _run(args, capsys)
    assert code == 2 and "of the 33 labelled images could be read" in err.splitlines()[-1]


def test_other_refusals(tmp_path: Path, ckpt: Path, capsys: Any) -> None:
    data = _folder(tmp_path / "data", val=2)
    (data / "val" / "dog").mkdir()
    _png(data / "val" / "dog" / "d.png", 0, 0)
    args = ["--checkpoint", str(ckpt), "--labels", "10%", "--no-progress"]
    code, _, err = _run([*args, "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "different class subfolders" in err
    code, _, err = _run(["--resume", str(ckpt), "--no-progress"], capsys)
    assert code == 2 and "not a fine-tuning run's" in err


# ------------------------------------------------------------------------------ streaming, DDP


def _val_top1(out: Path, data: Path) -> float:
    """Top-1 of the run's saved classifier on ``data/val``, computed here in one process."""
    from PIL import Image

    clf = fastclr.load_classifier(out)
    files = sorted((data / "val").rglob("*.png"))
    with torch.no_grad():
        pred = clf(clf.preprocess([Image.open(f) for f in files])).argmax(1)
    return float(
        np.mean([clf.classes[p] == f.parent.name for p, f in zip(pred, files, strict=True)])
    )


def test_streamed_labelled_images_and_validation(
    tmp_path: Path, ckpt: Path, capsys: Any, monkeypatch: Any
) -> None:
    """Labelled crops streamed from the files (drawn on the original 12-px images), validation
    streamed at every evaluation (the in-memory limit set to nothing)."""
    import fastclr.finetune.plan as plan_module

    monkeypatch.setattr(plan_module, "fits_in_memory", lambda n, size: False)
    data, out = _folder(tmp_path / "data", val=2), tmp_path / "ft"
    args = ["--checkpoint", str(ckpt), "--data", str(data), "--labels", "4-per-class"]
    code, printed, err = _run([*args, *TINY, "--out", str(out), "--loader", "stream"], capsys)
    assert code == 0, err
    assert "loader:      stream (given)" in printed and "streamed from the files" in printed
    assert float(_rows(out / "epochs.csv")[-1]["top1"]) == pytest.approx(_val_top1(out, data))


def test_torchrun_two_cpu_processes(tmp_path: Path, ckpt: Path, free_port: Any) -> None:
    """DDP on 2 gloo processes: one printed result, files written once, and the validation
    accuracy summed over the ranks' shares equals the saved classifier's on all of val/."""
    import os
    import subprocess
    import sys

    data, out = _folder(tmp_path / "data", val=3), tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    cmd += ["--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "fastclr"]
    cmd += ["finetune", "--checkpoint", str(ckpt), "--data", str(data)]
    cmd += ["--labels", "6-per-class", "--batch-size", "6", *TINY, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("top-1 ") == 3  # two epoch lines and the last line, from rank 0
    assert "2 ranks" in proc.stdout
    ck = load_checkpoint(out)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert len(_rows(out / "steps.csv")) == 2 * 3  # 18 labelled / batch 6, written once
    assert float(_rows(out / "epochs.csv")[-1]["top1"]) == pytest.approx(_val_top1(out, data))
