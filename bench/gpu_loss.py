"""GPU benchmark of the NT-Xent loss: fastclr's Triton kernel against the torch reference.

Checks first, then times, then reports (STYLE.md): the Triton loss and gradients are compared with
the float64 reference at a checkable size, then fwd+bwd is timed with ``triton.testing.do_bench``
(median) at 2N = 8192, D = 128, bf16 for both implementations, and at 2N = 65536 where the
reference's M×M matrices are expected to run out of memory (reported as "OOM").

Roofline ("fraction of the matmul + exp limit"), assumptions stated in the output:
* The symmetric path computes each unordered pair once. Forward: S = ẑẑᵀ on M²/2 pairs
  (2·(M²/2)·D = M²·D flops) and M²/2 exps. Backward: S again (M²·D), P ẑ and Pᵀ ẑ
  (2·2·(M²/2)·D = 2·M²·D) and M²/2 exps. fwd+bwd: 4·M²·D flops, M² exps.
* Limit time = flops / peak dense bf16 tensor throughput + exps / MUFU exp throughput (H200: 990
  TFLOP/s spec; 132 SMs × 16 ex2/clk × 1.98 GHz ≈ 4.2e12 exp/s). Peaks for other GPUs are not
  known here: the fraction is then left empty. TFLOP/s uses the 4·M²·D count for both
  implementations (the work the symmetric algorithm needs; the reference does about twice that).

``--smoke`` runs the same code path on tiny sizes on the CPU under TRITON_INTERPRET=1 (no timing
claims) so the script itself is tested without a GPU.
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


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results", help="folder for the JSON and Markdown files")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU under the interpreter")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--d", type=int, default=128)
    return p.parse_args()


def main() -> int:
    args = _parse()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    import triton

    import fastclr
    from fastclr.reference import ntxent_reference, views_to_batch
    from fastclr.testing import error_ratio, reference_error

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure import GPU_PEAKS, ntxent_work

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_loss.py needs a CUDA device (use --smoke to test the script on CPU)")
        return 2
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16
    tau, d = args.temperature, args.d
    sizes = [64, 96] if args.smoke else [8192, 65536]
    check_m = 48 if args.smoke else 4096

    def make(m: int) -> tuple[Any, Any]:
        g = torch.Generator(device=device).manual_seed(0)
        zi = torch.randn(m // 2, d, device=device, generator=g, dtype=torch.float32)
        zj = zi + 0.3 * torch.randn(m // 2, d, device=device, generator=g, dtype=torch.float32)
        return zi.to(dtype).requires_grad_(), zj.to(dtype).requires_grad_()

    def fwd_bwd(backend: Any, zi: Any, zj: Any) -> Callable[[], None]:
        def run() -> None:
            loss = fastclr.ntxent(zi, zj, temperature=tau, backend=backend, check_finite=False)
            loss.backward()

        return run

    # 1. correctness at a size the float64 reference handles. bf16 gradients carry large relative
    # errors for everyone: the LSE and positive-term gradients nearly cancel, and the LSE gradient
    # comes back rounded to bf16 (loss.py hands the op bf16 ẑ). The tests hold the kernel to 2×
    # torch's own bf16 error; this guard (4×, a bug is orders of magnitude off) only stops a
    # benchmark of a broken build.
    def loss_and_grads(backend: str, zi: Any, zj: Any) -> tuple[Any, list[Any]]:
        zi, zj = zi.detach().requires_grad_(), zj.detach().requires_grad_()
        loss = fastclr.ntxent(zi, zj, temperature=tau, backend=backend)  # type: ignore[arg-type]
        loss.backward()
        return loss.detach(), [zi.grad, zj.grad]

    zi, zj = make(check_m)
    got, got_g = loss_and_grads("triton", zi, zj)
    own, own_g = loss_and_grads("reference", zi, zj)  # torch's own bf16 answer
    zi64, zj64 = zi.detach().double().requires_grad_(), zj.detach().double().requires_grad_()
    ref = ntxent_reference(*views_to_batch([zi64, zj64]), tau)
    ref.backward()
    ref_g = [zi64.grad, zj64.grad]
    ratio_v = error_ratio(got, ref, own, k=4, atol=2**-7)
    ratio_g = error_ratio(got_g, ref_g, own_g, k=4, rtol=2**-8)
    print(
        f"check M={check_m}: error / (4x torch bf16 error + floor): loss {ratio_v:.2f}, "
        f"grad {ratio_g:.2f} (torch bf16 loss err {reference_error(ref, own):.2e}, "
        f"grad err {reference_error(ref_g, own_g):.2e})"
    )
    if not (ratio_v <= 1 and ratio_g <= 1):
        print("FAILED: the Triton loss is further from the float64 reference than 4x torch's bf16")
        return 1

    # 2. timing
    def bench(fn: Callable[[], None], grads: list[Any]) -> float:
        if cuda:
            return float(triton.testing.do_bench(fn, grad_to_none=grads, return_mode="median"))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak = next((v for k, v in GPU_PEAKS.items() if k in name), None)
    rows: list[dict[str, Any]] = []
    for m in sizes:
        zi, zj = make(m)
        flops, _, limit_ms = ntxent_work(m, d, name)
        for backend in ("reference", "triton"):
            row: dict[str, Any] = {"impl": backend, "M": m, "D": d, "dtype": "bf16", "tau": tau}
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            try:
                ms = bench(fwd_bwd(backend, zi, zj), [zi, zj])
            except torch.cuda.OutOfMemoryError:
                row.update(ms=None, status="OOM")
                zi.grad = zj.grad = None
                rows.append(row)
                continue
            row.update(ms=ms, status="ok", tflops=flops / (ms * 1e-3) / 1e12)
            if cuda:
                row["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            if limit_ms is not None:
                row["limit_ms"] = limit_ms
                row["fraction_of_limit"] = limit_ms / ms
            rows.append(row)
    for m in sizes:
        ref_ms = next((r["ms"] for r in rows if r["M"] == m and r["impl"] == "reference"), None)
        for r in rows:
            if r["M"] == m and r["ms"] and ref_ms:
                r["speedup_vs_reference"] = ref_ms / r["ms"]

    record = {
        "benchmark": "gpu_loss",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "smoke": bool(args.smoke),
        "assumptions": {
            "flops_fwd_bwd": "4*M^2*D (each unordered pair once; fwd S; bwd S, P z, P^T z)",
            "exps_fwd_bwd": "M^2 (M^2/2 per pass)",
            "peak_bf16_flops": peak[0] if peak else None,
            "peak_exp_per_s": peak[1] if peak else None,
        },
        "check": {
            "M": check_m,
            "loss_abs_err": reference_error(ref, got),
            "grad_max_abs_err": reference_error(ref_g, got_g),
            "torch_bf16_loss_abs_err": reference_error(ref, own),
            "torch_bf16_grad_max_abs_err": reference_error(ref_g, own_g),
        },
        "rows": rows,
    }
    lines = [
        f"# NT-Xent loss fwd+bwd, {name} ({record['date']}), torch {torch.__version__}, "
        f"triton {triton.__version__}",
        "",
        "| impl | M | D | ms (median) | TFLOP/s | × vs reference | fraction of limit | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def f(key: str, fmt: str, r: dict[str, Any] = r) -> str:
            return format(r[key], fmt) if r.get(key) is not None else "—"

        shown = f("ms", ".3f") if r["status"] == "ok" else str(r["status"])
        lines.append(
            f"| {r['impl']} | {r['M']} | {r['D']} | {shown} | {f('tflops', '.1f')} | "
            f"{f('speedup_vs_reference', '.1f')} | {f('fraction_of_limit', '.2f')} | "
            f"{f('peak_extra_mb', '.0f')} |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "smoke" if args.smoke else name.replace(" ", "_")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"gpu_loss-{tag}-{stamp}.json").write_text(json.dumps(record, indent=2))
    (out / f"gpu_loss-{tag}-{stamp}.md").write_text(table + "\n")
    with (out / "gpu_loss.jsonl").open("a") as fh:  # the machine-tagged running record
        fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
