"""``fastclr pretrain --compile`` on this machine: the model step eager against ``torch.compile``.

Two copies of one network (same weights) take fastclr's training step (``TrainingStep``: encoder
+ head forward of both views, NT-Xent, LARS) on the same pre-augmented views, one eager, one
through ``torch.compile``. Before timing, the first step of each gives its loss (equal within
float32 rounding, checked) and the compiled one's wall time, which holds the compilation. Then
interleaved rounds of steps (images/s, median over rounds; each image is two views). The result
is the evidence for ``--compile``'s default (off): see the table's verdict lines.

    python bench/compile_bench.py                      # 64 px (width 0.25, batch 128), 224 px
    python bench/compile_bench.py --configs 64         # one of them
    python bench/compile_bench.py --out bench/results  # compile-cpu.{md,jsonl} there
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_bench import interleaved_rates

#: (view size, width, batch): issue 25's two CPU configurations (ResNet-18)
CONFIGS = {"64": (64, 0.25, 128), "224": (224, 1.0, 32)}


def compare(size: int, width: float, batch: int, steps: int, rounds: int) -> dict[str, Any]:
    """Eager vs compiled steps of one configuration (module docstring)."""
    from fastclr.loss import NTXentLoss
    from fastclr.optim import LARS, lars_param_groups, scaled_lr
    from fastclr.train.builders import build_augmentation, build_model
    from fastclr.train.loop import TrainingStep
    from fastclr.train.precision import make_scaler
    from fastclr.train.recipe import preset_for, stem_for

    dev = torch.device("cpu")
    torch.manual_seed(0)
    eager = build_model("resnet18", stem_for(size)[0], width)
    twin = copy.deepcopy(eager)
    aug = build_augmentation(preset_for(size)[0], size, "fp32", "auto", 0, dev)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    v1, v2 = aug(images)

    def stepper(model: torch.nn.Module, net: torch.nn.Module) -> TrainingStep:
        opt = LARS(lars_param_groups(model), lr=scaled_lr(batch))
        loss = NTXentLoss(0.5, check_finite=False)
        return TrainingStep(net, loss, opt, make_scaler("fp32", dev), "fp32", dev)

    steps_eager = stepper(eager, eager)
    steps_compiled = stepper(twin, torch.compile(twin))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    loss_e = float(steps_eager(v1, v2))
    first_eager = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss_c = float(steps_compiled(v1, v2))
    first_compiled = time.perf_counter() - t0
    if abs(loss_e - loss_c) > 1e-4 * abs(loss_e):
        raise AssertionError(f"compiled step's loss {loss_c} != eager {loss_e}")
    kinds = {"eager": lambda: steps_eager(v1, v2), "compiled": lambda: steps_compiled(v1, v2)}
    rates = interleaved_rates(kinds, dev, batch, steps, 1, rounds)
    return {
        "size": size,
        "width": width,
        "batch": batch,
        "loss_eager": loss_e,
        "loss_compiled": loss_c,
        "first_step_eager_s": first_eager,
        "first_step_compiled_s": first_compiled,
        "eager_images_per_s": rates["eager"],
        "compiled_images_per_s": rates["compiled"],
        "speedup": rates["compiled"] / rates["eager"],
        "steps": steps,
        "rounds": rounds,
    }


def break_even_images(r: dict[str, Any]) -> float:
    """Images after which the compiled run has caught up with the eager one: the compilation
    (first compiled step minus first eager step) over the time saved per image."""
    saved = 1 / r["eager_images_per_s"] - 1 / r["compiled_images_per_s"]
    extra = r["first_step_compiled_s"] - r["first_step_eager_s"]
    return extra / saved if saved > 0 else float("inf")


def table(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """compile-cpu.md."""
    lines = [
        "# `--compile` on the CPU: eager vs torch.compile, fastclr's training step",
        "",
        f"`{header['command']}` ({header['date']}; {header['machine']}; torch "
        f"{header['torch']}; load average {header['load']}). ResNet-18, fp32, pre-augmented "
        "views, LARS; images/s median over interleaved rounds (each image two views).",
        "",
        "| view size, width, batch | eager img/s | compiled img/s | compiled ÷ eager | first "
        "compiled step (compilation) | break-even | loss eager / compiled |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        even = break_even_images(r)
        lines.append(
            f"| {r['size']} px, {r['width']}, {r['batch']} | {r['eager_images_per_s']:.1f} | "
            f"{r['compiled_images_per_s']:.1f} | **{r['speedup']:.2f}×** | "
            f"{r['first_step_compiled_s']:.1f} s | {even:,.0f} images | "
            f"{r['loss_eager']:.4f} / {r['loss_compiled']:.4f} |"
        )
    lines += [
        "",
        "Break-even: images after which the compiled run is ahead (the compilation over the "
        "time saved per image). The compilation is the first compiled step's wall time, cold or "
        "with torch's compile cache warm from an earlier run of the same shapes (much faster).",
        "",
        "`--compile` stays off by default: every process pays the compilation at every start "
        "and resume, it needs a working C++ compiler at run time, and whether it pays depends "
        "on the network and view size (the ratio and break-even above).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=6, help="timed steps per kind (over the rounds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write compile-cpu.{md,jsonl} in this folder")
    args = p.parse_args(argv)
    header = {
        "command": "python bench/compile_bench.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "load": f"{os.getloadavg()[0]:.1f}",
    }
    results = []
    for name in args.configs:
        print(f"[compile] {name} px ...", flush=True)
        results.append(compare(*CONFIGS[name], args.steps, args.rounds))
    text = table(results, header)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile-cpu.md").write_text(text)
        with (args.out / "compile-cpu.jsonl").open("a") as f:
            for r in results:
                f.write(json.dumps({**header, **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
