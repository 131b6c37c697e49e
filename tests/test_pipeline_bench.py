"""bench/pipeline_bench.py's parts on a tiny folder: its checks, each pipeline's step, the profile.

Needs lightly and torchvision (``make test-peers``). About 20 s on 2 cores: 8 JPEGs, 32-px views,
ResNet-18 width 1/8, batch 4, no DataLoader workers.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightly")
pytest.importorskip("torchvision")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import data_bench  # noqa: E402
import pipeline_bench  # noqa: E402
import pipelines  # noqa: E402

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data_bench.write_jpegs(tmp_path_factory.mktemp("jpegs"), 8)


def test_checks_before_timing_pass_and_the_loss_sanity_rule_fires() -> None:
    assert pipeline_bench._sane([5.0, 4.9], 128) is None
    assert pipeline_bench._sane([float("nan")], 128) is not None  # positive controls
    assert pipeline_bench._sane([math.log(255) + 2], 128) is not None
    assert pipeline_bench._sane([-0.1], 128) is not None


def test_check_child(folder: Path) -> None:
    out = pipeline_bench.child_check({"folder": str(folder), "batch": 16, "size": 11})
    for key in ("lightly_loss_error_ratio", "fastclr_loss_error_ratio", "worker_views_error_ratio"):
        assert 0.0 <= out[key] <= 1.0, (key, out[key])


@pytest.mark.parametrize("name", pipelines.ROUND_PIPELINES)
def test_each_pipeline_takes_a_step(folder: Path, name: str) -> None:
    batches, step = pipelines.build_pipeline(name, str(folder), 32, 0.125, 4, 0)
    losses = [float(step(next(batches))) for _ in range(2)]
    assert pipeline_bench._sane(losses, 4) is None, losses


def test_round_order_puts_every_pipeline_in_every_position() -> None:
    """With the default number of rounds each pipeline runs once first, once second, ... (the
    order of the rounds is rotated), so no pipeline always follows the same one."""
    names = pipelines.ROUND_PIPELINES
    rounds = pipeline_bench.parse(["--folder", "x"]).rounds
    orders = [pipeline_bench.round_order(r) for r in range(rounds)]
    for p in names:
        assert sorted(o.index(p) for o in orders) == list(range(len(names)))
    # the positive control: three rounds of four pipelines leave one position out for each
    short = [pipeline_bench.round_order(r) for r in range(3)]
    assert any(sorted(o.index(p) for o in short) != list(range(len(names))) for p in names)


def test_profiles_time_every_stage_and_count_the_same_flops(folder: Path) -> None:
    files = sorted(str(f) for f in folder.glob("*/*.jpg"))[:4]
    flops = {}
    for name in pipelines.PIPELINES:
        res = pipelines.profile(name, files, 32, 0.125, steps=1, reps=1)
        stages = {*pipelines.DATA_STAGES, "forward", "loss", "backward", "optimizer"}
        assert stages <= set(res["cpu_s"]), res["cpu_s"]
        assert all(res["cpu_s"][s] > 0 for s in ("decode", "crop/resize", "forward", "backward"))
        flops[name] = pipeline_bench.step_limit.count_flops(res["parts"])
    # the same encoder, batch and views in every pipeline: the same model FLOPs
    assert flops["fastclr"] == flops["lightly"] == flops["fastclr-workers"]
    assert torch.get_num_threads() == 1
