"""Ahead-of-time compile check of every Triton kernel for the H200 (sm_90), no GPU needed.

Each kernel of ``kernels/triton/`` is compiled with the installed triton for
``GPUTarget("cuda", 90, 32)`` (triton's own ptxas) in the configurations its launcher can select,
and the cubin is read back with the ``cuobjdump`` shipped in the triton wheel:

* registers, local memory (spill) bytes per thread, shared memory per program;
* warps per SM: resident programs × warps, limited by registers (65,536 per SM, allocated per warp
  in units of 256), shared memory (228 KB per SM, 1 KB reserved per program), 64 warps and 32
  programs per SM;
* memory fences (``MEMBAR``) by scope, and which of them sit inside a loop (between a backward
  branch and its target in the SASS);
* the instruction mix of the hottest loop (the loop with the most tensor-core ``HGMMA``
  instructions): the input to the on-paper model in ``bench/results/triton-sm90.md``.

It fails (exit 1) on a compile error, on any local memory in a bf16/fp16 configuration, or on a
GPU- or system-scope fence inside a loop. Results: ``--out``/triton-sm90.json and .md.

Configurations. ``--full`` compiles the whole product the launchers can reach: every dtype
(fp32, bf16, fp16) × every head-dim class (BLOCK_D 16 … 256 in one chunk, and the chunked path
that serves D > 256 up to 2048 and beyond) × every autotune config kept by the kernels' ``keep``
rule × every kernel variant. The default (CI) set (``_ci``) keeps, at D = 128 (the
size the targets are stated at), every config of the bf16 kernels; for the rest one config each:
fp16/fp32 at D = 128, the deterministic forward, the one-term (distributed) backwards, and
for the other head-dim classes the forward and backward in every dtype (bf16 only for D ≤ 32,
whose code is D = 64's with smaller tiles) and the online variants in bf16. Every kernel, code
path and dtype is compiled while the count stays under 100 (CI has 2 cores). Compiles run in
parallel processes (``--jobs``) and land in triton's on-disk cache, so a second run on the same
machine is fast.

    python bench/aot_check.py [--full] [--jobs N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# H200 / H100 (sm_90) per-SM limits used for the occupancy column.
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are handed to a warp in units of 256
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_CTA = 1024
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32

DTYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
# head-dim classes: (label, D used for the signature, BLOCK_D, SINGLE_CHUNK)
HOT_D = 128


@dataclass
class Case:
    """One compile: a kernel, its signature and constexprs, launch options and labels."""

    module: str
    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    divisible: list[str]
    num_warps: int
    num_stages: int
    labels: dict[str, Any] = field(default_factory=dict)
    low_precision: bool = False

    @property
    def name(self) -> str:
        lab = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return f"{self.kernel}[{lab},w{self.num_warps}s{self.num_stages}]"


def _tools() -> tuple[str, str]:
    import triton

    base = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return str(base / "cuobjdump"), str(base / "ptxas")


# --------------------------------------------------------------------------------------------
# the configurations the launchers can select


def _ntxent_cases(full: bool) -> list[Case]:
    from fastclr.kernels.triton import ntxent as k

    d_classes: list[tuple[str, int, int, bool]] = []
    for bd in (16, 32, 64, 128, 256):
        d_classes.append((f"D{bd}", bd, bd, True))
    d_classes.append(("D2048 (chunked)", 2048, k.MULTI_CHUNK_D, False))
    big_m = 1 << 16  # keep() drops configs only for tiny batches

    def sym_fwd(dt: str, bd: int, single: bool) -> tuple[dict[str, str], dict[str, Any]]:
        sig = {
            "Z": f"*{dt}", "SUM_ROW": "*fp32", "SUM_COL": "*fp32", "M": "i32", "D": "i32",
            "stride_zm": "i32", "stride_zd": "i32", "inv_tau": "fp32", "shift": "fp32",
            "M_KEY": "i32", "D_KEY": "i32",
        }  # fmt: skip
        return sig, {"stride_zd": 1}

    def rows_fwd(dt: str, bd: int, single: bool) -> tuple[dict[str, str], dict[str, Any]]:
        sig = {
            "Q": f"*{dt}", "K": f"*{dt}", "LSE": "*fp32", "MQ": "i32", "MK": "i32", "D": "i32",
            "stride_qm": "i32", "stride_qd": "i32", "stride_km": "i32", "stride_kd": "i32",
            "q_offset": "i32", "inv_tau": "fp32", "shift": "fp32", "M_KEY": "i32",
            "D_KEY": "i32",
        }  # fmt: skip
        return sig, {"stride_qd": 1, "stride_kd": 1}

    def rows_bwd(dt: str, bd: int, single: bool) -> tuple[dict[str, str], dict[str, Any]]:
        sig = {
            "X": f"*{dt}", "Y": f"*{dt}", "LX": "*fp32", "GX": "*fp32", "LY": "*fp32",
            "GY": "*fp32", "DX": "*fp32", "MX": "i32", "MY": "i32", "D": "i32",
            "stride_xm": "i32", "stride_xd": "i32", "stride_ym": "i32", "stride_yd": "i32",
            "x_self_off": "i32", "y_self_off": "i32", "inv_tau": "fp32", "shift": "fp32",
            "M_KEY": "i32", "D_KEY": "i32",
        }  # fmt: skip
        return sig, {"stride_xd": 1, "stride_yd": 1}

    # (kernel, signature builder, configs, variant constexprs, hot variant?)
    variants: list[tuple[str, Any, list[Any], dict[str, Any], bool]] = [
        ("ntxent_sym_fwd_kernel", sym_fwd, k.SYM_CONFIGS, {}, True),
        ("ntxent_rows_fwd_kernel", rows_fwd, k.ROW_CONFIGS, {"ONLINE": True}, True),
        ("ntxent_rows_fwd_kernel", rows_fwd, k.ROW_CONFIGS, {"ONLINE": False}, False),
    ]
    for online in (False, True):
        for row, col in ((True, True), (True, False), (False, True)):
            hot = row and col  # the symmetric loss; row-only / column-only serve the distributed op
            variants.append(
                (
                    "ntxent_rows_bwd_kernel", rows_bwd, k.ROW_CONFIGS,
                    {"ONLINE": online, "ROW_TERM": row, "COL_TERM": col}, hot,
                )
            )  # fmt: skip
    cases: list[Case] = []
    for dname, ty in DTYPES.items():
        prec = "ieee" if dname != "fp32" else _fp32_precision()
        for dlabel, d, bd, single in d_classes:
            for kname, build, configs, var, hot in variants:
                sig, fixed = build(ty, bd, single)
                kept = [c for c in configs if k.keep(c, bd, single, big_m)]
                if not full:
                    kept = [c for i, c in enumerate(kept) if _ci(dname, d, kname, var, hot, i)]
                for cfg in kept:
                    cons = {
                        **fixed, **var, "BLOCK_D": bd, "SINGLE_CHUNK": single, "UPCAST": False,
                        "DOT_PREC": prec, "BLOCK_M": cfg.kwargs["BLOCK_M"],
                        "BLOCK_N": cfg.kwargs["BLOCK_N"],
                    }  # fmt: skip
                    full_sig = {**sig, **{c: "constexpr" for c in cons}}
                    # pointers, D and the row strides divisible by 16, as in a launch at D = 128
                    # (row counts and offsets are never specialised: do_not_specialize)
                    div = [n for n, t in sig.items() if t.startswith("*")]
                    if d % 16 == 0:
                        div += [n for n in sig if n == "D"]
                        div += [n for n in sig if n.startswith("stride") and n.endswith("m")]
                    labels = {
                        "dtype": dname, "D": dlabel, "BM": cfg.kwargs["BLOCK_M"],
                        "BN": cfg.kwargs["BLOCK_N"],
                        **{key: int(v) for key, v in var.items()},
                    }  # fmt: skip
                    if kname == "ntxent_sym_fwd_kernel":
                        labels.pop("BN")
                    cases.append(
                        Case(
                            "fastclr.kernels.triton.ntxent", kname, full_sig, cons, div,
                            cfg.num_warps, cfg.num_stages, labels, dname != "fp32",
                        )
                    )  # fmt: skip
    return cases


def _ci(dtype: str, d: int, kernel: str, var: dict[str, Any], hot: bool, index: int) -> bool:
    """The CI subset of the product (see the module docstring)."""
    backward = kernel == "ntxent_rows_bwd_kernel" and not var.get("ONLINE", False)
    if d == HOT_D and hot:  # the target: bf16 every config, fp16/fp32 the first
        return dtype == "bf16" or index == 0
    if index != 0:
        return False
    if d == HOT_D:  # the deterministic forward and the distributed (one-term) backwards
        return dtype == "bf16"
    # the other head-dim classes: the online variants and D ≤ 32 in bf16 only; else every dtype
    if dtype != "bf16" and d <= 32:
        return False
    return hot and (kernel == "ntxent_sym_fwd_kernel" or backward or dtype == "bf16")


def _fp32_precision() -> str:
    from fastclr.ops import triton_ntxent

    return triton_ntxent.FP32_DOT_PRECISION


def _augment_cases(full: bool) -> list[Case]:
    from fastclr.augment import triton_backend as tb

    common = {
        "solarize_threshold": "fp32", "m0": "fp32", "m1": "fp32", "m2": "fp32", "s0": "fp32",
        "s1": "fp32", "s2": "fp32",
    }  # fmt: skip
    src = {"src_ptr": "*u8", "img_ptr": "*i64", "prm_ptr": "*fp32"}
    mod = "fastclr.kernels.triton.augment"
    cases = [
        Case(
            mod, "augment_contrast_mean_kernel",
            {**src, "part_ptr": "*fp32", "S": "i32", "n_chunks": "i32", "BLOCK": "constexpr"},
            {"BLOCK": tb.BLOCK_MEAN}, ["src_ptr", "img_ptr", "prm_ptr", "part_ptr"], 4, 1,
            {"pass": "contrast-mean"}, True,
        )
    ]  # fmt: skip
    out_dtypes = ["bf16", "fp16", "fp32", "fp64"] if full else ["bf16", "fp32"]
    for out in out_dtypes:
        for fuse in (True, False):
            dst = out if fuse else "fp32"  # the unfused colour pass writes the fp32 blur input
            if not fuse and out != out_dtypes[0]:
                continue
            cases.append(
                Case(
                    mod, "augment_color_kernel",
                    {**src, "part_ptr": "*fp32", "dst_ptr": f"*{dst}", "S": "i32",
                     "n_chunks": "i32", **common, "FUSE_TAIL": "constexpr", "CHUNKS": "constexpr",
                     "BLOCK": "constexpr"},
                    {"FUSE_TAIL": fuse, "CHUNKS": 64, "BLOCK": tb.BLOCK_PIXELS},
                    ["src_ptr", "img_ptr", "prm_ptr", "part_ptr", "dst_ptr"], 4, 1,
                    {"pass": "colour" + ("+tail" if fuse else ""), "out": dst}, True,
                )
            )  # fmt: skip
    radii = [1, 11, 22] if full else [11]  # kernel side 10% of 32 … 448 px
    for radius in radii:
        for axis, finish in ((0, False), (1, True)):
            for out in out_dtypes if finish else ["fp32"]:
                cases.append(
                    Case(
                        mod, "augment_blur_kernel",
                        {"src_ptr": "*fp32", "prm_ptr": "*fp32", "dst_ptr": f"*{out}", "S": "i32",
                         **common, "RADIUS": "constexpr", "AXIS": "constexpr",
                         "FINISH": "constexpr", "BLOCK": "constexpr"},
                        {"RADIUS": radius, "AXIS": axis, "FINISH": finish,
                         "BLOCK": tb.BLOCK_PIXELS},
                        ["src_ptr", "prm_ptr", "dst_ptr"], 4, 1,
                        {"pass": f"blur-axis{axis}", "radius": radius, "out": out}, True,
                    )
                )  # fmt: skip
    return cases


def all_cases(full: bool) -> list[Case]:
    """Every configuration compiled by this check (``full``: the whole launcher product)."""
    return _ntxent_cases(full) + _augment_cases(full)


# --------------------------------------------------------------------------------------------
# compile one case and read its cubin

_ADDR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRA = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def analyse_sass(sass: str) -> dict[str, Any]:
    """Fences by scope, fences inside loops, and the opcode mix of the hottest loop."""
    instrs: list[tuple[int, str]] = []
    for line in sass.splitlines():
        m = _ADDR.search(line)
        if m:
            instrs.append((int(m.group(1), 16), m.group(2).strip()))
    loops: list[tuple[int, int]] = []
    for addr, text in instrs:
        b = _BRA.search(text)
        if b and int(b.group(1), 16) < addr:
            loops.append((int(b.group(1), 16), addr))
    fences: Counter[str] = Counter()
    fences_in_loop: Counter[str] = Counter()
    for addr, text in instrs:
        op = text.split()[0] if not text.startswith("@") else text.split()[1]
        if op.startswith("MEMBAR") or op.startswith("FENCE"):
            scope = op.split(".")[-1]
            fences[op] += 1
            if any(lo <= addr <= hi for lo, hi in loops) and scope in ("GPU", "SYS"):
                fences_in_loop[op] += 1

    def mix(lo: int, hi: int) -> Counter[str]:
        c: Counter[str] = Counter()
        for addr, text in instrs:
            if lo <= addr <= hi:
                op = text.split()[1] if text.startswith("@") else text.split()[0]
                c[op.split(".")[0]] += 1
        return c

    hot: dict[str, int] = {}
    if loops:
        inner = [(lo, hi) for lo, hi in loops if not any(lo < a <= b < hi for a, b in loops)]
        best = max(inner, key=lambda r: (mix(*r)["HGMMA"], mix(*r)["MUFU"], r[1] - r[0]))
        hot = dict(mix(*best).most_common())
    return {
        "instructions": len(instrs),
        "fences": dict(fences),
        "gpu_fences_in_loops": dict(fences_in_loop),
        "hot_loop_mix": hot,
    }


def occupancy(regs: int, shared: int, warps: int) -> int:
    """Resident warps per SM on sm_90 for a program of ``warps`` warps."""
    per_warp = -(-regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = REGS_PER_SM // max(per_warp, 1) // warps
    by_smem = SMEM_PER_SM // (shared + SMEM_RESERVED_PER_CTA) if shared else MAX_CTAS_PER_SM
    ctas = min(by_regs, by_smem, MAX_WARPS_PER_SM // warps, MAX_CTAS_PER_SM)
    return ctas * warps


def compile_case(case: Case) -> dict[str, Any]:
    """Compile ``case`` for sm_90 and measure it (runs in a worker process)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = getattr(importlib.import_module(case.module), case.kernel)
    while not isinstance(fn, JITFunction):  # the @triton.jit function under @triton.autotune
        fn = fn.fn
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible}
    src = ASTSource(fn=fn, signature=case.signature, constexprs=case.constexprs, attrs=attrs)
    row: dict[str, Any] = {"case": case.name, "kernel": case.kernel, **case.labels}
    row.update(warps=case.num_warps, stages=case.num_stages)
    t0 = time.perf_counter()
    try:
        k = triton.compile(
            src,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": case.num_warps, "num_stages": case.num_stages},
        )
    except Exception as exc:  # a compile error is a result, not a crash of the check
        row.update(error=f"{type(exc).__name__}: {str(exc)[-600:]}")
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    cuobjdump, _ = _tools()
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    regs = int(fields.get("REG", 0))
    shared = max(int(fields.get("SHARED", 0)), int(getattr(k.metadata, "shared", 0)))
    row.update(
        regs=regs,
        local_bytes=int(fields.get("LOCAL", 0)),
        stack_bytes=int(fields.get("STACK", 0)),
        shared_bytes=shared,
        warps_per_sm=occupancy(regs, shared, case.num_warps),
        **analyse_sass(sass),
    )
    return row


