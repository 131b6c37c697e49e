"""Head-to-head: fastclr's pretraining step against the pipeline users run today, and its limit.

    make bench-peers                                        # both sizes, 4 rounds (~10 min quiet)
    .venv-peers/bin/python bench/pipeline_bench.py --sizes 64 --rounds 5
    .venv-peers/bin/python bench/pipeline_bench.py --quick  # smoke run: 48 files, 32 px

Needs torchvision and lightly (``make setup-peers``). On one folder of synthetic 500×375 JPEGs
(written by the bench), at 64 px (ResNet-18 width 0.25, CIFAR stem, batch 128) and 224 px (width
1.0, ImageNet stem, batch 32), the same encoder in every pipeline (bench/pipelines.py says what
each pipeline is):

1. checks before timing: lightly's and fastclr's NT-Xent give the same value as the float64
   reference on the same embeddings; views finished in the loader's workers equal the float64
   augmentation definition on the decoded files; every timed step's loss is finite and in range;
2. images/s: interleaved rounds, one subprocess per pipeline and round (the order rotates each
   round; with the default 4 rounds, as many as pipelines, every pipeline runs once in every
   position), each a few warm-up steps then timed steps with its DataLoader workers; medians
   over rounds, and CPU ms per image of the whole pipeline (training process + its workers);
3. CPU ms per image per stage (decode, crop/resize, augment, model forward, loss, model backward,
   optimiser) of one batch in one process at 1 thread, with the encoder FLOPs counted by
   ``torch.utils.flop_counter`` and each stage's fraction of the 1-thread matmul rate measured in
   the same process (bench/step_limit.py);
4. fastclr's model step in fp32 and bf16, both views as one batch vs one forward per view
   (interleaved rounds, medians), with the CPU's bf16 support (``fastclr.cpu_info``).

The machine is shared: wall-clock rates move with the load (recorded with each round); CPU time
per image at 1 thread is the stable figure. Results: bench/results/pipeline-cpu.md (the last run,
with its command, machine and versions) and pipeline-cpu.jsonl (every run appended).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline_tables
import pipelines
import step_limit

RESULTS = Path(__file__).resolve().parent / "results"
#: view size → (encoder width, batch) of the head-to-head (issue targets: 64 and 224 px)
CONFIGS = {64: (0.25, 128), 224: (1.0, 32)}
QUICK = {32: (0.125, 8)}
PARTS = ("rounds", "profile", "variants")
VARIANTS = [("fp32", "joint"), ("fp32", "separate"), ("bf16", "joint"), ("bf16", "separate")]


def _worker_cpu_s() -> float:
    """CPU seconds so far of this process's live children (the DataLoader workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def _sane(losses: list[float], batch: int) -> str | None:
    """Why the losses are not those of a working SimCLR step (None when they are)."""
    top = math.log(2 * batch - 1) + 1.0
    bad = [v for v in losses if not (math.isfinite(v) and 0.0 < v < top)]
    return f"loss outside (0, {top:.2f}) or not finite: {bad}" if bad else None


