"""``fastclr export``: the three formats, the command's output and errors, atomic writing, and the
README's example. The torchvision format against torchvision itself: test_export_torchvision.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fastclr
from fastclr.cli import main
from fastclr.downstream import export
from fastclr.models import ProjectionHead, ResNet, resnet

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, write_checkpoint: Callable[..., Path]) -> Path:
    """A CIFAR-stem ResNet-18 at width 1/8 with a BatchNorm head."""
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "c.pt", head_bn=True, seed=1)


@pytest.fixture(scope="module")
def full18(tmp_path_factory: pytest.TempPathFactory, write_checkpoint: Callable[..., Path]) -> Path:
    """A ResNet-18 torchvision has: width 1, ImageNet stem."""
    folder = tmp_path_factory.mktemp("full18")
    write_checkpoint(folder / "checkpoint.pt", "resnet18", "imagenet", 1.0, image_size=32, seed=2)
    return folder


# ------------------------------------------------------------------------------ torchvision


def test_torchvision_export_has_every_backbone_key_and_reports_fc(
    full18: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "r18.pt"
    assert (
        main(["export", "--checkpoint", str(full18), "--format", "torchvision", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    state = torch.load(out, weights_only=True)
    layout = ResNet("resnet18", "imagenet", num_classes=1000).state_dict()  # torchvision's names
    assert set(layout) - set(state) == {"fc.weight", "fc.bias"} and set(state) <= set(layout)
    assert f"wrote {out}" in printed
    assert f"matched: all {len(state)} backbone keys of torchvision.models.resnet18" in printed
    assert "absent:  fc.weight, fc.bias" in printed
    enc = fastclr.load_encoder(full18)
    for k, v in enc.state_dict().items():
        assert torch.equal(state[k], v) and state[k].is_contiguous(), k


@pytest.mark.parametrize(("stem", "width"), [("cifar", 1.0), ("imagenet", 0.5), ("cifar", 0.125)])
def test_torchvision_export_of_a_network_torchvision_lacks_is_refused(
    tmp_path: Path, write_checkpoint: Callable[..., Path], capsys: Any, stem: str, width: float
) -> None:
    path = write_checkpoint(tmp_path / "c.pt", "resnet18", stem, width)
    out = tmp_path / "x.pt"
    code = main(["export", "--checkpoint", str(path), "--format", "torchvision", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and f"stem={stem}, width={width:g}" in err
    assert "--format state-dict or --format torchscript" in err and "c.pt" in err


# ------------------------------------------------------------------------------ state-dict


def test_state_dict_export_rebuilds_encoder_and_head(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "sd.pt"
    result = export(tiny, "state-dict", out)
    payload = torch.load(out, weights_only=True)
    assert set(payload) == {"encoder", "head", "metadata"}
    meta = payload["metadata"]
    expected = {
        "arch": "resnet18",
        "stem": "cifar",
        "width": 0.125,
        "image_size": 16,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "proj_dim": 16,
        "head_bn": True,
        "feature_dim": 64,
    }
    assert {k: meta[k] for k in expected} == expected
    assert meta["head_layers"] == [
        "Linear(64, 64, bias=False)",
        "BatchNorm1d(64)",
        "ReLU",
        "Linear(64, 16)",
    ]
    encoder = resnet(meta["arch"], meta["stem"], width=meta["width"])
    encoder.load_state_dict(payload["encoder"])
    head = ProjectionHead(meta["feature_dim"], out_dim=meta["proj_dim"], batch_norm=True)
    head.load_state_dict(payload["head"])
    model = fastclr.load_simclr(tiny)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        h, z = model(x)
        torch.testing.assert_close(encoder.eval()(x), h)  # memory formats differ
        torch.testing.assert_close(head.eval()(h), z, rtol=0, atol=0)
    assert result.nbytes == out.stat().st_size


# ------------------------------------------------------------------------------ torchscript

#: Runs a TorchScript file in a Python where ``import fastclr`` fails: argv = file, input, output.
_WITHOUT_FASTCLR = """
import json, sys
sys.modules["fastclr"] = None  # any import of fastclr or its modules now raises ImportError
import torch
try:
    import fastclr
except ImportError:
    pass
else:
    raise SystemExit("fastclr is importable")
files = {"fastclr.json": ""}
if sys.argv[1].endswith(".pickle"):
    module = torch.load(sys.argv[1], weights_only=False)
else:
    module = torch.jit.load(sys.argv[1], _extra_files=files)
