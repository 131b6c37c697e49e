"""GPU benchmark of the NT-Xent loss: fastclr's Triton path against the torch reference.

Checks first, then times, then reports (STYLE.md). The Triton loss and gradients are compared with
the float64 reference at a checkable size; then one forward + backward (``fastclr.ntxent`` on two
bf16 views, D = 128) is timed two ways for each implementation and size:

* **eager**: ``triton.testing.do_bench`` (median), host launch cost included — what a plain
  training loop pays;
* **graph**: the same step captured once in a ``torch.cuda.CUDAGraph`` and replayed (median of
  CUDA-event timings): the kernels alone, without the host cost of small launches.

Each row also gives the kernel launches of one step on the device (torch.profiler), the fraction
of the overlapped floor max(4·M²·D / 990 TFLOP/s, M² / 4.2e12 exp/s) (H200/H100 only) and the
on-paper prediction of bench/results/triton-sm90*.json for the running triton, when present.
At 2N = 65536 the reference's M×M matrices are expected not to fit (reported as "OOM").

    python bench/gpu_loss.py [--quick] [--out DIR]    on a CUDA device
    python bench/gpu_loss.py --smoke --out DIR         tiny sizes on CPU under the interpreter
    python bench/gpu_loss.py --dry-run                 imports everything, prints the plan, exits
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# Overlapped-floor rates (as bench/aot_model.py): dense bf16 FLOP/s and MUFU exp/s by device name.
PEAKS = {"H200": (990e12, 132 * 16 * 1.98e9), "H100": (989e12, 132 * 16 * 1.98e9)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(RESULTS), help="folder for gpu_loss.json / .md / .jsonl")
    p.add_argument("--quick", action="store_true", help="M = 8192 only, fewer repetitions")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU under the interpreter")
    p.add_argument("--dry-run", action="store_true", help="import everything, print the plan")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--d", type=int, default=128)
    return p.parse_args(argv)


def floor_ms(m: int, d: int, device: str) -> float | None:
    """The overlapped floor of one forward + backward, or None for a device without known peaks."""
    peak = next((v for k, v in PEAKS.items() if k in device), None)
    if peak is None:
        return None
    return max(4.0 * m * m * d / peak[0], float(m) * m / peak[1]) * 1e3


def _views(m: int, d: int, device: str, dtype: Any) -> tuple[Any, Any]:
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    zi = torch.randn(m // 2, d, device=device, generator=g, dtype=torch.float32)
    zj = zi + 0.3 * torch.randn(m // 2, d, device=device, generator=g, dtype=torch.float32)
    return zi.to(dtype).requires_grad_(), zj.to(dtype).requires_grad_()


def check(tau: float, m: int, device: str) -> dict[str, Any]:
    """The Triton loss and gradients against float64, beside torch's own bf16 error. bf16
    gradients carry large relative errors for everyone (the LSE and positive terms nearly
    cancel); the tests hold the kernel to 2× torch's error, this guard (4×) only stops a broken
    build from being timed."""
    import torch

    import fastclr
    from fastclr.reference import ntxent_reference, views_to_batch
    from fastclr.testing import error_ratio, reference_error

    def loss_and_grads(backend: str, zi: Any, zj: Any) -> tuple[Any, list[Any]]:
        zi, zj = zi.detach().requires_grad_(), zj.detach().requires_grad_()
        loss = fastclr.ntxent(zi, zj, temperature=tau, backend=backend)  # type: ignore[arg-type]
        loss.backward()
        return loss.detach(), [zi.grad, zj.grad]

    zi, zj = _views(m, 128, device, torch.bfloat16)
    got, got_g = loss_and_grads("triton", zi, zj)
    own, own_g = loss_and_grads("reference", zi, zj)
    z64 = [zi.detach().double().requires_grad_(), zj.detach().double().requires_grad_()]
    ref = ntxent_reference(*views_to_batch(z64), tau)
    ref.backward()
    ref_g = [t.grad for t in z64]
    return {
        "M": m,
        "loss_ratio": error_ratio(got, ref, own, k=4, atol=2**-7),
        "grad_ratio": error_ratio(got_g, ref_g, own_g, k=4, rtol=2**-8),
        "loss_abs_err": reference_error(ref, got),
        "grad_max_abs_err": reference_error(ref_g, got_g),
        "torch_bf16_loss_abs_err": reference_error(ref, own),
        "torch_bf16_grad_max_abs_err": reference_error(ref_g, own_g),
    }


def time_eager(fn: Callable[[], None], grads: list[Any], cuda: bool, reps: int) -> float:
    """Median ms of ``fn`` launched from Python (do_bench on CUDA, wall clock on CPU)."""
    if cuda:
        import triton

        return float(
            triton.testing.do_bench(fn, grad_to_none=grads, rep=reps * 10, return_mode="median")
        )
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_graph(fn: Callable[[], None], grads: list[Any], reps: int) -> float:
    """Median ms of one replay of ``fn`` captured in a CUDA graph (warmed up, tuned, outside)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # compile and autotune outside the capture
            for g in grads:
                g.grad = None
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    for g in grads:
        g.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(reps, 5)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times)


