"""Ahead-of-time compile check of every Triton kernel for the H200 (sm_90), no GPU needed.

Each kernel of ``kernels/triton/`` is compiled with the installed triton for
``GPUTarget("cuda", 90, 32)`` in the configurations its launcher can select (bench/aot_cases.py),
and measured three ways without a GPU:

* ptxas itself: its PTX is assembled again with triton's own ptxas and ``-v``, whose report per
  kernel gives the registers, the **stack frame and the spill stores / loads in bytes**;
* the cubin, read back with the ``cuobjdump`` shipped in the triton wheel: registers, stack,
  shared memory, and the SASS: local-memory instructions (``LDL``/``STL``), memory fences by
  scope and which sit inside a loop (between a backward branch and its target), and the opcode
  mix of the loops that carry the tensor-core instructions (``HGMMA``): the **interior** tile
  loop (the shortest: no masks) and the **masked** one (diagonal and ragged tiles);
* occupancy: resident warps per SM from registers (65,536 per SM, allocated per warp in units of
  256), shared memory (228 KB per SM, 1 KB reserved per program), 64 warps and 32 programs.

It fails (exit 1) on a compile error, on any spill in a bf16/fp16 configuration (a stack frame,
spill stores or loads reported by ptxas, or an LDL/STL in the SASS), or on a GPU- or system-scope
fence inside a loop. Results: ``--out``/``--stem``.json and .md, with the on-paper H200 model of
bench/aot_model.py.

    python bench/aot_check.py [--full] [--jobs N] [--out bench/results] [--stem triton-sm90]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aot_cases import Case, all_cases  # noqa: E402

# H200 / H100 (sm_90) per-SM limits used for the occupancy column.
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are handed to a warp in units of 256
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_CTA = 1024
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32

__all__ = [
    "Case",
    "all_cases",
    "analyse_sass",
    "compile_case",
    "occupancy",
    "parse_ptxas",
    "problems",
]


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


# --------------------------------------------------------------------------------------------
# what ptxas and the SASS say

_PTXAS_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> dict[str, int]:
    """Stack frame, spill stores, spill loads (bytes) and registers from a ``ptxas -v`` report,
    summed over the functions it lists (one entry kernel here)."""
    out = {"stack_frame": 0, "spill_stores": 0, "spill_loads": 0, "ptxas_regs": 0}
    for frame, stores, loads in _PTXAS_FRAME.findall(log):
        out["stack_frame"] += int(frame)
        out["spill_stores"] += int(stores)
        out["spill_loads"] += int(loads)
    regs = [int(r) for r in _PTXAS_REGS.findall(log)]
    out["ptxas_regs"] = max(regs, default=0)
    return out


def _ptxas() -> str:
    """The ptxas triton itself runs for sm_90 (triton 3.9 ships two; the PTX version must match)."""
    from triton.backends.nvidia import compiler

    return str(compiler.get_ptxas(90).path)


def run_ptxas(ptx: str) -> str:
    """``ptxas -v`` on ``ptx`` for sm_90a with triton's own flags; returns its report."""
    ptxas = _ptxas()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        base = [ptxas, "-lineinfo", "-v", "--gpu-name=sm_90a", str(src), "-o", str(src) + ".o"]
        for extra in (["--regAllocOptLevel=2"], []):  # triton ≥ 3.7 passes the first (ptxas 13)
            r = subprocess.run(base[:3] + extra + base[3:], capture_output=True, text=True)
            if r.returncode == 0:
                return r.stdout + r.stderr
        raise RuntimeError(f"ptxas failed: {r.stderr[-600:]}")


_ADDR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRA = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def _opcode(text: str) -> str:
    return text.split()[1] if text.startswith("@") else text.split()[0]


def _instructions(sass: str) -> list[tuple[int, str]]:
    out = []
    for line in sass.splitlines():
        m = _ADDR.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def _mix(instrs: list[tuple[int, str]], lo: int, hi: int) -> Counter[str]:
    return Counter(_opcode(t).split(".")[0] for a, t in instrs if lo <= a <= hi)