torch.save(module(torch.load(sys.argv[2])), sys.argv[3])
print(json.dumps(json.loads(files["fastclr.json"] or "{}")))
"""


def _run_without_fastclr(tmp: Path, module_file: Path, x: torch.Tensor) -> tuple[Any, Any]:
    torch.save(x, tmp / "x.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_FASTCLR,
            str(module_file),
            str(tmp / "x.pt"),
            str(tmp / "y.pt"),
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, (torch.load(tmp / "y.pt") if proc.returncode == 0 else None)


def test_torchscript_runs_without_fastclr_and_gives_load_encoders_features(
    tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "enc.ts"
    export(tiny, "torchscript", out)
    enc = fastclr.load_encoder(tiny)
    x = enc.preprocess(torch.randint(0, 256, (5, 3, 20, 16), dtype=torch.uint8))  # 5 ≠ traced 2
    proc, features = _run_without_fastclr(tmp_path, out, x.contiguous())
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        torch.testing.assert_close(features, enc(x))
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (meta["arch"], meta["image_size"], meta["mean"]) == ("resnet18", 16, [0.5, 0.4, 0.3])


def test_the_no_fastclr_python_really_lacks_fastclr(tiny: Path, tmp_path: Path) -> None:
    """Positive control: a pickled fastclr module cannot be loaded in that subprocess."""
    pickled = tmp_path / "enc.pickle"
    torch.save(fastclr.load_encoder(tiny), pickled)
    proc, _ = _run_without_fastclr(tmp_path, pickled, torch.zeros(1, 3, 16, 16))
    assert proc.returncode != 0
    assert "ModuleNotFoundError: No module named 'fastclr.downstream'" in proc.stderr


# ------------------------------------------------------------------------------ the command


def test_existing_out_is_kept_unless_overwrite(tiny: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "enc.pt"
    out.write_bytes(b"precious")
    argv = ["export", "--checkpoint", str(tiny), "--format", "state-dict", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --overwrite" in err and out.read_bytes() == b"precious"
    assert main([*argv, "--overwrite"]) == 0
    assert "wrote" in capsys.readouterr().out and set(torch.load(out, weights_only=True)) == {
        "encoder",
        "head",
        "metadata",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["enc.pt"]  # no temporary file left


def test_a_file_appearing_meanwhile_is_not_replaced(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "enc.pt"
    real_link = os.link

    def someone_else_writes_first(src: Any, dst: Any) -> None:
        Path(dst).write_bytes(b"theirs")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", someone_else_writes_first)
    with pytest.raises(ValueError, match="already exists"):
        export(tiny, "state-dict", out)
    assert out.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["enc.pt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = tmp_path / "enc.pt"
    out.write_bytes(b"old")

    def disk_full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    argv = ["export", "--checkpoint", str(tiny), "--format", "torchscript", "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["enc.pt"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--checkpoint", "{tmp}/missing", "--format", "state-dict", "--out", "{tmp}/o.pt"],
            "does not exist",
        ),
        (["--checkpoint", "{tiny}", "--format", "state-dict", "--out", "{tmp}"], "is a folder"),
        (
            ["--checkpoint", "{notes}", "--format", "torchscript", "--out", "{tmp}/o.pt"],
            "is not a fastclr checkpoint: it is a text file",
        ),
    ],
)
def test_command_errors_are_one_line_and_exit_2(
    tiny: Path, tmp_path: Path, capsys: Any, argv: list[str], expected: str
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    args = [a.format(tmp=tmp_path, tiny=tiny, notes=notes) for a in argv]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastclr export: error:") and expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_format_is_an_argparse_error(tiny: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        main(["export", "--checkpoint", str(tiny), "--format", "onnx", "--out", "x"])
    assert e.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ README


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Using your pretrained encoder")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_readme_example_runs(
    tmp_path: Path,
    write_checkpoint: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    section = _readme_section()
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert len(code.strip().splitlines()) <= 10
    write_checkpoint(tmp_path / "runs" / "simclr" / "checkpoint.pt", image_size=24)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("torch.Size([8, 64]) 24 (0.5, 0.4, 0.3)")
    commands = re.findall(r"^fastclr (export .*?)  #", section, re.M)
    assert len(commands) == 3
    for cmd in commands[:2]:  # the third needs a width-1 run (tested above)
        assert main(cmd.split()) == 0
    assert (
        main(["export", "--checkpoint", "runs/simclr", "--format", "torchvision", "--out", "x.pt"])
        == 2
    )
