"""The loaders inside ``fastclr pretrain``: the ``loader`` option, the ``auto`` rule, the log line,
and an exact mid-epoch resume with streamed batches. Tiny images and models: about 10 s in all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from fastclr.augment import AugmentConfig, SimCLRAugmentation
from fastclr.cli import main
from fastclr.data import DataPlan, plan_data
from fastclr.data.select import resolve_loader
from fastclr.optional import dali_available
from fastclr.train import TrainConfig, pretrain

TINY: dict[str, Any] = {
    "width": 0.125, "image_size": 8, "batch_size": 4, "log_every": 10, "progress": False,
    "stem": "cifar", "loader": "stream", "epochs": 1,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _folder(root: Path, width: int, height: int, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("photos"), 24, 18)  # 4:3, larger than the views


def _aug(seed: int = 0) -> SimCLRAugmentation:
    return SimCLRAugmentation(AugmentConfig.cifar(size=8), backend="torch", seed=seed)


def _weights(result: Any) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_auto_rule(tmp_path: Path, photos: Path) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    squares = _folder(tmp_path / "squares", 8, 8)
    digits, square_plan, photo_plan = (
        plan_data("digits"),
        plan_data(str(squares)),
        plan_data(str(photos)),
    )

    def loader(choice: str, data: DataPlan, size: int, device: torch.device) -> str:
        return resolve_loader(choice, data, size, device)[0]

    assert loader("auto", digits, 16, cpu) == "memory"
    assert loader("auto", square_plan, 8, cpu) == "memory"
    # larger than the views, or not square: decoding once would lose the original
    assert loader("auto", square_plan, 4, cpu) == "stream"
    assert loader("auto", photo_plan, 32, cpu) == "stream"
    want = "dali" if dali_available() else "stream"
    assert loader("auto", photo_plan, 32, cuda) == want
    with pytest.raises(ValueError, match="--loader stream streams image files"):
        loader("stream", digits, 16, cpu)
    with pytest.raises(ValueError, match="--loader must be one of"):
        TrainConfig(loader="disk").validate()  # type: ignore[arg-type]


def test_stream_run_logs_loader_and_monitors(
    tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = TrainConfig(**TINY, data=str(photos), out=str(tmp_path / "run"), limit_steps=2)
    result = pretrain(cfg, augment=_aug())
    header = capsys.readouterr().out  # the run header (fastclr/train/header.py)
    # 24 files, 1 per class held out for the monitor
    assert "images:      22 training images, 2 classes" in header
    assert "loader:      stream" in header
    assert "device:      cpu" in header and "precision:   fp32" in header
    assert result.global_step == 2 and result.knn_top1 is not None


def test_stream_resume_mid_epoch_is_bit_identical(
    tmp_path: Path, photos: Path, interrupt_at: Callable[[int], Any]
) -> None:
    """Interrupted after step 2 of 4, resumed (with decoding workers this time): same weights."""
    base = {**TINY, "data": str(photos), "limit_steps": 4}
    straight = _weights(pretrain(TrainConfig(**base, out=str(tmp_path / "a")), augment=_aug()))
    with pytest.raises(KeyboardInterrupt):
        pretrain(
            TrainConfig(**base, out=str(tmp_path / "b")), augment=_aug(), loss_fn=interrupt_at(2)
        )
    resumed = pretrain(
        TrainConfig(**base, out=str(tmp_path / "c"), resume=str(tmp_path / "b"), num_workers=2),
        augment=_aug(),
    )
    assert resumed.global_step == 4
    got = _weights(resumed)
    assert all(torch.equal(straight[k], got[k]) for k in straight)
    other = _weights(
        pretrain(TrainConfig(**base, out=str(tmp_path / "d"), seed=1), augment=_aug(1))
    )
    assert not all(torch.equal(straight[k], other[k]) for k in straight)


def test_cli_loader_option(
    tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pretrain", "--data", str(photos), "--loader", "stream", "--image-size", "8",
            "--batch-size", "4", "--width", "0.125", "--epochs", "1", "--limit-steps", "1",
            "--no-progress", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    assert "loader:      stream" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv[:3], "--loader", "disk"])
    assert "invalid choice: 'disk'" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_ranks_stream_a_folder(tmp_path: Path, photos: Path) -> None:
    """2 gloo ranks train from a streamed folder; only rank 0 decodes the kNN monitor's subset
    (the other rank must still meet it at the barrier: no hang). About 15 s."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fastclr", "pretrain", "--data", str(photos), "--loader", "stream",
           "--epochs", "1", "--limit-steps", "2", "--width", "0.125", "--image-size", "8",
           "--batch-size", "8", "--out", str(out), "--no-progress", "--loss-backend", "reference",
           "--num-workers", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stdout.count("loader:      stream") == 1  # the run header, from rank 0 only
    assert "done: 1 epochs, 2 steps" in proc.stdout and "kNN top-1 n/a" not in proc.stdout