def analyse_sass(sass: str) -> dict[str, Any]:
    """Fences by scope, fences inside loops, local-memory instructions, and the opcode mix of the
    interior (shortest) and masked (longest) tile loops among the innermost loops that carry the
    most tensor-core instructions (any innermost loop when none has them)."""
    instrs = _instructions(sass)
    loops = []
    for addr, text in instrs:
        b = _BRA.search(text)
        if b and int(b.group(1), 16) < addr:
            loops.append((int(b.group(1), 16), addr))
    fences: Counter[str] = Counter()
    fences_in_loop: Counter[str] = Counter()
    local = Counter(
        _opcode(t).split(".")[0] for _, t in instrs if _opcode(t).startswith(("LDL", "STL"))
    )
    for addr, text in instrs:
        op = _opcode(text)
        if op.startswith(("MEMBAR", "FENCE")):
            fences[op] += 1
            if any(lo <= addr <= hi for lo, hi in loops) and op.split(".")[-1] in ("GPU", "SYS"):
                fences_in_loop[op] += 1
    inner = [(lo, hi) for lo, hi in loops if not any(lo < a <= b < hi for a, b in loops)]
    mixes = [_mix(instrs, lo, hi) for lo, hi in inner]
    hot: dict[str, int] = {}
    masked: dict[str, int] = {}
    if mixes:
        top = max(m["HGMMA"] for m in mixes)
        tiles = [m for m in mixes if m["HGMMA"] == top and (top or m["MUFU"] or len(mixes) == 1)]
        tiles = tiles or mixes
        hot = dict(min(tiles, key=lambda m: sum(m.values())).most_common())
        masked = dict(max(tiles, key=lambda m: sum(m.values())).most_common())
    return {
        "instructions": len(instrs),
        "fences": dict(fences),
        "gpu_fences_in_loops": dict(fences_in_loop),
        "local_instrs": dict(local),
        "hot_loop_mix": hot,
        "masked_loop_mix": masked,
    }


def occupancy(regs: int, shared: int, warps: int) -> int:
    """Resident warps per SM on sm_90 for a program of ``warps`` warps."""
    per_warp = -(-regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = REGS_PER_SM // max(per_warp, 1) // warps
    by_smem = SMEM_PER_SM // (shared + SMEM_RESERVED_PER_CTA) if shared else MAX_CTAS_PER_SM
    ctas = min(by_regs, by_smem, MAX_WARPS_PER_SM // warps, MAX_CTAS_PER_SM)
    return ctas * warps


# --------------------------------------------------------------------------------------------
# compile one case


def _source(case: Case) -> Any:
    import importlib

    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(case.module), case.kernel)
    while not isinstance(fn, JITFunction):  # the @triton.jit function under @triton.autotune
        fn = fn.fn
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible}
    return ASTSource(fn=fn, signature=case.signature, constexprs=case.constexprs, attrs=attrs)


def compile_case(case: Case) -> dict[str, Any]:
    """Compile ``case`` for sm_90 and measure it (runs in a worker process)."""
    import triton
    from triton.backends.compiler import GPUTarget

    row: dict[str, Any] = {"case": case.name, "kernel": case.kernel, **case.labels}
    row.update(warps=case.num_warps, stages=case.num_stages)
    t0 = time.perf_counter()
    log = io.StringIO()  # triton prints ptxas's -v report here (TRITON_DUMP_PTXAS_LOG)
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(
                _source(case),
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": case.num_warps, "num_stages": case.num_stages},
            )
    except Exception as exc:  # a compile error is a result, not a crash of the check
        row.update(error=f"{type(exc).__name__}: {str(exc)[-600:]}")
        return row
    report = log.getvalue()
    if "bytes stack frame" not in report:  # served from triton's cache: assemble once more
        report = run_ptxas(k.asm["ptx"])
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    cuobjdump = _cuobjdump()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage, sass = (
            subprocess.run(
                [cuobjdump, flag, f.name], capture_output=True, text=True, check=True
            ).stdout
            for flag in ("-res-usage", "-sass")
        )
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    regs = int(fields.get("REG", 0))
    shared = max(int(fields.get("SHARED", 0)), int(getattr(k.metadata, "shared", 0)))
    row.update(
        regs=regs,
        stack_bytes=int(fields.get("STACK", 0)),
        local_bytes=int(fields.get("LOCAL", 0)),
        shared_bytes=shared,
        warps_per_sm=occupancy(regs, shared, case.num_warps),
        **parse_ptxas(report),
        **analyse_sass(sass),
    )
    return row


