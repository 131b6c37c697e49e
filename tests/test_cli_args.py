"""Every ``fastclr pretrain`` argument is validated, zero and negative values included: one line on
stderr naming the flag, exit status 2, no traceback, nothing written. In-process (the subprocess
probes are in test_faults_cli.py); the refusals come before any data is loaded: about 2 s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastclr.cli import main

BAD: list[tuple[list[str], str]] = [
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-2"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "1"], "--batch-size must be >= 2"),
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

    def boom(cfg: object) -> None:
        raise TypeError("something broke inside")

    monkeypatch.setattr(fastclr.cli, "pretrain", boom)
    monkeypatch.delenv("FASTCLR_DEBUG", raising=False)
    assert main(["pretrain", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "unexpected TypeError: something broke inside" in err and "FASTCLR_DEBUG=1" in err
    assert "Traceback" not in err
    assert main(["pretrain", "--out", str(tmp_path / "r"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
