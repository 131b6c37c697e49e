"""The pretraining step against the machine's limit: counted FLOPs, measured matmul rate, stages.

One SimCLR step is split into its stages — model forward (both views), loss forward + backward
(on the embeddings, detached), model backward (from the loss's embedding gradient), optimiser
step — which give the same gradients as the fused step. Each stage is timed on its own (wall time,
synchronised on CUDA, and the process's CPU time), median over steps. The encoder + head FLOPs
of the forward and of the backward are counted with ``torch.utils.flop_counter`` on this very
step; the loss is counted as the fused algorithm's 4·M²·D (M = 2 × batch rows of D); the
optimiser as 0 (it is memory-bound). The machine's dense matmul rate is measured in the same run
(an n×n×n ``torch.mm``, fp32 and bf16), so each stage's fraction of it is a ratio of two
measurements made side by side. Images are source images (two views each).

    python bench/step_limit.py                                   # CPU: 64 px, width 0.25, batch 128
    python bench/step_limit.py --size 224 --width 1.0 --batch 32
    python bench/step_limit.py --device cuda --arch resnet50 --size 224 --batch 256 --precision bf16

From a GPU script (with bench/ on ``sys.path``; no lightly or torchvision needed)::

    from step_limit import limit_table, step_limit
    res = step_limit(torch.device("cuda"), arch="resnet50", width=1.0, size=224, batch=256,
                     precision="bf16")
    print("\\n".join(limit_table(res)))   # res is JSON-serialisable for a results file
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: the stages of a step, in order (names used by every table)
STAGES = ("forward", "loss", "backward", "optimizer")
#: matmul side for the rate measurement: large enough to reach the dense rate, small enough to
#: take well under a second per product on 2 CPU cores (8192 on a GPU)
MATMUL_N = {"cpu": 2048, "cuda": 8192}
#: embedding size of the projection head (the loss's D)
PROJ_DIM = 128


@dataclass
class StepParts:
    """One SimCLR step in stages. ``forward`` returns the two views' fp32 embeddings with their
    graph; ``loss`` maps (z1, z2) to a scalar; the optimiser steps the model's parameters."""

    forward: Callable[[], tuple[Tensor, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]
    optimizer: torch.optim.Optimizer
    device: torch.device
    batch: int
    last_loss: list[float] = field(default_factory=list)


class Clock:
    """Per-stage wall and process CPU seconds of one step (synchronising CUDA around each)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        w0, c0 = time.perf_counter(), time.process_time()
        yield
        self._sync()
        self.wall[stage] = time.perf_counter() - w0
        self.cpu[stage] = time.process_time() - c0


def run_step(parts: StepParts, clock: Clock | None = None) -> Tensor:
    """One optimisation step through ``parts``, timed per stage by ``clock``; the detached loss."""
    clock = clock or Clock(parts.device)
    parts.optimizer.zero_grad(set_to_none=True)
    with clock("forward"):
        z1, z2 = parts.forward()
    with clock("loss"):
        a, b = z1.detach().requires_grad_(), z2.detach().requires_grad_()
        loss = parts.loss(a, b)
        loss.backward()
    with clock("backward"):
        torch.autograd.backward([z1, z2], [a.grad, b.grad])
    with clock("optimizer"):
        parts.optimizer.step()
    return loss.detach()


def fused_step(parts: StepParts) -> Tensor:
    """One plain step through ``parts`` (forward, loss, one backward, optimiser): the detached
    loss. What a training loop does; :func:`run_step` splits the same work into timed stages."""
    parts.optimizer.zero_grad(set_to_none=True)
    z1, z2 = parts.forward()
    loss = parts.loss(z1, z2)
    loss.backward()
    parts.optimizer.step()
    return loss.detach()


def time_stages(parts: StepParts, steps: int = 3, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per stage (and for the whole step) over ``steps`` steps."""
    for _ in range(warmup):
        run_step(parts)
    walls: dict[str, list[float]] = {s: [] for s in (*STAGES, "step")}
    cpus: dict[str, list[float]] = {s: [] for s in (*STAGES, "step")}
    for _ in range(steps):
        clock = Clock(parts.device)
        loss = run_step(parts, clock)
        parts.last_loss.append(float(loss))
        for s in STAGES:
            walls[s].append(clock.wall[s])
            cpus[s].append(clock.cpu[s])
        walls["step"].append(sum(clock.wall.values()))
        cpus["step"].append(sum(clock.cpu.values()))
    return {
        s: {"wall_s": statistics.median(walls[s]), "cpu_s": statistics.median(cpus[s])}
        for s in walls
    }


def count_flops(parts: StepParts) -> dict[str, float]:
    """FLOPs of one step's model forward and backward (``torch.utils.flop_counter``) and of the
    loss (the fused algorithm's 4·M²·D); the parameters are left unchanged."""
    from torch.utils.flop_counter import FlopCounterMode

    parts.optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fwd:
        z1, z2 = parts.forward()
    a, b = z1.detach().requires_grad_(), z2.detach().requires_grad_()
    parts.loss(a, b).backward()
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.backward([z1, z2], [a.grad, b.grad])
    parts.optimizer.zero_grad(set_to_none=True)
    m, d = z1.shape[0] + z2.shape[0], z1.shape[1]
    return {
        "forward": float(fwd.get_total_flops()),
        "loss": 4.0 * m * m * d,
        "backward": float(bwd.get_total_flops()),
        "optimizer": 0.0,
    }


def matmul_rate(
    device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 5
) -> dict[str, Any]:
    """Measured dense matmul rate of an n×n×n ``torch.mm`` in ``dtype``, medians over ``reps``:
    ``flop_per_s`` per wall second and ``cpu_flop_per_s`` per second of process CPU time (the
    rate a CPU-time measurement of a stage compares with; stable on a shared machine)."""
    n = n or MATMUL_N.get(device.type, 2048)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    walls, cpus = [], []
    clock = Clock(device)
    for i in range(reps + 1):
        with clock("mm"):
            torch.mm(a, b)
        if i:  # the first one warms up
            walls.append(clock.wall["mm"])
            cpus.append(clock.cpu["mm"])
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "flop_per_s": flops / statistics.median(walls),
        "cpu_flop_per_s": flops / max(statistics.median(cpus), 1e-9),
    }