def spill_bytes(row: dict[str, Any]) -> int:
    """Every sign of spilling in ``row``: ptxas's stack frame and spill bytes, cuobjdump's stack
    and local memory, and 4 bytes per LDL/STL instruction in the SASS."""
    return (
        row.get("stack_frame", 0)
        + row.get("spill_stores", 0)
        + row.get("spill_loads", 0)
        + row.get("stack_bytes", 0)
        + row.get("local_bytes", 0)
        + 4 * sum(row.get("local_instrs", {}).values())
    )


def problems(row: dict[str, Any], low_precision: bool) -> list[str]:
    """Why ``row`` fails the check (empty: it passes)."""
    out = []
    if "error" in row:
        return ["compile error"]
    if low_precision and spill_bytes(row) > 0:
        out.append(
            f"spills in a 16-bit/augment path: {row.get('stack_frame', 0)} B stack frame, "
            f"{row.get('spill_stores', 0)} B spill stores, {row.get('spill_loads', 0)} B spill "
            f"loads, {sum(row.get('local_instrs', {}).values())} LDL/STL"
        )
    if row.get("gpu_fences_in_loops"):
        out.append(f"GPU-scope fence inside a loop: {row['gpu_fences_in_loops']}")
    return out


# --------------------------------------------------------------------------------------------
# report


def _config(r: dict[str, Any]) -> str:
    keys = (
        "dtype",
        "in",
        "D",
        "BM",
        "BN",
        "ONLINE",
        "ROW_TERM",
        "COL_TERM",
        "G_UNIFORM",
        "pass",
        "out",
        "radius",
    )
    return ",".join(f"{k}={r[k]}" for k in keys if k in r)


def _row_md(r: dict[str, Any]) -> str:
    head = f"| {r['kernel']} | {_config(r)} | {r['warps']}×{r['stages']} |"
    if "error" in r:
        return head + " |" * 9 + " compile error |"
    hot, masked = r.get("hot_loop_mix", {}), r.get("masked_loop_mix", {})
    ldst = sum(r["local_instrs"].values())
    spill = f"{r['stack_frame']}/{r['spill_stores']}/{r['spill_loads']}/{ldst}"
    return (
        f"{head} {r['regs']} | {spill} | {r['shared_bytes'] / 1024:.0f} | {r['warps_per_sm']} | "
        f"{sum(r['fences'].values())}/{sum(r['gpu_fences_in_loops'].values())} | "
        f"{hot.get('HGMMA', 0)} | {hot.get('MUFU', 0)} | {sum(hot.values())} | "
        f"{sum(masked.values())} | {'; '.join(r['problems']) or 'ok'} |"
    )


