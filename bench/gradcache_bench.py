"""Large batches on one device: peak memory and time per image of ``fastclr.contrastive_backward``.

    python bench/gradcache_bench.py            # CPU: memory vs batch at chunk 256, time ratios
    python bench/gradcache_bench.py --quick    # a small sweep (smoke size, ~1 min)
    python bench/gradcache_bench.py --cuda     # the GPU case: ResNet-50 224², bf16, batch 4,096

Every number comes from the library function on fastclr's own ResNet: the unchunked step is
``contrastive_backward(chunk_size=batch)`` (one chunk is the plain step), the chunked one the same
call with a smaller chunk. Before anything is timed the chunked gradients are checked against
``contrastive_backward_reference`` in float64 (``fastclr.testing``'s rule, k = 2 × the float32
reference's own error).

- Memory: peak extra memory of one step (forward, loss, backward) over what the process holds
  before it (model, views). On CPU each configuration runs in a fresh process, from the peak
  resident set size (``VmHWM``); on CUDA from the caching allocator's peak.
- Time: median over interleaved rounds, each configuration stepped on about the same number of
  images per round; on CPU the process's CPU time (one thread: other jobs on a shared machine
  stretch wall time, not the work), on CUDA wall time. Ratios are measured in one run.
- "Fits unchunked": the budget is the chunked step's peak at the largest batch; the largest batch
  the unchunked step runs within that budget is where the two are compared.

Results go to bench/results/gradcache-{cpu,cuda}.{md,json} with the machine tag and the command.
The H200 section of the Markdown is an estimate on paper (``gradcache_estimate.py``), labelled so.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import measure  # noqa: E402
from gradcache_estimate import activation_bytes_per_view, estimate_lines, h200_estimate  # noqa: E402

import fastclr  # noqa: E402
from fastclr.gradcache import contrastive_backward_reference  # noqa: E402
from fastclr.models import build_model  # noqa: E402
from fastclr.testing import error_ratio  # noqa: E402

RESULTS = HERE / "results"


@dataclass(frozen=True)
class Case:
    """One model and input configuration (batch sizes are in images; each gives two views)."""

    arch: str = "resnet18"
    stem: Literal["cifar", "imagenet"] = "imagenet"
    width: float = 0.25
    image_size: int = 64
    precision: str = "fp32"  # fp32, or bf16 autocast
    device: str = "cpu"
    seed: int = 0

    @property
    def label(self) -> str:
        return (
            f"{self.arch} ({self.stem} stem, width {self.width:g}), {self.image_size}² views, "
            f"{self.precision}, {self.device}"
        )


# The CPU table: the 64-px, width-0.25 ResNet-18 from batch 256 to 4,096 at chunk 256.
# The ImageNet stem (stride-4 stem) keeps a 4,096-image step near half a minute on one core; the
# CIFAR stem, which `fastclr pretrain` picks up to 64 px, costs ~13× more per image here.
CPU_CASE = Case()
CPU_BATCHES = (256, 512, 1024, 2048, 4096)
CPU_CHUNK = 256
QUICK_BATCHES = (32, 64, 128)
QUICK_CHUNK = 32
# The GPU case (issue 21): ResNet-50 at 224², bf16 autocast, 4,096 images per step.
CUDA_CASE = Case("resnet50", "imagenet", 1.0, 224, "bf16", "cuda")


# --------------------------------------------------------------------------------------------
# one step


@dataclass
class Step:
    """A model, a batch of two views and the loss, ready for ``contrastive_backward``."""

    model: nn.Module
    views: list[Tensor]
    loss_fn: nn.Module
    case: Case

    def autocast(self) -> Any:
        if self.case.precision == "fp32":
            return None
        return torch.autocast(self.case.device, dtype=torch.bfloat16)

    def __call__(self, chunk: int) -> Tensor:
        self.model.zero_grad(set_to_none=True)
        return fastclr.contrastive_backward(
            self.model,
            self.views,
            self.loss_fn,
            chunk_size=chunk,
            embed=lambda out: out[1].float(),  # as fastclr's training step: (h, z), z in fp32
            autocast=self.autocast(),
        )


def make_step(case: Case, batch: int) -> Step:
    torch.manual_seed(case.seed)
    dev = torch.device(case.device)
    model = build_model(case.arch, case.stem, case.width).to(dev)
    dtype = torch.float32 if case.precision == "fp32" else torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(case.seed + 1)
    shape = (batch, 3, case.image_size, case.image_size)
    views = [
        torch.randn(shape, generator=g, device=dev, dtype=dtype).contiguous(
            memory_format=torch.channels_last
        )
        for _ in range(2)
    ]
    return Step(model, views, fastclr.NTXentLoss(0.5, check_finite=False), case)


def _embed_as(dtype: torch.dtype) -> Callable[[Any], Tensor]:
    return lambda out: out[1].to(dtype)


def check(case: Case, batch: int = 12, chunk: int = 5) -> float:
    """Chunked gradients vs the float64 chunk-by-chunk reference on a small batch of ``case``'s
    model (fp32): error / allowed error, ≤ 1 passes (raises AssertionError otherwise)."""
    small = replace(case, precision="fp32")
    got = make_step(small, batch)
    got(chunk)
    grads = [p.grad for p in got.model.parameters() if p.grad is not None]
    refs: list[list[Tensor]] = []
    for dtype in (torch.float64, torch.float32):
        ref = make_step(small, batch)
        ref.model.to(dtype)
        views = [v.to(dtype) for v in ref.views]
        contrastive_backward_reference(
            ref.model, views, ref.loss_fn, chunk_size=chunk, embed=_embed_as(dtype)
        )
        refs.append([p.grad for p in ref.model.parameters() if p.grad is not None])
    ratio = error_ratio(grads, refs[0], refs[1])
    if not ratio <= 1.0:
        raise AssertionError(f"chunked gradients off the float64 reference: {ratio:.3g} × bound")
    return ratio


# --------------------------------------------------------------------------------------------
# memory


def peak_mb(case: Case, batch: int, chunk: int) -> float | None:
    """Peak extra memory of one step, MB (CPU: in a fresh process; CUDA: allocator peak)."""
    if case.device == "cpu":
        return _peak_in_child(case, batch, chunk)
    return _measure_peak(case, batch, chunk)


def _measure_peak(case: Case, batch: int, chunk: int) -> float | None:
    """Peak extra MB of one step in this process; None where the device runs out of memory."""
    step = make_step(case, batch)
    warm = make_step(case, 4)  # first-call library set-up outside the measured step
    warm.model = step.model
    warm(4)
    step.model.zero_grad(set_to_none=True)
    try:
        return measure.peak_extra_mb(lambda: step(chunk), torch.device(case.device))
    except torch.cuda.OutOfMemoryError:
        del step, warm
        torch.cuda.empty_cache()
        return None


def _peak_in_child(case: Case, batch: int, chunk: int) -> float | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-peak"]
    cmd.append(json.dumps({"case": asdict(case), "batch": batch, "chunk": chunk}))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    value = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    return None if value is None else float(value)


def memory_sweep(
    case: Case,
    batches: Sequence[int],
    chunk: int,
    max_unchunked_mb: float,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Chunked and unchunked peaks per batch. The unchunked step is skipped once its peak,
    extrapolated linearly from the last two batches, would pass ``max_unchunked_mb`` (what this
    machine can spare)."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        progress(f"memory: batch {batch}, chunk {chunk}")
        rows.append({"batch": batch, "chunked_mb": peak_mb(case, batch, chunk)})
    for i, row in enumerate(rows):
        prev = [(r["batch"], r["unchunked_mb"]) for r in rows[:i] if r.get("unchunked_mb")]
        if len(prev) >= 2:
            (b0, m0), (b1, m1) = prev[-2:]
            if m1 + (m1 - m0) / (b1 - b0) * (row["batch"] - b1) > max_unchunked_mb:
                row["unchunked_mb"] = None
                continue
        progress(f"memory: batch {row['batch']}, unchunked")
        row["unchunked_mb"] = peak_mb(case, row["batch"], row["batch"])
    return rows


def comparison_batches(rows: list[dict[str, Any]], chunk: int) -> tuple[int, int, float]:
    """(fit, same, budget). ``budget``: the chunked step's peak at the largest batch; ``fit``: the
    largest batch whose unchunked peak is within it; ``same``: the largest batch above the chunk
    that ran unchunked at all, where the two steps are compared at equal batch."""
    budget = float(rows[-1]["chunked_mb"])
    ran = [r for r in rows if r["unchunked_mb"] is not None]
    fits = [r["batch"] for r in ran if r["unchunked_mb"] <= budget]
    same = [r["batch"] for r in ran if r["batch"] > chunk]
    if not fits or not same:
        raise RuntimeError(
            f"sweep too small: need a batch within {budget:.0f} MB unchunked and one above the "
            f"chunk ({chunk}) that runs unchunked"
        )
    return max(fits), max(same), budget


# --------------------------------------------------------------------------------------------
# time


def _timed(fn: Callable[[], object], reps: int, device: str) -> tuple[float, float]:
    """(wall s, process CPU s) of ``reps`` calls of ``fn``."""
    if device == "cuda":
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def _first_pass(step: Step, chunk: int) -> Callable[[], object]:
    """The chunked step's extra work alone: every chunk forwarded without a graph."""

    def run() -> None:
        n = step.views[0].shape[0]
        with torch.no_grad():
            for start in range(0, n, chunk):
                x = torch.cat([v[start : start + chunk] for v in step.views])
                amp = step.autocast()
                with amp if amp is not None else contextlib.nullcontext():
                    step.model(x)

    return run