def fastclr_parts(
    device: torch.device,
    arch: str,
    width: float,
    size: int,
    batch: int,
    precision: str,
    views_forward: str = "joint",
    seed: int = 0,
) -> StepParts:
    """fastclr's step (its model, augmentation, loss and LARS) on one fixed pre-augmented batch.

    ``views_forward``: ``joint`` (both views as one double batch, as ``TrainingStep`` does) or
    ``separate`` (one forward per view).
    """
    from fastclr.loss import NTXentLoss
    from fastclr.optim import LARS, lars_param_groups, scaled_lr
    from fastclr.train.builders import build_augmentation, build_model
    from fastclr.train.precision import autocast
    from fastclr.train.recipe import preset_for, stem_for

    torch.manual_seed(seed)
    stem = stem_for(size)[0]
    model = build_model(arch, stem, width).to(device)  # type: ignore[arg-type]
    aug = build_augmentation(preset_for(size)[0], size, precision, "auto", seed, device)
    g = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(
        0, 256, (batch, size, size, 3), generator=g, device=device, dtype=torch.uint8
    )
    v1, v2 = aug(images)
    opt = LARS(lars_param_groups(model), lr=scaled_lr(batch))

    def forward() -> tuple[Tensor, Tensor]:
        with autocast(precision, device):
            if views_forward == "joint":
                x = torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)
                z = model(x)[1].float()
                z1, z2 = z.chunk(2)
                return z1, z2
            return model(v1)[1].float(), model(v2)[1].float()

    loss = NTXentLoss(0.5, check_finite=False)
    return StepParts(forward, loss, opt, device, batch)