def problems(row: dict[str, Any], low_precision: bool) -> list[str]:
    """Why ``row`` fails the check (empty: it passes)."""
    out = []
    if "error" in row:
        out.append("compile error")
    else:
        if low_precision and row["local_bytes"] > 0:
            out.append(f"{row['local_bytes']} B local memory (spills) in a 16-bit/augment path")
        if row["gpu_fences_in_loops"]:
            out.append(f"GPU-scope fence inside a loop: {row['gpu_fences_in_loops']}")
    return out


# --------------------------------------------------------------------------------------------
# the on-paper model: H200 time of one forward+backward from the compiled instruction counts

H200 = {
    "sms": 132,
    "bf16_flops": 990e12,  # dense bf16 tensor-core FLOP/s (datasheet)
    "clock": 1.98e9,  # SM clock under load (seen on the device machine)
    "mufu_per_clk": 16,  # MUFU (ex2) results per clock per SM
    "issue_per_clk": 4,  # warp instructions issued per clock per SM (4 schedulers)
    "hbm": 4.8e12,  # bytes/s
}


def tile_cost(row: dict[str, Any], dots: int, bn: int, d: int, resident: int) -> dict[str, float]:
    """Seconds one SM spends on one tile of ``row``'s hot loop (see the report's assumptions)."""
    hot = row["hot_loop_mix"]
    mufu = hot.get("MUFU", 0)
    other = sum(hot.values()) - mufu - hot.get("HGMMA", 0)
    w = row["warps"]
    t_tc = dots * 2 * row["BM"] * bn * d / (H200["bf16_flops"] / H200["sms"])
    t_mufu = mufu * w * 32 / H200["mufu_per_clk"] / H200["clock"]
    t_issue = (other + mufu) * w / H200["issue_per_clk"] / H200["clock"]
    t_elem = max(t_mufu, t_issue)
    # one program per SM: its tensor-core and elementwise phases alternate (wgmma waits for the
    # softmax that feeds it); two or more: one program's dots overlap another's elementwise work
    t_tile = t_tc + t_elem if resident < 2 else max(t_tc, t_elem)
    return {"tc": t_tc, "mufu": t_mufu, "issue": t_issue, "tile": t_tile}


