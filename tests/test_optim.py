"""LARS against a hand computation of SimCLR's update, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastclr.models import SimCLR, resnet
from fastclr.optim import LARS, WarmupCosine, lars_param_groups, scaled_lr, warmup_cosine_schedule


def test_scaled_lr_is_paper_rule() -> None:
    assert scaled_lr(256) == pytest.approx(0.3)
    assert scaled_lr(4096) == pytest.approx(4.8)
    with pytest.raises(ValueError):
        scaled_lr(0)


def test_lars_two_steps_by_hand() -> None:
    w0 = [3.0, 4.0]  # ‖w‖ = 5
    w = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    b = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    lr, mom, wd, eta = 0.5, 0.9, 0.1, 0.001
    opt = LARS(
        [
            {"params": [w], "weight_decay": wd, "lars": True},
            {"params": [b], "weight_decay": 0.0, "lars": False},
        ],
        lr=lr,
        momentum=mom,
        trust_coefficient=eta,
    )
    g1, g2 = [0.6, -0.8], [1.0, 2.0]
    # step 1, by hand: g' = g + wd w = [0.9, -0.4]; r = eta·5/‖g'‖; v = lr·r·g'; w -= v
    gp = [g1[0] + wd * w0[0], g1[1] + wd * w0[1]]
    r = eta * 5.0 / math.hypot(*gp)
    v = [lr * r * gp[0], lr * r * gp[1]]
    w1 = [w0[0] - v[0], w0[1] - v[1]]
    w.grad = torch.tensor(g1, dtype=torch.float64)
    b.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    assert w.tolist() == pytest.approx(w1, rel=1e-12)
    # excluded parameter: plain momentum SGD with the lr inside the buffer, no decay
    assert b.tolist() == pytest.approx([1.0 - lr * 2.0], rel=1e-12)
    vb = lr * 2.0
    # step 2: the buffer carries momentum
    gp = [g2[0] + wd * w1[0], g2[1] + wd * w1[1]]
    r = eta * math.hypot(*w1) / math.hypot(*gp)
    v = [mom * v[0] + lr * r * gp[0], mom * v[1] + lr * r * gp[1]]
    w2 = [w1[0] - v[0], w1[1] - v[1]]
    w.grad = torch.tensor(g2, dtype=torch.float64)
    b.grad = torch.tensor([-1.0], dtype=torch.float64)
    opt.step()
    assert w.tolist() == pytest.approx(w2, rel=1e-12)
    assert b.tolist() == pytest.approx([1.0 - vb - (mom * vb + lr * -1.0)], rel=1e-12)


def test_lars_trust_ratio_is_one_for_zero_norms() -> None:
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LARS([w], lr=0.1, weight_decay=0.0)
    w.grad = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    opt.step()  # ‖w‖ = 0: plain SGD step
    assert w.tolist() == pytest.approx([-0.1, 0.0, 0.1])
    before = w.detach().clone()
    w.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()  # ‖g‖ = 0: only momentum moves it, no NaN
    assert torch.isfinite(w).all()
    assert w.tolist() == pytest.approx((before - 0.9 * torch.tensor([0.1, 0.0, -0.1])).tolist())


def test_param_groups_exclude_bn_and_bias() -> None:
    model = SimCLR(resnet("resnet18", "cifar", width=0.125), head_bn=True)
    adapted, excluded = lars_param_groups(model, weight_decay=1e-6)
    assert adapted["lars"] and adapted["weight_decay"] == 1e-6
    assert not excluded["lars"] and excluded["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    adapted_names = {names[id(p)] for p in adapted["params"]}
    excluded_names = {names[id(p)] for p in excluded["params"]}
    assert all(p.ndim > 1 for p in adapted["params"])
    assert "encoder.bn1.weight" in excluded_names and "head.1.weight" in excluded_names
    assert "head.3.bias" in excluded_names and "encoder.conv1.weight" in adapted_names
    assert len(adapted_names) + len(excluded_names) == len(list(model.parameters()))


def test_lars_rejects_bad_hyperparameters() -> None:
    p = [nn.Parameter(torch.ones(2))]
    for kwargs in (
        {"lr": -1.0},
        {"lr": 0.1, "momentum": 1.0},
        {"lr": 0.1, "weight_decay": -1},
        {"lr": 0.1, "trust_coefficient": 0.0},
    ):
        with pytest.raises(ValueError):
            LARS(p, **kwargs)  # type: ignore[arg-type]


def test_warmup_cosine_values() -> None:
    f = WarmupCosine(warmup_steps=4, total_steps=14)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.5)  # half-way through the 10 decay steps
    assert f(14) == pytest.approx(0.0, abs=1e-12)
    assert WarmupCosine(0, 10)(0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        WarmupCosine(11, 10)


def test_schedule_drives_optimizer_and_round_trips() -> None:
    w = nn.Parameter(torch.ones(2))
    opt = LARS([w], lr=2.0)
    sched = warmup_cosine_schedule(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx(
        [
            1.0,
            2.0,
            2.0,
            2.0 * 0.5 * (1 + math.cos(math.pi / 4)),
            1.0,
            2.0 * 0.5 * (1 + math.cos(3 * math.pi / 4)),
        ]
    )
    opt2 = LARS([nn.Parameter(torch.ones(2))], lr=2.0)
    sched2 = warmup_cosine_schedule(opt2, warmup_steps=2, total_steps=6)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == sched.last_epoch
