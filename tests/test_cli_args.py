"""Every ``fastclr pretrain`` argument is validated, zero and negative values included: one line on
stderr naming the flag, exit status 2, no traceback, nothing written. In-process (the subprocess
probes are in test_faults_cli.py); the refusals come before any data is loaded: about 2 s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fastclr.cli import main

BAD: list[tuple[list[str], str]] = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-2"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "1"], "--batch-size must be an integer >= 2, got 1: with one image"),
    (["--batch-size", "-8"], "--batch-size"),
    (["--image-size", "0"], "--image-size"),
    (["--image-size", "-1"], "--image-size"),
    (["--width", "0"], "--width"),
    (["--width", "-0.5"], "--width"),
    (["--width", "nan"], "--width"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--weight-decay=-1e-6"], "--weight-decay"),
    (["--warmup-epochs", "-1"], "--warmup-epochs"),
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "-0.5"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--limit-steps", "0"], "--limit-steps"),
    (["--stop-after-epochs", "0"], "--stop-after-epochs"),
    (["--log-every", "0"], "--log-every"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "-3"], "--threads"),
    (["--device", "gpu"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--loss-backend", "triton", "--device", "cpu"], "--loss-backend triton"),
    (["--augment-backend", "triton", "--device", "cpu"], "--augment-backend triton"),
    (["--resume", "/nonexistent/run", "--out", "{out}"], "does not exist"),
    (["--overwrite", "--resume", "{out}"], "--resume and --overwrite"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_argument_is_refused_by_name(
    args: list[str],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "cuda" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FASTCLR_DEBUG", raising=False)
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), *(a.replace("{out}", str(out)) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), "nothing is written for a refused run"


def test_unknown_choice_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--precision", "fp8"])
    assert e.value.code == 2 and "--precision" in capsys.readouterr().err


def test_internal_errors_say_how_to_get_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import fastclr.cli

    def boom(cfg: object, **kw: object) -> None:
        raise TypeError("something broke inside")

    monkeypatch.setattr(fastclr.cli, "pretrain", boom)
    monkeypatch.delenv("FASTCLR_DEBUG", raising=False)
    assert main(["pretrain", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "unexpected TypeError: something broke inside" in err and "FASTCLR_DEBUG=1" in err
    assert "Traceback" not in err
    assert main(["pretrain", "--out", str(tmp_path / "r"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


# ---- linear-eval ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, write_checkpoint: Callable[..., Path]
) -> Path:
    """A valid checkpoint of an untrained 1/8-width ResNet-18 (evaluation reads nothing else)."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", image_size=8)