def _waves(programs: int, tiles_per_program: int, row: dict[str, Any], cost: Any) -> float:
    slots = max(1, row["warps_per_sm"] // row["warps"])
    total, left = 0.0, programs
    while left > 0:
        in_wave = min(left, H200["sms"] * slots)
        resident = -(-in_wave // H200["sms"])
        total += resident * tiles_per_program * cost(resident)["tile"]
        left -= in_wave
    return total


def predict(rows: list[dict[str, Any]], m: int, d: int = 128) -> dict[str, Any]:
    """Best predicted bf16 forward and backward over the compiled autotune configs at (m, d)."""
    from fastclr.ops.triton_ntxent import SPLIT_BLOCK_M, split_count

    sms = H200["sms"]
    out: dict[str, Any] = {"M": m, "D": d}
    blocks128 = -(-m // SPLIT_BLOCK_M)
    for part, kernel in (
        ("forward", "ntxent_sym_fwd_kernel"),
        ("backward", "ntxent_rows_bwd_kernel"),
    ):
        best: dict[str, Any] | None = None
        for r in rows:
            if r.get("kernel") != kernel or r.get("dtype") != "bf16" or r.get("D") != f"D{d}":
                continue
            if (
                "error" in r
                or r.get("ONLINE", 0)
                or not (r.get("ROW_TERM", 1) and r.get("COL_TERM", 1))
            ):
                continue
            bm = r["BM"]
            t = -(-m // bm)
            if part == "forward":
                bn, dots = bm, 1
                splits = split_count(blocks128, m // 2, sms)
                per_prog = -(-(t // 2 + 1) // splits)
                bytes_moved = 0.0
            else:
                bn, dots = r["BN"], 2
                splits = split_count(blocks128, m, sms)
                key_blocks = -(-m // bn)
                per_prog = -(-key_blocks // splits)
                # partial slots written and summed (S > 1), read once more for the cast to bf16
                bytes_moved = (2 * splits * m * d * 4 if splits > 1 else m * d * 4) + m * d * 2
            compute = _waves(
                t * splits,
                per_prog,
                r,
                lambda res, r=r, bn=bn, dots=dots: tile_cost(r, dots, bn, d, res),
            )
            seconds = compute + bytes_moved / H200["hbm"]
            one = tile_cost(r, dots, bn, d, 2 if r["warps_per_sm"] // r["warps"] >= 2 else 1)
            cand = {
                "config": r["case"], "splits": splits, "programs": t * splits,
                "tiles_per_program": per_prog, "us": seconds * 1e6,
                "tile_us": {k: v * 1e6 for k, v in one.items()},
            }  # fmt: skip
            if best is None or cand["us"] < best["us"]:
                best = cand
        out[part] = best
    flops, exps = 4.0 * m * m * d, float(m) * m
    limit = flops / H200["bf16_flops"] + exps / (sms * H200["mufu_per_clk"] * H200["clock"])
    out["limit_us"] = limit * 1e6
    if out["forward"] and out["backward"]:
        out["predicted_us"] = out["forward"]["us"] + out["backward"]["us"]
        out["fraction_of_limit"] = out["limit_us"] / out["predicted_us"]
    return out


MODEL_ASSUMPTIONS = """\
Inputs: the hot loop's SASS instruction counts per thread (table below; one loop iteration is
one tile) and the H200's peaks: 990 TFLOP/s dense bf16; 132 SMs × 16 MUFU ex2 per clock ×
1.98 GHz = 4.2e12 exp/s; 4 warp instructions issued per clock per SM; 4.8 TB/s. Per tile and
SM: tensor time = 2·BM·BN·D·dots / (990e12/132); MUFU time = MUFU·warps·32/16 clocks; issue
time = every non-HGMMA instruction·warps/4 clocks; elementwise = max(MUFU, issue). With one
program resident per SM the tensor and elementwise phases add (each dot waits for the softmax
that feeds it); with two or more they overlap (max). Programs run in waves of 132 × resident;
the backward adds its partial-gradient traffic at 4.8 TB/s. Not modelled: memory latency,
launch gaps (≤ 10 launches per forward+backward; a CUDA graph removes the CPU side), L2 misses
(operand tiles are re-read from L2; ẑ is 2 MB at M = 8192). Limit (bench/measure.py, as in
gpu_loss.py): 4·M²·D flops at 990 TFLOP/s + M² exps at 4.2e12/s, the symmetric algorithm's
work. The best compiled config per kernel is taken, as the autotuner would pick it. These are
predictions from compiled code, not measurements: no GPU was lent."""


def _model_md(models: list[dict[str, Any]]) -> str:
    lines = [
        "## On-paper model: H200, bf16, D = 128, one forward + backward",
        "",
        MODEL_ASSUMPTIONS,
        "",
        "| M | forward (config, S, µs) | backward (config, S, µs) | predicted µs | limit µs | "
        "fraction of limit |",
        "|---|---|---|---|---|---|",
    ]
    for mo in models:
        f, b = mo.get("forward"), mo.get("backward")
        if not (f and b):
            continue
        lines.append(
            f"| {mo['M']} | {f['config']}, S={f['splits']}, {f['us']:.1f} | "
            f"{b['config']}, S={b['splits']}, {b['us']:.1f} | {mo['predicted_us']:.1f} | "
            f"{mo['limit_us']:.1f} | {mo['fraction_of_limit']:.2f} |"
        )
    lines.append("")
    for mo in models:
        for part in ("forward", "backward"):
            c = mo.get(part)
            if c:
                t = c["tile_us"]
                lines.append(
                    f"- M = {mo['M']} {part}: {c['programs']} programs × "
                    f"{c['tiles_per_program']} tiles; per tile tensor {t['tc'] * 1e3:.0f} ns, "
                    f"MUFU {t['mufu'] * 1e3:.0f} ns, issue {t['issue'] * 1e3:.0f} ns "
                    f"→ {t['tile'] * 1e3:.0f} ns."
                )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# report


def _md(rows: list[dict[str, Any]], meta: dict[str, Any], model: str) -> str:
    lines = [
        "# Triton kernels compiled for sm_90 (H200), ahead of time",
        "",
        f"triton {meta['triton']}, target {meta['target']}, {meta['cases']} configurations "
        f"({'full product' if meta['full'] else 'CI set'}), {meta['wall_s']:.0f} s wall on "
        f"{meta['jobs']} processes, {meta['failures']} failing. Written by "
        "`python bench/aot_check.py` (`make aot-check`); no GPU was used.",
        "",
        model,
        "## Every compiled configuration",
        "",
        "Columns: registers per thread, local memory (spill) bytes per thread, shared memory per",
        "program, resident warps per SM, memory fences (all / GPU-scope inside a loop), and the",
        "hot loop's tensor-core (HGMMA), MUFU (exp2) and total instruction counts.",
        "",
        "| kernel | config | warps×stages | regs | local B | smem KB | warps/SM | fences | "
        "GPU fences in loop | hot HGMMA | hot MUFU | hot instrs | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cfg = ",".join(
            f"{k}={r[k]}"
            for k in ("dtype", "D", "BM", "BN", "ONLINE", "ROW_TERM", "COL_TERM", "pass", "out",
                      "radius")
            if k in r
        )  # fmt: skip
        if "error" in r:
            lines.append(f"| {r['kernel']} | {cfg} | {r['warps']}×{r['stages']} | " + "| " * 9
                         + "compile error |")  # fmt: skip
            continue
        hot = r.get("hot_loop_mix", {})
        lines.append(
            f"| {r['kernel']} | {cfg} | {r['warps']}×{r['stages']} | {r['regs']} | "
            f"{r['local_bytes']} | {r['shared_bytes'] / 1024:.0f} | {r['warps_per_sm']} | "
            f"{sum(r['fences'].values())} | {sum(r['gpu_fences_in_loops'].values())} | "
            f"{hot.get('HGMMA', 0)} | {hot.get('MUFU', 0)} | {sum(hot.values())} | "
            f"{'; '.join(r['problems']) or 'ok'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the whole configuration product")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--stem", default="triton-sm90", help="file name stem of the report")
    p.add_argument("--limit", type=int, default=0, help="compile only the first N (debugging)")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    cases = all_cases(args.full)
    if args.limit:
        cases = cases[: args.limit]
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with cf.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for case, row in zip(cases, pool.map(compile_case, cases), strict=True):
            row["problems"] = problems(row, case.low_precision)
            rows.append(row)
            mark = "FAIL " + "; ".join(row["problems"]) if row["problems"] else "ok"
            print(f"[aot] {case.name}: {row.get('regs', '-')} regs, "
                  f"{row.get('local_bytes', '-')} B local, {mark}", flush=True)  # fmt: skip
    wall = time.perf_counter() - t0
    failures = sum(bool(r["problems"]) for r in rows)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "triton": triton.__version__,
        "target": "cuda sm_90 (warp 32)",
        "full": args.full,
        "cases": len(rows),
        "jobs": args.jobs,
        "wall_s": round(wall, 1),
        "failures": failures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    models = [predict(rows, m) for m in (8192, 65536)]
    for mo in models:
        if "fraction_of_limit" in mo:
            print(f"[aot] model M={mo['M']}: {mo['predicted_us']:.1f} us predicted, "
                  f"{mo['fraction_of_limit']:.2f} of the matmul+exp limit")  # fmt: skip
    (args.out / f"{args.stem}.json").write_text(
        json.dumps({**meta, "model": models, "rows": rows}, indent=1) + "\n"
    )
    (args.out / f"{args.stem}.md").write_text(_md(rows, meta, _model_md(models)))
    print(f"[aot] {len(rows)} configurations in {wall:.0f} s on {args.jobs} processes, "
          f"{failures} failing; report in {args.out}/{args.stem}.json")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