def child_round(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up then timed steps of one pipeline: images/s and CPU ms/img (main + workers)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    args = (spec["folder"], spec["size"], spec["width"], spec["batch"], spec["workers"])
    batches, step = pipelines.build_pipeline(spec["pipeline"], *args)
    losses = [float(step(next(batches))) for _ in range(spec["warmup"])]
    main0, work0, t0 = time.process_time(), _worker_cpu_s(), time.perf_counter()
    losses += [float(step(next(batches))) for _ in range(spec["steps"])]
    wall = time.perf_counter() - t0
    main, work = time.process_time() - main0, _worker_cpu_s() - work0
    n = spec["steps"] * spec["batch"]
    return {
        "images_per_s": n / wall,
        "cpu_ms_per_img": 1e3 * (main + work) / n,
        "main_cpu_ms_per_img": 1e3 * main / n,
        "worker_cpu_ms_per_img": 1e3 * work / n,
        "losses": losses,
        "problem": _sane(losses, spec["batch"]),
        "loadavg": os.getloadavg(),
    }


def child_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-stage CPU seconds of one batch at 1 thread, FLOPs, and the 1-thread matmul rates."""
    from fastclr.data import list_image_folder

    torch.set_num_threads(1)
    files = list(list_image_folder(spec["folder"]).files)[: spec["batch"]]
    res = pipelines.profile(
        spec["pipeline"], [str(f) for f in files], spec["size"], spec["width"], spec["steps"]
    )
    parts = res["parts"]
    out = {
        "cpu_s": res["cpu_s"],
        "flops": step_limit.count_flops(parts),
        "problem": _sane(parts.last_loss, spec["batch"]),
        "loadavg": os.getloadavg(),
    }
    if spec.get("matmul"):
        cpu = torch.device("cpu")
        out["matmul"] = {
            p: step_limit.matmul_rate(cpu, d)
            for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        }
    return out


def child_variants(spec: dict[str, Any]) -> dict[str, Any]:
    """fastclr's model step (pre-augmented views) per (precision, views forward), interleaved."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    cpu = torch.device("cpu")
    parts = {
        f"{p}/{v}": step_limit.fastclr_parts(
            cpu, "resnet18", spec["width"], spec["size"], spec["batch"], p, v
        )
        for p, v in VARIANTS
    }
    first = {k: float(step_limit.fused_step(pt)) for k, pt in parts.items()}  # same seed, step 0
    walls: dict[str, list[float]] = {k: [] for k in parts}
    cpus: dict[str, list[float]] = {k: [] for k in parts}
    losses: list[float] = []
    for r in range(spec["rounds"]):
        keys = list(parts)[r % len(parts) :] + list(parts)[: r % len(parts)]
        for k in keys:
            c0, t0 = time.process_time(), time.perf_counter()
            losses += [float(step_limit.fused_step(parts[k])) for _ in range(spec["steps"])]
            walls[k].append(time.perf_counter() - t0)
            cpus[k].append(time.process_time() - c0)
    n = spec["steps"] * spec["batch"]
    rows = {
        k: {
            "images_per_s": n / statistics.median(walls[k]),
            "cpu_ms_per_img": 1e3 * statistics.median(cpus[k]) / n,
            "first_loss": first[k],
        }
        for k in parts
    }
    matmul = {
        p: step_limit.matmul_rate(cpu, d)
        for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    flops = step_limit.count_flops(parts["fp32/joint"])
    return {
        "rows": rows,
        "matmul": matmul,
        "flops": flops,
        "threads": torch.get_num_threads(),
        "problem": _sane(losses, spec["batch"]),
        "loadavg": os.getloadavg(),
    }


def child_check(spec: dict[str, Any]) -> dict[str, Any]:
    """The checks made before anything is timed (module docstring, 1)."""
    import numpy as np
    from lightly.loss import NTXentLoss as LightlyNTXent

    from fastclr.augment import AugmentConfig, apply_reference
    from fastclr.augment.native_backend import WorkerViews
    from fastclr.data import list_image_folder
    from fastclr.data.decode import decode_for_boxes
    from fastclr.data.stream import draw_boxes
    from fastclr.loss import NTXentLoss
    from fastclr.reference import ntxent_reference, views_to_batch
    from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference, error_ratio

    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, spec["batch"], step_limit.PROJ_DIM, generator=g)
    ref = ntxent_reference(*views_to_batch([z0.double(), z1.double()]), pipelines.TEMPERATURE)
    out: dict[str, Any] = {}
    for name, fn in (
        ("lightly", LightlyNTXent(temperature=pipelines.TEMPERATURE)),
        ("fastclr", NTXentLoss(pipelines.TEMPERATURE)),
    ):
        got = fn(z0, z1)
        assert_close_to_reference(got, ref, rtol=1e-5, name=f"{name} NT-Xent")
        out[f"{name}_loss_error_ratio"] = error_ratio(got, ref, rtol=1e-5)
    files = [str(f) for f in list(list_image_folder(spec["folder"]).files)[:3]]
    cfg = AugmentConfig.imagenet(spec["size"], blur_p=0.5)
    decoded = [decode_for_boxes(f, lambda h, w: np.zeros((2, 4)), 1, draft=False)[0] for f in files]
    sizes = np.asarray([d.shape[:2] for d in decoded])
    boxes = draw_boxes(sizes, cfg, 2, 0, 0, 0, 0)
    finish = WorkerViews(cfg)
    views = finish(decoded, [1] * len(files), boxes, 5)
    srcs = [torch.from_numpy(d.copy()) for d in decoded] * 2
    want = apply_reference(srcs, finish.params(boxes, 5), cfg, layout="NHWC")
    got = views.reshape(-1, 3, spec["size"], spec["size"])
    assert_close_to_reference(got, want, atol=AUGMENT_ATOL, name="views made in workers")
    out["worker_views_error_ratio"] = error_ratio(got, want, atol=AUGMENT_ATOL)
    return out


CHILDREN = {
    "round": child_round,
    "profile": child_profile,
    "variants": child_variants,
    "check": child_check,
}


def in_child(kind: str, spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run ``CHILDREN[kind](spec)`` in a fresh Python; its JSON result, or ``{"error": ...}``."""
    load = os.getloadavg()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", kind, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{kind}: timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:] or ["?"]
        return {"error": f"{kind}: " + " | ".join(tail)}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "loadavg_before": load}


def round_order(r: int) -> tuple[str, ...]:
    """The pipelines in the order round ``r`` runs them: rotated by one each round."""
    names = pipelines.ROUND_PIPELINES
    return names[r % len(names) :] + names[: r % len(names)]


def run_size(
    size: int, width: float, batch: int, args: argparse.Namespace, folder: Path, say: Any
) -> dict[str, Any]:
    """Every measurement at one view size (module docstring, 2–4)."""
    base = {
        "folder": str(folder),
        "size": size,
        "width": width,
        "batch": batch,
        "workers": args.workers,
        "threads": args.threads,
    }
    out: dict[str, Any] = {"size": size, "width": width, "batch": batch, "threads": args.threads}
    names = pipelines.ROUND_PIPELINES
    rounds: dict[str, list[dict[str, Any]]] = {p: [] for p in names}
    for r in range(args.rounds if "rounds" in args.parts else 0):
        order = round_order(r)
        for p in order:
            say(f"{size} px: round {r + 1}/{args.rounds}, {p}")
            spec = {**base, "pipeline": p, "warmup": args.warmup, "steps": args.steps}
            rounds[p].append(in_child("round", spec))
    if "rounds" in args.parts:
        out["rounds"] = rounds
    if "profile" in args.parts:
        out["profiles"] = {}
        for p in pipelines.PIPELINES:
            say(f"{size} px: stage profile at 1 thread, {p}")
            spec = {**base, "pipeline": p, "steps": 2, "matmul": p == "fastclr"}
            out["profiles"][p] = in_child("profile", spec)
    if "variants" in args.parts:
        say(f"{size} px: fastclr model step, fp32/bf16 × joint/separate")
        spec = {**base, "rounds": args.rounds, "steps": args.variant_steps}
        out["variants"] = in_child("variants", spec)
    return out


def write_folder(root: Path, n: int, say: Any) -> Path:
    """``n`` synthetic 500×375 JPEGs under ``root`` (kept when ``root`` already holds them)."""
    import data_bench

    if len(list(root.glob("*/*.jpg"))) >= n:
        return root
    say(f"writing {n} JPEGs of 500×375 to {root}")
    return data_bench.write_jpegs(root, n)


def _python() -> str:
    """This interpreter as typed from the repository root (``.venv-peers/bin/python``)."""
    rel = os.path.relpath(sys.executable)
    return rel if not rel.startswith("..") else sys.executable


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    p.add_argument(
        "--rounds",
        type=int,
        default=len(pipelines.ROUND_PIPELINES),
        help="interleaved rounds per pipeline (default: one per pipeline, so that each takes "
        "every position in the order once; the model-step variants rotate the same way)",
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    p.add_argument("--variant-steps", type=int, default=2, help="steps per variant and round")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of every pipeline")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads of each pipeline's training process (rounds and variants; default: "
        "torch's). 1 makes the rounds' CPU ms/img stable on a loaded machine",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure at each size (default: all)",
    )
    p.add_argument("--images", type=int, default=2000, help="JPEGs in the folder")
    p.add_argument("--folder", type=Path, help="reuse (or create) the JPEG folder here")
    p.add_argument("--quick", action="store_true", help="smoke run: 48 files, 32 px, 1 round")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup, args.variant_steps, args.images = 1, 1, 1, 1, 48
    return args


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Every measurement ``args`` asks for: the record and its Markdown report (written to
    ``args.out`` unless ``args.no_save``)."""
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f}s] {msg}", file=sys.stderr, flush=True)

    configs = QUICK if args.quick else {s: CONFIGS[s] for s in args.sizes}
    record: dict[str, Any] = {
        "command": " ".join([_python(), *sys.argv]),
        "machine": pipeline_tables.machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(args.folder or Path(tmp) / "jpegs", args.images, say)
        say("checks before timing")
        record["check"] = in_child("check", {"folder": str(folder), "batch": 64, "size": 31})
        record["sizes"] = {}
        if "error" not in record["check"]:
            for size, (width, batch) in configs.items():
                record["sizes"][str(size)] = run_size(size, width, batch, args, folder, say)
    record["seconds"] = time.perf_counter() - t_start
    lines = pipeline_tables.report(record)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "pipeline-cpu" + (f"-threads{args.threads}" if args.threads else "")
        stem += "-quick" if args.quick else ""
        (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        with (args.out / f"{stem}.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        say(f"wrote {args.out}/{stem}.md and {stem}.jsonl")
    return record, lines


def main(argv: list[str] | None = None) -> int:
    record, lines = run(parse(argv))
    print("\n".join(lines))
    return 1 if pipeline_tables.problems(record) else 0


def section(quick: bool, no_save: bool) -> tuple[list[str], dict[str, Any], bool]:
    """This benchmark as a section of bench/throughput.py (``--only pipeline``): (lines, record,
    failed). Runs where lightly and torchvision import (``.venv-peers``), else one line why not."""
    try:
        import lightly  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        why = f"skipped ({e}; run it from .venv-peers: make bench-peers)"
        return [why], {"skipped": why}, False
    argv = [*(["--quick"] if quick else []), *(["--no-save"] if no_save else [])]
    record, lines = run(parse(argv))
    # the report's own title is the section's; its first line is dropped
    return lines[1:], record, bool(pipeline_tables.problems(record))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))))
    else:
        sys.exit(main())