def _folder(root: Path, classes: list[str], per_class: int = 4) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        d = root / c if c else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = torch.randint(0, 256, (10, 10, 3), dtype=torch.uint8, generator=g).numpy()
            Image.fromarray(px).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("classes", "needle"),
    [
        (["cat"], "needs at least two classes to tell apart, and {root} has one ('cat')"),
        ([""], "needs labelled images, and {root} has no class subfolders"),
    ],
    ids=["one-class", "flat"],
)
def test_linear_eval_says_what_it_needs(
    classes: list[str],
    needle: str,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = _folder(tmp_path / "data", classes)
    assert main(["linear-eval", "--checkpoint", str(tiny_checkpoint), "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert needle.format(root=root) in err and "Traceback" not in err


def test_linear_eval_shows_progress_and_runs_on_two_classes(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data", ["a", "b"])
    assert main(["linear-eval", "--checkpoint", str(tiny_checkpoint), "--data", str(root)]) == 0
    out = capsys.readouterr()
    assert "features (train)" in out.err and "linear probe" in out.err  # the tqdm bars
    assert "linear top-1" in out.out
    argv = ["linear-eval", "--checkpoint", str(tiny_checkpoint), "--data", str(root)]
    assert main([*argv, "--no-progress"]) == 0
    assert "features (train)" not in capsys.readouterr().err


def test_linear_eval_defaults_to_the_data_the_run_was_pretrained_on(
    tmp_path: Path, write_checkpoint: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data", ["a", "b"])
    ck = write_checkpoint(tmp_path / "ck.pt", image_size=8, data=str(root))
    assert main(["linear-eval", "--checkpoint", str(ck), "--no-progress"]) == 0
    header = capsys.readouterr().out
    assert f"data:       {root}: 6 train / 2 held-out images" in header
    assert "(what the run was pretrained on; --data to choose)" in header
    assert main(["linear-eval", "--checkpoint", str(ck), "--data", "digits", "--no-progress"]) == 0
    header = capsys.readouterr().out
    assert "digits: 1,438 train" in header and "pretrained on" not in header


@pytest.mark.parametrize("recorded", ["gone", None], ids=["folder-gone", "not-recorded"])
def test_linear_eval_without_data_says_what_to_pass(
    recorded: str | None,
    tmp_path: Path,
    write_checkpoint: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = None if recorded is None else str(tmp_path / recorded)
    ck = write_checkpoint(tmp_path / "ck.pt", image_size=8, data=data)
    assert main(["linear-eval", "--checkpoint", str(ck), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "--data:" in lines[0] and "Traceback" not in err
    want = f"was pretrained on {data}, which is not a folder here" if data else "does not record"
    assert want in lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--knn-k", "0"], "--knn-k"),
        (["--knn-temperature", "0"], "--knn-temperature"),
        (["--num-workers", "-1"], "--num-workers"),
        (["--device", "gpu"], "--device"),
    ],
)
def test_linear_eval_arguments_are_checked(
    args: list[str], needle: str, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["linear-eval", "--checkpoint", str(tiny_checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["text", "png", "pickled-module"])
def test_linear_eval_on_foreign_files(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"x.{kind}"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "png":
        _folder(tmp_path / "img", ["c"], per_class=1)
        path = tmp_path / "img" / "c" / "0.png"
    else:
        torch.save(torch.nn.Linear(2, 2), path)
    assert main(["linear-eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and str(path) in lines[0] and "not a fastclr checkpoint" in lines[0]
    assert "KeyError" not in err and "Weights only" not in err and "Traceback" not in err


def test_library_warnings_are_one_line_with_one_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library warning already names fastclr; the CLI's format prints the name once, on one
    line (pytest records warnings itself, so the format main installs is called directly)."""
    import warnings

    import fastclr.cli as cli

    shown: list[str] = []

    def warns(args: object) -> int:
        for text in ("fastclr: skipping unreadable image a.jpg (empty)", "another library's"):
            shown.append(warnings.formatwarning(text, RuntimeWarning, "f.py", 1, "line"))
        return 0

    monkeypatch.setattr(cli, "_run_eval", warns)
    assert main(["linear-eval", "--checkpoint", "run"]) == 0
    assert shown == [
        "fastclr: warning: skipping unreadable image a.jpg (empty)\n",
        "fastclr: warning: another library's\n",
    ]


def test_an_upper_bound_on_a_number_is_checked_from_the_metadata() -> None:
    import dataclasses

    from fastclr.errors import UsageError
    from fastclr.options import check_options, option

    @dataclasses.dataclass
    class Opts:
        fraction: float = option(0.5, "a fraction", positive=True, at_most=1)
        share: float = option(0.5, "a share", non_negative=True, at_most=1)
        level: float = option(0.5, "a level", at_most=1)

    check_options(Opts(1.0, 0.0, -3.0))  # the bound itself is accepted
    for field, bad, rule in (
        ("fraction", 1.5, "> 0 and <= 1"),
        ("fraction", 0.0, "> 0 and <= 1"),
        ("share", 1.01, ">= 0 and <= 1"),
        ("level", 2.0, "a finite number <= 1"),
    ):
        with pytest.raises(UsageError, match=f"--{field} must be .*{rule}"):
            check_options(dataclasses.replace(Opts(), **{field: bad}))