def _loss_alone(step: Step, dim: int = 128) -> Callable[[], object]:
    """The loss's forward and backward over every embedding of the batch (D = 128)."""
    n = step.views[0].shape[0]
    z = [torch.randn(n, dim, device=step.case.device, requires_grad=True) for _ in step.views]
    return lambda: step.loss_fn(*z).backward()


def time_ratios(
    case: Case,
    batches: dict[str, int],
    chunk: int,
    rounds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """ms per image, interleaved rounds, of the unchunked step at ``fit`` and ``same`` images,
    the chunked one at ``same`` and ``largest`` (``batches`` names the three), and the chunked
    step's extra parts at ``largest``: the graph-free first pass and the loss.

    ``largest_vs_fit`` = chunked at ``largest`` / unchunked at ``fit``: the price per image of the
    large batch against the largest batch that fits without chunks; ``overhead_same_batch`` =
    chunked / unchunked at ``same``. Each is the median over rounds of that round's ratio (both
    measured within minutes of each other), with the range. Each round runs every configuration
    on about ``largest`` images (a smaller batch is stepped repeatedly). On CPU the times are the
    process's CPU time (one thread: other jobs on a shared machine stretch wall time, not the
    work done; wall times are recorded too); on CUDA wall time.
    """
    fit, same, largest = batches["fit"], batches["same"], batches["largest"]
    steps = {b: make_step(case, b) for b in sorted({fit, same, largest})}
    for st in steps.values():
        st.model = steps[fit].model  # one model: same weights, same library state
    wanted = {
        "unchunked_fit": ("step", fit, fit),
        "unchunked_same": ("step", same, same),
        "chunked_same": ("step", same, chunk),
        "chunked_largest": ("step", largest, chunk),
        "first_pass_largest": ("first pass", largest, chunk),
        "loss_largest": ("loss", largest, 0),
    }
    calls: dict[tuple[str, int, int], Callable[[], object]] = {}
    for kind, b, c in set(wanted.values()):
        if kind == "step":
            calls[(kind, b, c)] = functools.partial(steps[b], c)
        elif kind == "first pass":
            calls[(kind, b, c)] = _first_pass(steps[b], c)
        else:
            calls[(kind, b, c)] = _loss_alone(steps[b])
    for fn in calls.values():  # warm-up: first-call set-up is not part of a step
        fn()
    clock = 0 if case.device == "cuda" else 1  # wall on CUDA, process CPU time on CPU
    times: dict[tuple[str, int, int], list[tuple[float, float]]] = {k: [] for k in calls}
    for r in range(rounds):
        progress(f"time: round {r + 1}/{rounds}")
        for key, fn in sorted(calls.items()):
            reps = max(1, largest // key[1])
            wall, cpu = _timed(fn, reps, case.device)
            times[key].append((wall / (reps * key[1]) * 1e3, cpu / (reps * key[1]) * 1e3))
    per_round = {name: [t[clock] for t in times[key]] for name, key in wanted.items()}

    def ratio(num: str, den: str) -> dict[str, float]:
        rs = [a / b for a, b in zip(per_round[num], per_round[den], strict=True)]
        return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}

    return {
        **batches,
        "chunk": chunk,
        "rounds": rounds,
        "clock": "wall" if clock == 0 else "process CPU time",
        "ms_per_image": {k: statistics.median(v) for k, v in per_round.items()},
        "ms_per_image_per_round": per_round,
        "all_wall_cpu": {"/".join(map(str, k)): v for k, v in times.items()},
        "largest_vs_fit": ratio("chunked_largest", "unchunked_fit"),
        "overhead_same_batch": ratio("chunked_same", "unchunked_same"),
    }


# --------------------------------------------------------------------------------------------
# runs


def run_case(
    case: Case,
    batches: Sequence[int],
    chunk: int,
    rounds: int,
    max_unchunked_mb: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Check, memory sweep, then the time ratios (see :func:`time_ratios`)."""
    progress("check: chunked gradients vs the float64 reference")
    ratio = check(case)
    rows = memory_sweep(case, batches, chunk, max_unchunked_mb, progress)
    fit, same, budget = comparison_batches(rows, chunk)
    named = {"fit": fit, "same": same, "largest": max(batches)}
    timing = time_ratios(case, named, chunk, rounds, progress)
    return {
        "case": asdict(case),
        "check_error_ratio": ratio,
        "chunk": chunk,
        "memory": rows,
        "budget_mb": budget,
        "timing": timing,
    }


def cuda_case(
    batch: int = 4096,
    chunk: int = 512,
    fit_batches: Sequence[int] = (256, 512, 1024),
    rounds: int = 3,
    case: Case = CUDA_CASE,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The GPU case of issue 21, for a GPU script: ResNet-50 at 224², bf16 autocast, ``batch``
    images chunked by ``chunk``, against the unchunked step at the largest of ``fit_batches``
    that fits within the chunked step's peak (an unchunked batch that runs out of memory is
    recorded as not fitting). About 3 minutes on an H100-class GPU, cuDNN autotuning included
    (estimate). ``case`` can shrink it: the tests run it on CPU with a tiny model."""
    if case.device == "cuda":
        torch.backends.cudnn.benchmark = True
        limit = torch.cuda.get_device_properties(0).total_memory / 2**20
    else:
        limit = float("inf")
    return run_case(case, [*fit_batches, batch], chunk, rounds, limit, progress)


def _tag(case: Case) -> dict[str, Any]:
    import throughput

    tag: dict[str, Any] = throughput.machine_tag(torch.device(case.device))
    return tag


def _ratio_text(r: dict[str, float]) -> str:
    return f"**{r['median']:.2f}×** ({r['min']:.2f}–{r['max']:.2f})"


def _parts_line(t: dict[str, Any]) -> str:
    ms = t["ms_per_image"]
    total = ms["unchunked_fit"] + ms["first_pass_largest"] + ms["loss_largest"]
    return (
        f"Where the chunked step's time at {t['largest']:,} goes, parts timed alone (ms / "
        f"image): the unchunked step at {t['fit']:,} ({ms['unchunked_fit']:.2f}) + the "
        f"graph-free first pass ({ms['first_pass_largest']:.2f}) + the loss over all "
        f"{2 * t['largest']:,} embeddings ({ms['loss_largest']:.3f}) ≈ {total:.2f}; measured "
        f"{ms['chunked_largest']:.2f}."
    )


def markdown(result: dict[str, Any], tag: dict[str, Any], command: str) -> list[str]:
    case = Case(**result["case"])
    t = result["timing"]
    ms = t["ms_per_image"]
    lines = [
        f"# contrastive_backward (gradient caching) — {tag['device']}",
        "",
        f"`{json.dumps(tag)}`",
        "",
        f"Command: `{command}`",
        "",
        f"{case.label}; two views per image; NTXentLoss τ = 0.5. Check before timing: chunked "
        f"gradients vs the float64 reference at error/bound {result['check_error_ratio']:.2g}.",
        "",
        f"## Peak extra memory of one step (chunk {result['chunk']:,} images)",
        "",
        "| batch (images) | chunked MB | unchunked MB | unchunked / chunked |",
        "|---|---|---|---|",
    ]
    for r in result["memory"]:
        c, u = r["chunked_mb"], r["unchunked_mb"]
        ratio = f"{u / c:.2f}" if c and u else "—"
        u_text = f"{u:,.0f}" if u is not None else "— (too large: not run, or out of memory)"
        lines.append(f"| {r['batch']:,} | {c:,.0f} | {u_text} | {ratio} |")
    lines += [
        "",
        f"Budget = the chunked step's peak at {t['largest']:,} images, "
        f"{result['budget_mb']:,.0f} MB: the largest batch the unchunked step runs within it is "
        f"{t['fit']:,}.",
        "",
        f"## Time per image ({t['clock']}, median of {t['rounds']} interleaved rounds)",
        "",
        "| step | batch | chunk | ms / image | ratio (median of rounds, range) | against |",
        "|---|---|---|---|---|---|",
        f"| unchunked | {t['fit']:,} | — | {ms['unchunked_fit']:.2f} | | |",
        f"| chunked | {t['largest']:,} | {t['chunk']:,} | {ms['chunked_largest']:.2f} | "
        f"{_ratio_text(t['largest_vs_fit'])} | unchunked at {t['fit']:,} (largest that fits) |",
        f"| unchunked | {t['same']:,} | — | {ms['unchunked_same']:.2f} | | |",
        f"| chunked | {t['same']:,} | {t['chunk']:,} | {ms['chunked_same']:.2f} | "
        f"{_ratio_text(t['overhead_same_batch'])} | unchunked at the same batch |",
        "",
        _parts_line(t),
        "",
        "Target: ≤ 1.4× (one extra forward; by FLOPs (1 + 1 + 2) / (1 + 2) = 1.33×).",
    ]
    return lines


def save(result: dict[str, Any], out: Path, command: str, estimate: list[str]) -> Path:
    case = Case(**result["case"])
    tag = _tag(case)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gradcache-{case.device}"
    md = [*markdown(result, tag, command), "", *estimate]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    record = {"tag": tag, "command": command, **result}
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    return out / f"{stem}.md"


def _child_peak(spec: str) -> None:
    """``--child-peak JSON``: one measurement in this fresh process; prints {"peak_mb": ...}."""
    args = json.loads(spec)
    torch.set_num_threads(int(args.get("threads", 1)))
    value = _measure_peak(Case(**args["case"]), args["batch"], args["chunk"])
    print(json.dumps({"peak_mb": value}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sweep (batches 32-128, chunk 32)")
    p.add_argument("--cuda", action="store_true", help="the GPU case (ResNet-50 224² bf16)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: shared machine)")
    p.add_argument(
        "--max-unchunked-mb",
        type=float,
        default=8000.0,
        help="CPU: skip unchunked batches whose extrapolated peak passes this",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md/.json results")
    p.add_argument("--no-save", action="store_true", help="print only, write no files")
    p.add_argument("--child-peak", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_peak:
        _child_peak(args.child_peak)
        return 0
    torch.set_num_threads(args.threads)
    command = "python bench/gradcache_bench.py " + shlex.join(argv or sys.argv[1:])
    progress: Callable[[str], None] = lambda m: print(f"[gradcache] {m}", flush=True)  # noqa: E731
    if args.cuda:
        if not torch.cuda.is_available():
            print("[gradcache] --cuda needs a CUDA device", file=sys.stderr)
            return 2
        result = cuda_case(rounds=args.rounds, progress=progress)
    elif args.quick:
        result = run_case(
            CPU_CASE, QUICK_BATCHES, QUICK_CHUNK, args.rounds, args.max_unchunked_mb, progress
        )
    else:
        result = run_case(
            CPU_CASE, CPU_BATCHES, CPU_CHUNK, args.rounds, args.max_unchunked_mb, progress
        )
    c = CUDA_CASE
    act = activation_bytes_per_view(c.arch, c.stem, c.width, c.image_size, c.precision == "bf16")
    est = estimate_lines(h200_estimate(act))
    print("\n".join([*markdown(result, _tag(Case(**result["case"])), command), "", *est]))
    if not args.no_save:
        print(f"[gradcache] wrote {save(result, args.out, command.strip(), est)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
