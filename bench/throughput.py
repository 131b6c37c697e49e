"""fastclr's main benchmark: every part, side by side with the alternatives, in one run.

    python bench/throughput.py            # full report for this machine (~3 min on 2 CPU cores)
    python bench/throughput.py --quick    # CI: small sizes, every result still checked
    python bench/throughput.py --only loss

Each row is checked against the float64 reference before it is timed; each ratio compares
measurements made in this run. Results are printed as a table and written to bench/results/
(JSON record + Markdown table tagged with the machine, versions and date, and a PNG plot).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import augment_bench
import compat_bench
import data_bench
import loss_bench
import train_bench

import fastclr

RESULTS = Path(__file__).resolve().parent / "results"


def machine_tag(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
    tag: dict[str, Any] = {
        "device": name,
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "fastclr": fastclr.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton

        tag["triton"] = triton.__version__
    except ImportError:
        tag["triton"] = None
    return tag


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def loss_table(rows: list[loss_bench.LossRow], matmul: dict[int, float], gpu: bool) -> list[str]:
    head = (
        "| impl | M | D | dtype | fwd ms | bwd ms | fwd+bwd ms | × matmul | speed-up vs ref "
        "| peak extra MB | mem vs ref |"
    )
    if gpu:
        head += " TFLOP/s | fraction of limit |"
    head += " status | check |"
    lines = [head, "|" + "---|" * head[1:].count("|")]
    for r in rows:
        mm = matmul.get(r.m)
        line = (
            f"| {r.impl} | {r.m} | {r.d} | {r.dtype} | {_fmt(r.fwd_ms)} | {_fmt(r.bwd_ms)} | "
            f"{_fmt(r.fwdbwd_ms)} | {_fmt(r.fwdbwd_ms / mm if r.fwdbwd_ms and mm else None, '.2f')}"
            f" | {_fmt(r.speedup, '.2f')}{'×' if r.speedup else ''} | {_fmt(r.mem_mb, '.0f')} | "
            f"{_fmt(r.mem_ratio, '.3f')} |"
        )
        if gpu:
            line += f" {_fmt(r.tflops)} | {_fmt(r.extra.get('fraction_of_limit'), '.2f')} |"
        lines.append(line + f" {r.status} | {r.check} |")
    return lines


def plot_loss(rows: list[loss_bench.LossRow], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl in dict.fromkeys(r.impl for r in rows):
        ok = [r for r in rows if r.impl == impl and r.status == "ok"]
        if not ok:
            continue
        ms = [r.m for r in ok]
        ax_t.plot(ms, [r.fwdbwd_ms for r in ok], marker="o", label=impl)
        if all(r.mem_mb for r in ok):
            ax_m.plot(ms, [r.mem_mb for r in ok], marker="o", label=impl)
    for ax, ylabel in ((ax_t, "forward+backward time (ms)"), (ax_m, "peak extra memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (rows of all views)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


@dataclass
class Context:
    """What every section of a run shares: the options, the device and the progress line."""

    args: argparse.Namespace
    device: torch.device
    tag: dict[str, Any]
    progress: Callable[[str], None]

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Section:
    """One section's result: its table, what goes into the JSON record, and whether a row's
    check against the reference failed."""

    title: str
    lines: list[str]
    record: Any
    failed: bool
    notes: list[str] = field(default_factory=list)


def loss_section(ctx: Context) -> Section:
    quick = ctx.args.quick
    if ctx.gpu:
        dtype, d, reps = torch.bfloat16, 128, 20
        sizes = [4096, 8192, 16384] if quick else [4096, 8192, 16384, 32768, 65536, 131072]
    else:
        dtype, d, reps = torch.float32, 128, 5
        sizes = [512, 2048] if quick else [512, 2048, 8192, 32768, 65536]
    peer_max = sizes[0] if quick else None
    rows = loss_bench.run(ctx.device, dtype, sizes, d, reps, ctx.progress, peer_max_m=peer_max)
    matmul = {m: loss_bench.matmul_ms(ctx.device, dtype, m, d) for m in sizes if m <= 16384}
    title = f"NT-Xent forward+backward, D = {d}, {str(dtype).replace('torch.', '')}"
    if not ctx.args.no_save:
        ctx.args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{ctx.device.type}{'-quick' if quick else ''}"
        plot_loss(rows, ctx.args.out / f"loss-{stem}.png", f"{title} — {ctx.tag['device']}")
    return Section(
        title,
        loss_table(rows, matmul, gpu=ctx.gpu),
        {"rows": [asdict(r) for r in rows], "matmul_ms": matmul, "dtype": str(dtype)},
        any(r.status.startswith(("CHECK FAILED", "error")) for r in rows),
        [
            "× matmul: time as a multiple of one M×M×D matmul of the same dtype here "
            "(the fused algorithm's floor is about 2)."
        ],
    )


def _rows_section(title: str, lines: list[str], rows: list[Any]) -> Section:
    """A section over rows with a ``status`` each: failed when a row's check failed."""
    failed = any(r.status.startswith("CHECK FAILED") for r in rows)
    return Section(title, lines, {"rows": [asdict(r) for r in rows]}, failed)