def step_limit(
    device: torch.device,
    arch: str = "resnet18",
    width: float = 0.25,
    size: int = 64,
    batch: int = 128,
    precision: str = "fp32",
    views_forward: str = "joint",
    steps: int = 3,
) -> dict[str, Any]:
    """fastclr's step against the measured matmul rate, per stage (module docstring).

    Returns a JSON-serialisable dict: ``settings``, ``flops`` (per step, by stage), ``stages``
    (median wall/CPU seconds per step), ``matmul`` (fp32 and bf16 rates), ``loss`` (last values,
    checked finite) and ``machine``; :func:`limit_table` formats it. Works on CPU and CUDA.
    """
    parts = fastclr_parts(device, arch, width, size, batch, precision, views_forward)
    flops = count_flops(parts)
    matmul = {
        "fp32": matmul_rate(device, torch.float32),
        "bf16": matmul_rate(device, torch.bfloat16),
    }
    stages = time_stages(parts, steps=steps)
    if not all(map(lambda v: v == v and abs(v) < float("inf"), parts.last_loss)):
        raise AssertionError(f"non-finite loss in the timed steps: {parts.last_loss}")
    settings = {
        "arch": arch,
        "width": width,
        "size": size,
        "batch": batch,
        "precision": precision,
        "views_forward": views_forward,
        "steps": steps,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    return {
        "settings": settings,
        "flops": flops,
        "stages": stages,
        "matmul": matmul,
        "loss": parts.last_loss,
        "machine": machine(device),
    }


def machine(device: torch.device) -> dict[str, Any]:
    """Device name, CPU bf16 support, versions and load average, for a results record."""
    import os
    import platform

    from fastclr.cpu_info import cpu_bf16_support, cpu_model

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": name,
        "cpu": cpu_model(),
        "cpu_bf16": cpu_bf16_support(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def stage_rows(
    flops: dict[str, float], stages: dict[str, dict[str, float]], batch: int, rate: float
) -> list[dict[str, Any]]:
    """Per stage (and the whole step), per image: wall/CPU ms, GFLOP, GFLOP/s and fraction of
    ``rate`` (FLOP/s) the stage reaches in wall time."""
    rows = []
    total = sum(flops.get(s, 0.0) for s in STAGES)
    for s in (*STAGES, "step"):
        f = total if s == "step" else flops.get(s, 0.0)
        wall = stages[s]["wall_s"]
        achieved = f / wall if f and wall > 0 else None
        rows.append(
            {
                "stage": s,
                "wall_ms": 1e3 * wall / batch,
                "cpu_ms": 1e3 * stages[s]["cpu_s"] / batch,
                "gflop": f / batch / 1e9,
                "gflop_per_s": achieved / 1e9 if achieved else None,
                "fraction": achieved / rate if achieved else None,
            }
        )
    return rows


def _f(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def limit_table(res: dict[str, Any]) -> list[str]:
    """The stage table of a :func:`step_limit` result, and the step's floor at the matmul rate."""
    s = res["settings"]
    prec = "bf16" if s["precision"] in ("bf16", "fp16") else "fp32"
    rate = res["matmul"][prec]["flop_per_s"]
    rows = stage_rows(res["flops"], res["stages"], s["batch"], rate)
    lines = [
        f"{s['arch']} width {s['width']}, {s['size']} px, batch {s['batch']} (two views each), "
        f"{s['precision']}, views {s['views_forward']}, {s['device']} ({s['threads']} threads); "
        f"median of {s['steps']} steps",
        "",
        "| stage | wall ms/img | CPU ms/img | GFLOP/img | GFLOP/s (wall) "
        "| fraction of matmul rate (wall) | fraction (CPU time) |",
        "|---|---|---|---|---|---|---|",
    ]
    cpu_rate = res["matmul"][prec]["cpu_flop_per_s"] if s["device"] == "cpu" else None
    for r in rows:
        cpu_frac = None
        if cpu_rate and r["gflop"] and r["cpu_ms"] > 0:
            cpu_frac = r["gflop"] * 1e9 / (r["cpu_ms"] / 1e3) / cpu_rate
        lines.append(
            f"| {r['stage']} | {r['wall_ms']:.2f} | {r['cpu_ms']:.2f} | {r['gflop']:.4g} | "
            f"{_f(r['gflop_per_s'], '.1f')} | {_f(r['fraction'], '.3f')} | {_f(cpu_frac, '.3f')} |"
        )
    step = rows[-1]
    floor_ms = 1e3 * step["gflop"] * 1e9 / rate
    mm = res["matmul"]
    lines += [
        "",
        f"measured matmul rate ({prec}, n = {mm[prec]['n']}): {rate / 1e9:,.1f} GFLOP/s "
        f"(fp32 {mm['fp32']['flop_per_s'] / 1e9:,.1f}, "
        f"bf16 {mm['bf16']['flop_per_s'] / 1e9:,.1f}); "
        f"the step's floor at that rate is {floor_ms:.2f} ms/img, it takes {step['wall_ms']:.2f} "
        f"(fraction {floor_ms / step['wall_ms']:.2f})",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--views-forward", default="joint", choices=["joint", "separate"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    res = step_limit(
        torch.device(args.device),
        args.arch,
        args.width,
        args.size,
        args.batch,
        args.precision,
        args.views_forward,
        args.steps,
    )
    print("\n".join(limit_table(res)))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