def report_md(rows: list[dict[str, Any]], meta: dict[str, Any], model: str) -> str:
    """The committed Markdown report: header, the model, one row per configuration."""
    lines = [
        "# Triton kernels compiled for sm_90 (H200), ahead of time",
        "",
        f"triton {meta['triton']}, target {meta['target']}, {meta['cases']} configurations "
        f"({'full product' if meta['full'] else 'CI set'}), {meta['wall_s']:.0f} s wall on "
        f"{meta['jobs']} processes, {meta['failures']} failing. Written by "
        f"`{meta['command']}`; no GPU was used.",
        "",
        model,
        "## Every compiled configuration",
        "",
        "Columns: registers per thread; spills as ptxas reports them (stack frame / spill stores /",
        "spill loads, bytes) and LDL/STL instructions in the SASS; shared memory per program;",
        "resident warps per SM; memory fences (all / GPU-scope inside a loop); the interior tile",
        "loop's tensor-core (HGMMA), MUFU and total instructions per thread; the masked loop's",
        "total.",
        "",
        "| kernel | config | warps×stages | regs | stack/spill st/spill ld/LDL+STL | smem KB | "
        "warps/SM | fences | hot HGMMA | hot MUFU | hot instrs | masked instrs | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row_md(r) for r in rows]
    return "\n".join(lines) + "\n"


def _compile_all(cases: list[Case], jobs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with cf.ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for case, row in zip(cases, pool.map(compile_case, cases), strict=True):
            row["problems"] = problems(row, case.low_precision)
            rows.append(row)
            mark = "FAIL " + "; ".join(row["problems"]) if row["problems"] else "ok"
            print(
                f"[aot] {case.name}: {row.get('regs', '-')} regs, {spill_bytes(row)} B spilled, "
                f"{mark}",
                flush=True,
            )
    return rows


def _baseline(path: Path | None, target: Path) -> dict[str, Any] | None:
    """--baseline's summary, else the one the report being replaced carried."""
    from aot_model import baseline_summary

    if path is not None:
        return baseline_summary(json.loads(path.read_text()), path.name)
    if target.exists():
        return json.loads(target.read_text()).get("baseline")
    return None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the whole configuration product")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--stem", default="triton-sm90", help="file name stem of the report")
    p.add_argument("--limit", type=int, default=0, help="compile only the first N (debugging)")
    p.add_argument(
        "--from-json", type=Path, help="write the Markdown report of this JSON again, no compiles"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="an earlier report's JSON: adds a before → after section (kept by later runs)",
    )
    return p.parse_args(argv)


def _render(path: Path) -> int:
    """--from-json: the Markdown report again from a JSON report (model and sections recomputed)."""
    from aot_model import history_md, model_md, predict

    data = json.loads(path.read_text())
    rows = data["rows"]
    models = [predict(rows, m) for m in (8192, 65536)]
    data["model"] = models
    path.write_text(json.dumps(data, indent=1) + "\n")
    model = model_md(models, data) + "\n" + history_md(data.get("baseline"), rows, models)
    path.with_suffix(".md").write_text(report_md(rows, data, model))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.from_json:
        return _render(args.from_json)
    os.environ.pop("TRITON_INTERPRET", None)
    # triton 3.9's default (FP fusion on), stated so that it does not warn once per process
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # ptxas's own report of each fresh compile
    import triton
    from aot_model import history_md, model_md, predict

    cases = all_cases(args.full)[: args.limit or None]
    t0 = time.perf_counter()
    rows = _compile_all(cases, args.jobs)
    failures = sum(bool(r["problems"]) for r in rows)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "triton": triton.__version__,
        "target": "cuda sm_90 (warp 32)",
        "full": args.full,
        "cases": len(rows),
        "jobs": args.jobs,
        "wall_s": round(time.perf_counter() - t0, 1),
        "failures": failures,
        "command": "python bench/aot_check.py" + (" --full" if args.full else ""),
    }
    models = [predict(rows, m) for m in (8192, 65536)]
    for mo in models:
        if "fraction_of_floor" in mo:
            print(
                f"[aot] model M={mo['M']}: {mo['predicted_us']:.1f} us predicted, "
                f"{mo['fraction_of_floor']:.2f} of the overlapped floor"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{args.stem}.json"
    baseline = _baseline(args.baseline, target)
    record = {**meta, "model": models, "rows": rows, "baseline": baseline}
    target.write_text(json.dumps(record, indent=1) + "\n")
    model = model_md(models, meta) + "\n" + history_md(baseline, rows, models)
    (args.out / f"{args.stem}.md").write_text(report_md(rows, meta, model))
    print(
        f"[aot] {len(rows)} configurations in {meta['wall_s']:.0f} s on {args.jobs} processes, "
        f"{failures} failing; report in {args.out}/{args.stem}.json"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