def _record_section(
    title: str, lines: list[str], res: dict[str, Any], bad: tuple[str, ...]
) -> Section:
    """A section over one record: failed when its ``status`` starts with one of ``bad``."""
    return Section(title, lines, res, str(res.get("status", "")).startswith(bad))


def compat_section(ctx: Context) -> Section:
    dtype = torch.bfloat16 if ctx.gpu else torch.float32
    rows = compat_bench.run(ctx.device, dtype, ctx.args.quick, ctx.progress)
    title = f"Switching from a peer: its loss vs fastclr.compat, D = 128, {dtype}"
    return _rows_section(title, compat_bench.table(rows), rows)


def augment_section(ctx: Context) -> Section:
    reps = 3 if ctx.args.quick else 5
    rows = augment_bench.run(ctx.device, ctx.args.quick, reps=reps, progress=ctx.progress)
    title = "Augmentation: two SimCLR views per image"
    return _rows_section(title, augment_bench.table(rows, gpu=ctx.gpu), rows)


def train_section(ctx: Context) -> Section:
    res = train_bench.run(ctx.device, ctx.args.quick, ctx.progress)
    title = "End to end: pretraining step vs model-only step"
    return _record_section(title, train_bench.table(res), res, ("CHECK FAILED",))


def data_section(ctx: Context) -> Section:
    res = data_bench.run(ctx.device, ctx.args.quick, ctx.progress)
    title = "Data: loaders from JPEG files vs the model step"
    return _record_section(title, data_bench.table(res), res, ("CHECK FAILED", "error"))


def pipeline_section(ctx: Context) -> Section:
    """fastclr's step vs the lightly-example pipeline (bench/pipeline_bench.py): where lightly and
    torchvision import (``.venv-peers``); elsewhere one line saying why it was skipped."""
    import pipeline_bench

    lines, record, failed = pipeline_bench.section(ctx.args.quick, ctx.args.no_save)
    return Section("Pretraining step vs the lightly-example pipeline", lines, record, failed)


#: Sections only ``--only NAME`` runs: pipeline needs lightly and takes over an hour on 2 cores.
EXTRA_SECTIONS: dict[str, Callable[[Context], Section]] = {"pipeline": pipeline_section}

#: The sections, in the order a full run makes them (``--only NAME`` picks some).
SECTIONS: dict[str, Callable[[Context], Section]] = {
    "loss": loss_section,
    "compat": compat_section,
    "augment": augment_section,
    "train": train_section,
    "data": data_section,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for CI (< 1 minute)")
    p.add_argument("--only", choices=[*SECTIONS, *EXTRA_SECTIONS], action="append")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for JSON/Markdown/PNG")
    p.add_argument("--no-save", action="store_true", help="print only, write no files")
    return p.parse_args(argv)


def _save(args: argparse.Namespace, device: torch.device, md: list[str], record: Any) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{device.type}{'-quick' if args.quick else ''}"
    (args.out / f"throughput-{stem}.md").write_text("\n".join(md) + "\n")
    history = args.out / f"throughput-{stem}.jsonl"
    with history.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"wrote {args.out}/throughput-{stem}.md, {history.name} and plots")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        # Peak-memory figures on CPU come from the process's resident set. glibc keeps freed
        # blocks of up to 32 MB for reuse once its mmap threshold adapts, which hides the memory
        # of small implementations; a fixed threshold makes every large block its own mapping.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 17)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    tag = machine_tag(device)
    print(
        f"fastclr benchmark on {tag['device']} ({device.type}, {tag['threads']} threads), "
        f"torch {tag['torch']}, triton {tag['triton']}"
    )
    print(f"loss backends here: {', '.join(fastclr.available_backends())}")
    record: dict[str, Any] = {"machine": tag, "quick": args.quick, "sections": {}}
    md: list[str] = [f"# fastclr benchmark — {tag['device']}", "", f"`{json.dumps(tag)}`", ""]
    t_start = time.perf_counter()
    failed = False
    with tqdm(total=0, bar_format="{desc}", leave=False, file=sys.stderr) as bar:

        def progress(msg: str) -> None:
            bar.set_description_str(f"[{time.perf_counter() - t_start:5.0f}s] {msg}")

        ctx = Context(args, device, tag, progress)
        for name in args.only or list(SECTIONS):
            section = {**SECTIONS, **EXTRA_SECTIONS}[name](ctx)
            failed |= section.failed
            bar.clear()
            print(f"\n## {section.title}\n")
            print("\n".join([*section.lines, *section.notes]))
            record["sections"][name] = section.record
            md += [f"## {section.title}", "", *section.lines, ""]
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if not args.no_save:
        _save(args, device, md, record)
    if failed:
        print("SOME CHECKS FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
