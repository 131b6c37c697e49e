"""Where ``fastclr pretrain`` finishes its views: ``--augment-in main`` against ``workers``.

    .venv/bin/python bench/augment_in_bench.py                       # 64 and 224 px, 3 rounds
    .venv/bin/python bench/augment_in_bench.py --sizes 64 --rounds 5 --folder /tmp/jpegs
    .venv/bin/python bench/augment_in_bench.py --quick               # smoke run, writes nothing

Each measurement is one ``fastclr pretrain`` subprocess on a folder of synthetic 500×375 JPEGs
(written by bench/data_bench.py's ``write_jpegs``), with the stream loader and its decode workers:

* ``main``: the workers decode and crop/resize to uint8 views; the training process applies flip,
  colour, grey, blur and normalisation (the native kernel) before the model step;
* ``workers``: the workers crop, resize and augment in one native pass from the decoded image
  (``fastclr.augment.native_backend.WorkerViews``); the training process only trains.

Each run takes ``--warmup`` untimed steps (imports, listing, the workers' start and their first
batches stay out), then ``--steps`` timed ones: from the moment its steps.csv holds the warm-up's
rows to the moment it holds them all (the log is written every ``--warmup`` steps), steps/s, and
CPU ms per image of the run's whole process tree (training process + decode workers, from /proc)
over the same interval.
Settings alternate inside a round and the order rotates each round; medians over rounds. The
machine is shared: the load is recorded with each round. Results: bench/results/augment-in.md
(the last run, with its command) and augment-in.jsonl (every run appended).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data_bench

RESULTS = Path(__file__).resolve().parent / "results"
#: view size → (encoder width, stem, batch): the CPU bench's small models, where the data path
#: is a visible share of a step
CONFIGS = {64: (0.25, "cifar", 64), 224: (0.25, "imagenet", 32)}
QUICK = {32: (0.125, "cifar", 8)}
MODES = ("main", "workers")
#: seconds between looks at a run's steps.csv (small against a step: 0.1-2 s here)
POLL_S = 0.02


def _tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of process ``root`` and its living descendants (/proc)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])  # field 4 of stat: the ppid
        ticks[pid] = int(fields[11]) + int(fields[12])  # fields 14, 15: utime, stime
    tree, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        kids = [c for c, p in parent.items() if p == pid and c not in tree]
        tree.update(kids)
        todo.extend(kids)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def _rows(csv_path: Path) -> int:
    try:
        return max(0, len(csv_path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def one_run(
    folder: Path, size: int, mode: str, args: argparse.Namespace, out: Path
) -> tuple[float, float]:
    """(wall s, CPU s of the process tree) of ``--steps`` steps of one ``fastclr pretrain``,
    after ``--warmup`` steps: timed from the moment its log has the warm-up's rows to the
    moment it has them all (steps.csv is written at each log point, every ``--warmup`` steps)."""
    width, stem, batch = (QUICK if args.quick else CONFIGS)[size]
    total = args.warmup + args.steps
    cmd = [
        *(sys.executable, "-m", "fastclr", "pretrain", "--data", str(folder)),
        *("--loader", "stream", "--num-workers", str(args.workers), "--augment-in", mode),
        *("--image-size", str(size), "--width", str(width), "--stem", stem),
        *("--batch-size", str(batch), "--epochs", "1", "--limit-steps", str(total)),
        *("--log-every", str(args.warmup), "--seed", "0", "--no-progress"),
        *("--out", str(out), "--overwrite"),
    ]
    if out.exists():
        shutil.rmtree(out)
    log = out / "steps.csv"
    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryFile("w+") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True)
        for want in (args.warmup, total):
            while _rows(log) < want and proc.poll() is None:
                time.sleep(POLL_S)
            marks.append((time.perf_counter(), _tree_cpu_s(proc.pid)))
        proc.wait()
        sink.seek(0)
        text = sink.read()
    if proc.returncode != 0 or _rows(log) < total:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    if mode == "workers" and not re.search(r"augment in: +the loader's workers", text):
        raise RuntimeError(f"the header does not say the workers made the views:\n{text}")
    return marks[1][0] - marks[0][0], marks[1][1] - marks[0][1]


def run_size(size: int, args: argparse.Namespace, folder: Path, say: Any) -> dict[str, Any]:
    """Interleaved rounds at ``size``: steps/s and CPU ms per image of each mode, medians."""
    batch = (QUICK if args.quick else CONFIGS)[size][2]
    per: dict[str, dict[str, list[float]]] = {m: {"rate": [], "cpu_ms": []} for m in MODES}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            loads.append(os.getloadavg()[0])
            for mode in order:
                wall, cpu = one_run(folder, size, mode, args, Path(tmp) / mode)
                rate = args.steps / max(wall, 1e-9)
                cpu_ms = 1000 * cpu / (args.steps * batch)
                per[mode]["rate"].append(rate)
                per[mode]["cpu_ms"].append(cpu_ms)
                say(f"{size} px round {r + 1} {mode}: {rate:.3f} steps/s, {cpu_ms:.2f} CPU ms/img")
    med = {m: {k: statistics.median(v) for k, v in per[m].items()} for m in MODES}
    return {"size": size, "batch": batch, "rounds": per, "median": med, "load1": loads}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: per size, each mode's median steps/s and CPU ms/img, workers ÷ main."""
    lines = [
        "| view | batch | augment-in | steps/s (median) | CPU ms/img (median) | steps/s vs main |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = row["median"]["main"]["rate"]
        for mode in MODES:
            m = row["median"][mode]
            lines.append(
                f"| {row['size']} px | {row['batch']} | {mode} | {m['rate']:.3f} | "
                f"{m['cpu_ms']:.2f} | {m['rate'] / base:.2f}× |"
            )
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (and the log interval)")
    p.add_argument("--steps", type=int, default=9, help="timed steps (a multiple of --warmup)")
    p.add_argument("--workers", type=int, default=2, help="decode workers of both modes")
    p.add_argument("--images", type=int, default=1200, help="JPEGs in the folder")
    p.add_argument("--folder", type=Path, help="reuse (or create) the JPEG folder here")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, 1 round, no files")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.steps % args.warmup:
        p.error("--steps must be a multiple of --warmup (the log interval)")
    if args.quick:
        args.sizes, args.rounds, args.warmup, args.steps, args.images = [32], 1, 1, 2, 48
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "jpegs"
        if len(list(folder.glob("*/*.jpg"))) < args.images:
            print(f"writing {args.images} JPEGs of 500×375 to {folder}", flush=True)
            data_bench.write_jpegs(folder, args.images)
        rows = [run_size(s, args, folder, lambda m: print(m, flush=True)) for s in args.sizes]
    lines = table(rows)
    print("\n".join(lines))
    if args.quick:
        return 0
    command = "python bench/augment_in_bench.py " + " ".join(argv if argv else sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible"
    record = {"date": started, "command": command.strip(), "torch": torch.__version__}
    record |= {"machine": machine, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "augment-in.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    head = [
        "# `--augment-in main` against `workers` (fastclr pretrain, CPU)",
        "",
        f"{started}; torch {torch.__version__}; {machine}; load (1 min) per round: "
        + "; ".join(f"{r['size']} px " + ", ".join(f"{x:.1f}" for x in r["load1"]) for r in rows),
        "",
        "```",
        command.strip(),
        "```",
        "",
    ]
    (args.out / "augment-in.md").write_text("\n".join([*head, *lines, ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