def count_launches(fn: Callable[[], None]) -> int | None:
    """Device kernels of one call of ``fn`` (torch.profiler), None where the profiler fails."""
    import torch

    try:
        fn()  # warm: compiled and tuned
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            fn()
            torch.cuda.synchronize()
        cuda = torch.autograd.DeviceType.CUDA
        return sum(
            1
            for e in prof.events()
            if e.device_type == cuda and not e.name.startswith(("Memcpy", "Memset"))
        )
    except Exception as exc:  # the profiler is optional; say why it is missing
        print(f"(launch count unavailable: {type(exc).__name__}: {exc})")
        return None


def _step(backend: str, zi: Any, zj: Any, tau: float) -> Callable[[], None]:
    import fastclr

    def run() -> None:
        loss = fastclr.ntxent(zi, zj, temperature=tau, backend=backend, check_finite=False)  # type: ignore[arg-type]
        loss.backward()

    return run


def bench_row(
    backend: str, m: int, args: argparse.Namespace, cuda: bool, device: str
) -> dict[str, Any]:
    """One implementation at one size: eager and graph times, launches, memory, floor fraction."""
    import torch

    row: dict[str, Any] = {
        "impl": backend,
        "M": m,
        "D": args.d,
        "dtype": "bf16",
        "tau": args.temperature,
    }
    zi, zj = _views(m, args.d, "cuda" if cuda else "cpu", torch.bfloat16)
    fn = _step(backend, zi, zj, args.temperature)
    reps = 5 if args.quick else 20
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        row["eager_ms"] = time_eager(fn, [zi, zj], cuda, reps)
        if cuda:
            row["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            row["graph_ms"] = time_graph(fn, [zi, zj], reps)
            row["launches"] = count_launches(fn)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
        return row
    row["status"] = "ok"
    best = row.get("graph_ms", row["eager_ms"])
    row["work_tflops"] = 5.0 * m * m * args.d / (best * 1e-3) / 1e12  # what the code computes
    limit = floor_ms(m, args.d, device)
    if limit is not None:
        row["floor_ms"] = limit
        row["fraction_of_floor"] = limit / best
    return row


def predicted(m: int) -> float | None:
    """The on-paper µs of the committed AOT report for the running triton (None if absent)."""
    import triton

    major_minor = ".".join(triton.__version__.split(".")[:2])
    for name in (f"triton-sm90-triton{major_minor}.json", "triton-sm90.json"):
        path = RESULTS / name
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("triton", "").startswith(major_minor):
                mo = next((x for x in data.get("model", []) if x.get("M") == m), None)
                return mo.get("predicted_us") if mo else None
    return None


def table(rows: list[dict[str, Any]], header: str) -> str:
    """The Markdown table of the rows (speed-ups against the reference of the same size)."""

    def f(r: dict[str, Any], key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "—"

    lines = [
        header,
        "",
        "| impl | M | D | eager ms | graph ms | launches | × vs reference (graph) | "
        "work TFLOP/s | fraction of floor | predicted µs (AOT) | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['impl']} | {r['M']} | {r['D']} | {r['status']} |" + " — |" * 7)
            continue
        lines.append(
            f"| {r['impl']} | {r['M']} | {r['D']} | {f(r, 'eager_ms', '.3f')} | "
            f"{f(r, 'graph_ms', '.3f')} | {f(r, 'launches', 'd')} | {f(r, 'speedup', '.1f')} | "
            f"{f(r, 'work_tflops', '.0f')} | {f(r, 'fraction_of_floor', '.2f')} | "
            f"{f(r, 'predicted_us', '.0f')} | {f(r, 'peak_extra_mb', '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def _dry_run(args: argparse.Namespace) -> int:
    """Every import the real run makes, then the plan; no device is touched."""
    import torch
    import triton
    import triton.testing

    import fastclr
    import fastclr.ops.triton_fused
    import fastclr.ops.triton_ntxent
    from fastclr.reference import ntxent_reference  # noqa: F401
    from fastclr.testing import error_ratio  # noqa: F401

    sizes = [8192] if args.quick else [8192, 65536]
    print(
        f"[gpu_loss] dry run: torch {torch.__version__}, triton {triton.__version__}, fastclr "
        f"from {Path(fastclr.__file__).parent}; would check M=4096 against float64, then time "
        f"reference and triton at M={sizes} (eager and CUDA graph); writes {args.out}/gpu_loss.*"
    )
    return 0


def write(out: Path, record: dict[str, Any], md: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_loss.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "gpu_loss.md").write_text(md)
    with (out / "gpu_loss.jsonl").open("a") as fh:  # the machine-tagged running record
        fh.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.dry_run:
        return _dry_run(args)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    import triton

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_loss.py needs a CUDA device (use --smoke to test the script on CPU)")
        return 2
    device = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    sizes = [64, 96] if args.smoke else [8192] if args.quick else [8192, 65536]
    checked = check(args.temperature, 48 if args.smoke else 4096, "cuda" if cuda else "cpu")
    print(
        f"check M={checked['M']}: error / (4x torch bf16 error + floor): loss "
        f"{checked['loss_ratio']:.2f}, grad {checked['grad_ratio']:.2f}"
    )
    if not (checked["loss_ratio"] <= 1 and checked["grad_ratio"] <= 1):
        print("FAILED: the Triton loss is further from the float64 reference than 4x torch's bf16")
        return 1
    rows = [bench_row(b, m, args, cuda, device) for m in sizes for b in ("reference", "triton")]
    for r in rows:
        ref = next((x for x in rows if x["M"] == r["M"] and x["impl"] == "reference"), {})
        key = "graph_ms" if "graph_ms" in r and "graph_ms" in ref else "eager_ms"
        if r.get(key) and ref.get(key):
            r["speedup"] = ref[key] / r[key]
        if r["impl"] == "triton" and cuda:
            r["predicted_us"] = predicted(r["M"])
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    header = (
        f"# NT-Xent loss forward + backward, {device} ({stamp}), torch {torch.__version__}, "
        f"triton {triton.__version__}\n\n`python bench/gpu_loss.py"
        f"{' --quick' if args.quick else ''}{' --smoke' if args.smoke else ''}`"
    )
    md = table(rows, header)
    print(md)
    record = {
        "benchmark": "gpu_loss",
        "date": stamp,
        "device": device,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "smoke": args.smoke,
        "quick": args.quick,
        "check": checked,
        "rows": rows,
        "work": "5*M^2*D FLOPs and 1.5*M^2 exps per forward+backward (bench/aot_model.py)",
    }
    write(Path(args.out), record, md)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
