"""``fastclr pretrain --chunk-size``: exact large batches through the training loop.

The library function (:func:`fastclr.contrastive_backward`) is tested against full-batch steps
and DDP ranks in test_gradcache*.py; here, the run: a chunk as large as the batch is the plain
step bit for bit, a chunked run resumes bit-identically, the chunk is the run's and refused if
changed on resume, bad values are refused by name, and the header states the contrastive batch,
the chunk and the expected peak memory. Tiny runs: about 20 s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from fastclr.checkpoint import load_checkpoint
from fastclr.cli import main
from fastclr.errors import UsageError
from fastclr.train import TrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


def _losses(result: Any) -> list[float]:
    return [h["loss"] for h in result.history]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(out)["model"].items() if v.is_floating_point()}


def test_a_chunk_as_large_as_the_batch_is_the_plain_step(tmp_path: Path, tiny_run: Any) -> None:
    plain = pretrain(tiny_run(tmp_path / "a"))
    whole = pretrain(tiny_run(tmp_path / "b", chunk_size=16))
    assert _losses(whole) == _losses(plain)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_chunked_run_resumes_bit_identically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_run: Any
) -> None:
    straight = pretrain(tiny_run(tmp_path / "a", chunk_size=4))
    out = tmp_path / "b"
    pretrain(tiny_run(out, chunk_size=4, stop_after_epochs=1))
    resumed = pretrain(tiny_run(out, chunk_size=4, resume=str(out)))
    assert resumed.global_step == straight.global_step
    wa, wb = _weights(tmp_path / "a"), _weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_checkpoint(out)["plan"]["chunk"]["value"] == 4
    capsys.readouterr()
    argv = ["pretrain", "--out", str(out), "--resume", "--epochs", "3", "--chunk-size", "8"]
    assert main(argv) == 2
    assert "--chunk-size 8 differs from the 4" in capsys.readouterr().err


def test_the_header_states_batch_chunk_and_peak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_run: Any
) -> None:
    pretrain(tiny_run(tmp_path / "a", chunk_size=4, epochs=1))
    header = capsys.readouterr().out
    line = next(ln for ln in header.splitlines() if ln.strip().startswith("chunk:"))
    assert "4 images per forward" in line and "whole batch of 16" in line
    assert "4 forwards of 4 per rank" in line and "expected peak" in line
    pretrain(tiny_run(tmp_path / "b", chunk_size="auto", epochs=1))
    line = next(
        ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("chunk:")
    )
    assert "auto: the largest that fits" in line


@pytest.mark.parametrize("bad", [0, -3, "3.5", "many", True])
def test_bad_chunk_sizes_are_refused_by_name(bad: object, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--chunk-size must be a whole number >= 1 or auto"):
        TrainConfig(out=str(tmp_path), chunk_size=bad).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["0", "-3", "3.5", "many"])
def test_bad_chunk_sizes_on_the_command_line(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--out", str(tmp_path / "r"), "--chunk-size", bad])
    assert e.value.code == 2
    assert "--chunk-size: must be a whole number >= 1 or auto" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("loader", "precision"),
    [("memory", "bf16"), ("stream", "fp32"), ("stream", "bf16")],
)
def test_chunking_runs_with_every_cpu_loader_and_precision(
    loader: str,
    precision: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tiny_run: Any,
    write_many_pngs: Any,
) -> None:
    """The chunked step under each loader and precision this machine has: finite losses, and the
    header names the loader, the precision and the chunk it trained with."""
    data = write_many_pngs(tmp_path / "data", 60)
    cfg = tiny_run(
        tmp_path / "run",
        data=str(data),
        loader=loader,
        precision=precision,
        chunk_size=4,
        epochs=1,
        num_workers=0 if loader == "stream" else None,
    )
    result = pretrain(cfg)
    header = capsys.readouterr().out
    assert f"loader:      {loader}" in header and f"precision:   {precision}" in header
    assert "4 images per forward" in header
    losses = _losses(result)
    assert result.global_step == 2 and losses and all(math.isfinite(x) for x in losses)
