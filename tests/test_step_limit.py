"""bench/step_limit.py: the staged step is the step, the FLOP count and the table are consistent.

A tiny model (ResNet-18 width 1/8, 16 px, batch 4): about 3 s on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import step_limit  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def _parts(views: str = "joint", precision: str = "fp32") -> step_limit.StepParts:
    return step_limit.fastclr_parts(CPU, "resnet18", 0.125, 16, 4, precision, views, seed=3)


def test_staged_step_gives_the_fused_steps_gradients() -> None:
    """Forward, loss on detached embeddings, backward from their gradient: the same gradients
    (and loss) as one loss.backward() through everything."""
    staged, fused = _parts(), _parts()
    params = [p for g in staged.optimizer.param_groups for p in g["params"]]
    fparams = [p for g in fused.optimizer.param_groups for p in g["params"]]
    for p, q in zip(params, fparams, strict=True):
        assert torch.equal(p, q)  # same seed: same model
    # step the optimiser with lr 0 so that the gradients stay readable afterwards
    for opt in (staged.optimizer, fused.optimizer):
        for g in opt.param_groups:
            g["lr"] = 0.0
    loss_s = step_limit.run_step(staged)
    loss_f = step_limit.fused_step(fused)
    torch.testing.assert_close(loss_s, loss_f, rtol=1e-6, atol=1e-6)
    for p, q in zip(params, fparams, strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_flops_are_counted_per_stage_and_agree_across_views_forward() -> None:
    joint = step_limit.count_flops(_parts("joint"))
    separate = step_limit.count_flops(_parts("separate"))
    assert joint["forward"] > 0 and joint["forward"] == separate["forward"]
    # backward = gradients of inputs and weights: about twice the forward (the first conv has
    # no input gradient, so a little less)
    assert 1.5 * joint["forward"] < joint["backward"] <= 2.0 * joint["forward"]
    assert joint["loss"] == 4.0 * 8 * 8 * step_limit.PROJ_DIM  # M = 8 rows of D
    assert joint["optimizer"] == 0.0


def test_step_limit_result_and_table() -> None:
    res = step_limit.step_limit(CPU, "resnet18", 0.125, 16, 4, "fp32", "joint", steps=1)
    assert set(res["stages"]) == {*step_limit.STAGES, "step"}
    stage_sum = sum(res["stages"][s]["wall_s"] for s in step_limit.STAGES)
    assert res["stages"]["step"]["wall_s"] == pytest.approx(stage_sum)
    for dtype in ("fp32", "bf16"):
        assert res["matmul"][dtype]["flop_per_s"] > 0
    lines = step_limit.limit_table(res)
    assert lines[4].startswith("| forward |") and lines[8].startswith("| step |")
    assert "floor" in lines[-1]
    rows = step_limit.stage_rows(res["flops"], res["stages"], 4, 1e9)
    assert rows[-1]["gflop"] == pytest.approx(sum(r["gflop"] for r in rows[:-1]))
