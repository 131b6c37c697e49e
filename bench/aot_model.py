"""On-paper H200 model of one NT-Xent forward + backward, from the compiled SASS (aot_check.py).

Nothing here is measured on a GPU. The inputs are the instruction counts per thread of each
kernel's tile loops (interior and masked), the launch geometry the launchers choose
(fastclr.ops.triton_ntxent.split_count) and the H200's published or observed rates below.
"""

from __future__ import annotations

from typing import Any

H200 = {
    "sms": 132,
    "bf16_flops": 990e12,  # dense bf16 tensor-core FLOP/s (datasheet)
    "bf16_sustained": 790e12,  # what large bf16 GEMMs sustain on the lent H200 (device notes)
    "clock": 1.98e9,  # SM clock under load
    "mufu_per_clk": 16,  # MUFU (ex2) results per clock per SM
    "issue_per_clk": 4,  # warp instructions issued per clock per SM (4 schedulers)
    "hbm": 4.8e12,  # bytes/s
}
EXP_RATE = H200["sms"] * H200["mufu_per_clk"] * H200["clock"]  # 4.2e12 exp/s
# Each of the 3 small kernels (prep, finalize, post) costs at least this (launch in a graph, one
# wave, its tail): an assumption, not a measurement.
SMALL_KERNEL_US = 2.0
# The no-stall prediction ignores memory latency, the wgmma waits between a tile's dots, barriers
# and tails; the device is expected to take this many times longer (assumption, see the report).
EXPECTED_SLOWDOWN = (1.15, 1.6)


def floor_us(m: int, d: int, flops_rate: float = H200["bf16_flops"]) -> float:
    """The overlapped floor: tensor cores and exp units run at once (FlashAttention-3's premise),
    so max(4·M²·D / rate, M² / exp rate), with the symmetric algorithm's minimal work."""
    return max(4.0 * m * m * d / flops_rate, float(m) * m / EXP_RATE) * 1e6


def code_work(m: int, d: int) -> dict[str, float]:
    """FLOPs and exps the kernels do: the forward visits each unordered pair once (M²·D FLOPs,
    M²/2 exps); the row-block backward recomputes every S tile and multiplies P·ẑ (4·M²·D, M²)."""
    return {
        "fwd_flops": 1.0 * m * m * d,
        "bwd_flops": 4.0 * m * m * d,
        "fwd_exps": 0.5 * m * m,
        "bwd_exps": 1.0 * m * m,
    }


def tile_cost(
    mix: dict[str, int], row: dict[str, Any], dots: int, bn: int, d: int, resident: int
) -> dict[str, float]:
    """Seconds one SM spends on one tile with loop mix ``mix`` (see MODEL_ASSUMPTIONS)."""
    mufu = mix.get("MUFU", 0)
    other = sum(mix.values()) - mufu - mix.get("HGMMA", 0)
    w = row["warps"]
    t_tc = dots * 2 * row["BM"] * bn * d / (H200["bf16_flops"] / H200["sms"])
    t_mufu = mufu * w * 32 / H200["mufu_per_clk"] / H200["clock"]
    t_issue = (other + mufu) * w / H200["issue_per_clk"] / H200["clock"]
    t_elem = max(t_mufu, t_issue)
    t_tile = t_tc + t_elem if resident < 2 else max(t_tc, t_elem)
    return {"tc": t_tc, "mufu": t_mufu, "issue": t_issue, "tile": t_tile}


def _kernel_time(
    row: dict[str, Any], programs: int, tiles: int, masked: int, dots: int, bn: int, d: int
) -> tuple[float, dict[str, float]]:
    """Seconds for ``programs`` programs of ``tiles`` tiles (``masked`` of them masked), in waves
    of 132 × resident programs, and one interior tile's cost."""
    slots = max(1, row["warps_per_sm"] // row["warps"])
    total, left = 0.0, programs
    hot, masked_mix = row["hot_loop_mix"], row.get("masked_loop_mix") or row["hot_loop_mix"]
    while left > 0:
        in_wave = min(left, H200["sms"] * slots)
        resident = -(-in_wave // H200["sms"])
        t_in = tile_cost(hot, row, dots, bn, d, resident)["tile"]
        t_m = tile_cost(masked_mix, row, dots, bn, d, resident)["tile"]
        total += resident * ((tiles - masked) * t_in + masked * t_m)
        left -= in_wave
    one = tile_cost(hot, row, dots, bn, d, 2 if slots >= 2 else 1)
    return total, one


def _candidates(rows: list[dict[str, Any]], kernel: str, d: int) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r.get("kernel") != kernel or r.get("dtype") != "bf16" or r.get("D") != f"D{d}":
            continue
        if (
            "error" in r
            or r.get("ONLINE", 0)
            or not (r.get("ROW_TERM", 1) and r.get("COL_TERM", 1))
        ):
            continue
        out.append(r)
    return out


def _part(rows: list[dict[str, Any]], part: str, m: int, d: int) -> dict[str, Any] | None:
    """The best (autotuner's pick) forward or backward config at (m, d), with its timing."""
    from fastclr.ops.triton_ntxent import SPLIT_BLOCK_M, split_count

    kernel = "ntxent_sym_fwd_kernel" if part == "forward" else "ntxent_rows_bwd_kernel"
    blocks128 = -(-m // SPLIT_BLOCK_M)
    best = None
    for r in _candidates(rows, kernel, d):
        bm = r["BM"]
        t = -(-m // bm)
        if part == "forward":  # T//2 + 1 pair blocks shared by the splits; the diagonal masked
            bn, dots = bm, 1
            splits = split_count(blocks128, m // 2, H200["sms"])
            tiles, masked, extra_bytes = -(-(t // 2 + 1) // splits), 1, 0.0
        else:  # every key block once; the self-pair band is BM/BN tiles of one split
            bn, dots = r["BN"], 2
            splits = split_count(blocks128, m, H200["sms"])
            key_blocks = -(-m // bn)
            tiles, masked = -(-key_blocks // splits), -(-bm // bn)
            extra_bytes = splits * m * d * 4.0  # the fp32 split partials written
        seconds, one = _kernel_time(r, t * splits, tiles, masked, dots, bn, d)
        us = (seconds + extra_bytes / H200["hbm"]) * 1e6
        cand = {
            "config": r["case"],
            "splits": splits,
            "programs": t * splits,
            "tiles": tiles,
            "masked_tiles": masked,
            "us": us,
            "tile_ns": {k: v * 1e9 for k, v in one.items()},
        }
        if best is None or us < best["us"]:
            best = cand
    return best


def _small_kernels_us(m: int, d: int, splits_fwd: int, splits_bwd: int) -> float:
    """prep (reads the bf16 views twice, writes ẑ), finalize (the split sums, LSE, q), post
    (reads the views twice and the fp32 partials, writes the gradient): bytes at HBM rate, each
    at least SMALL_KERNEL_US."""
    prep = (3 * m * d * 2 + 2 * m * 4) / H200["hbm"]
    final = (splits_fwd + 5) * m * 4 / H200["hbm"]
    post = (3 * m * d * 2 + splits_bwd * m * d * 4) / H200["hbm"]
    return sum(max(t * 1e6, SMALL_KERNEL_US) for t in (prep, final, post))


def predict(rows: list[dict[str, Any]], m: int, d: int = 128) -> dict[str, Any]:
    """The model at (m, d), bf16: best forward and backward, the small kernels, the floors."""
    out: dict[str, Any] = {"M": m, "D": d, "work": code_work(m, d)}
    out["forward"], out["backward"] = _part(rows, "forward", m, d), _part(rows, "backward", m, d)
    out["floor_us"] = floor_us(m, d)
    out["floor_sustained_us"] = floor_us(m, d, H200["bf16_sustained"])
    f, b = out["forward"], out["backward"]
    if f and b:
        out["small_us"] = _small_kernels_us(m, d, f["splits"], b["splits"])
        out["predicted_us"] = f["us"] + b["us"] + out["small_us"]
        out["fraction_of_floor"] = out["floor_us"] / out["predicted_us"]
        out["expected_us"] = [out["predicted_us"] * s for s in EXPECTED_SLOWDOWN]
    return out


MODEL_ASSUMPTIONS = """\
**Floor (overlapped).** The tensor cores and the exp units work at the same time (FlashAttention-3
relies on it), so the floor of one forward + backward is max(4·M²·D / 990 TFLOP/s, M² / 4.2e12
exp/s) — the symmetric algorithm's minimal work (each unordered pair once per pass) — not their
sum: 34.7 µs at M = 8192, D = 128. At the 790 TFLOP/s that large bf16 GEMMs sustain on the lent
H200 the same floor is 43.5 µs ("sustained floor").

**Work the code does.** Forward: one exp per unordered pair (symmetric tiles, relaxed atomics
for the column sums): M²·D FLOPs, M²/2 exps. Backward: row blocks, no atomics, so every S tile is
recomputed and P·ẑ taken per row block: 4·M²·D FLOPs, M² exps. Total 5·M²·D FLOPs (1.25× the
floor's count) and 1.5·M² exps: even a perfect kernel reaches 0.80 of the floor.

**Per tile (no stalls).** From the interior loop's SASS counts per thread (one iteration = one
tile) and the H200's peaks (990 TFLOP/s dense bf16; 132 SMs × 16 MUFU ex2 per clock × 1.98 GHz;
4 warp instructions issued per clock per SM; 4.8 TB/s): tensor time = 2·BM·BN·D·dots /
(990e12/132); MUFU time = MUFU·warps·32/16 clocks; issue time = every non-HGMMA instruction·
warps/4 clocks; elementwise = max(MUFU, issue). With one program resident per SM the tensor and
elementwise phases add (each dot waits for the softmax that feeds it); with two or more they
overlap (max). Programs run in waves of 132 × resident; each program's masked tiles (the
diagonal, BM/BN tiles of the backward's band) cost the masked loop's counts. The backward adds
its fp32 split partials at 4.8 TB/s; the three small kernels (prep, finalize, post) their bytes
at 4.8 TB/s and at least 2 µs each. The best compiled config per kernel is taken, as the
autotuner would pick it.

**Expected on the device.** The no-stall model leaves out memory latency, the wgmma wait between
the backward's two dots, pipeline barriers, L2 misses (ẑ is 2 MB at M = 8192 and is re-read from
L2 by every program) and the launch gaps inside a CUDA graph (5 launches). Assumed: the device
takes 1.15–1.6× the prediction; the first GPU run (`make gpu-check`) replaces this by a
measurement, timed both eagerly and as a CUDA graph."""


def model_md(models: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The model section of the report (tables and the per-tile lines)."""
    lines = [
        f"## On-paper model: H200, bf16, D = 128, one forward + backward (triton {meta['triton']})",
        "",
        MODEL_ASSUMPTIONS,
        "",
        "| M | forward (config, S, µs) | backward (config, S, µs) | small kernels µs | "
        "predicted µs | floor µs | **fraction of floor** | floor at 790 TFLOP/s µs | "
        "expected µs | expected fraction |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mo in models:
        f, b = mo.get("forward"), mo.get("backward")
        if not (f and b):
            continue
        lo, hi = mo["expected_us"]
        lines.append(
            f"| {mo['M']} | {f['config']}, S={f['splits']}, {f['us']:.1f} | {b['config']}, "
            f"S={b['splits']}, {b['us']:.1f} | {mo['small_us']:.1f} | {mo['predicted_us']:.1f} | "
            f"{mo['floor_us']:.1f} | **{mo['fraction_of_floor']:.2f}** | "
            f"{mo['floor_sustained_us']:.1f} | "
            f"{lo:.0f}–{hi:.0f} | {mo['floor_us'] / hi:.2f}–{mo['floor_us'] / lo:.2f} |"
        )
    lines.append("")
    for mo in models:
        w = mo["work"]
        lines.append(
            f"- M = {mo['M']}: the code does {(w['fwd_flops'] + w['bwd_flops']) / 1e12:.3f} "
            f"TFLOP and {(w['fwd_exps'] + w['bwd_exps']) / 1e9:.2f} G exps "
            f"(floor's count: {4 * mo['M'] ** 2 * mo['D'] / 1e12:.3f} TFLOP, "
            f"{mo['M'] ** 2 / 1e9:.2f} G exps)."
        )
        for part in ("forward", "backward"):
            c = mo.get(part)
            if c:
                t = c["tile_ns"]
                lines.append(
                    f"- M = {mo['M']} {part}: {c['programs']} programs × {c['tiles']} tiles "
                    f"({c['masked_tiles']} masked); per interior tile tensor {t['tc']:.0f} ns, "
                    f"MUFU {t['mufu']:.0f} ns, issue {t['issue']:.0f} ns → {t['tile']:.0f} ns."
                )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# before → after: the hot configs of a baseline report (an earlier commit's JSON) beside these

_INT_OPS = ("IMAD", "IADD3", "LEA", "ISETP", "SEL", "LOP3", "SHF", "VIADD", "PLOP3", "I2F", "F2I")
HISTORY_KEYS = ("kernel", "dtype", "D", "BM", "BN", "warps", "stages")


def _hot(r: dict[str, Any]) -> bool:
    return (
        r.get("dtype") == "bf16"
        and r.get("D") == "D128"
        and "error" not in r
        and not r.get("ONLINE", 0)
        and bool(r.get("ROW_TERM", 1) and r.get("COL_TERM", 1))
        and r.get("kernel") in ("ntxent_sym_fwd_kernel", "ntxent_rows_bwd_kernel")
    )


def loop_summary(r: dict[str, Any]) -> dict[str, int]:
    """Per-thread counts of one tile of the interior loop, by class."""
    mix = r.get("hot_loop_mix", {})
    return {
        "instrs": sum(mix.values()),
        "MUFU": mix.get("MUFU", 0),
        "int/select": sum(mix.get(k, 0) for k in _INT_OPS),
        "LDGSTS": mix.get("LDGSTS", 0),
        "SHFL/BAR": mix.get("SHFL", 0) + mix.get("BAR", 0),
    }


def baseline_summary(report: dict[str, Any], label: str) -> dict[str, Any]:
    """What a report keeps of itself to be a later report's "before"."""
    rows = [
        {**{k: r.get(k) for k in HISTORY_KEYS}, **loop_summary(r)}
        for r in report.get("rows", [])
        if _hot(r)
    ]
    model = {mo["M"]: mo.get("predicted_us") for mo in report.get("model", [])}
    ours = {}  # the same rows through this model (the report's own model may differ)
    for m in (8192, 65536):
        fixed = [
            {**r, "masked_loop_mix": r.get("masked_loop_mix") or r.get("hot_loop_mix", {})}
            for r in report.get("rows", [])
            if "hot_loop_mix" in r
        ]
        ours[m] = predict(fixed, m).get("predicted_us")
    return {
        "label": label,
        "triton": report.get("triton"),
        "rows": rows,
        "predicted_us": model,
        "predicted_us_this_model": ours,
    }


def history_md(
    baseline: dict[str, Any] | None, rows: list[dict[str, Any]], models: list[dict[str, Any]]
) -> str:
    """The before → after section (empty without a baseline)."""
    if not baseline:
        return ""
    lines = [
        f"## Before → after: the hot bf16 loops against {baseline['label']} "
        f"(triton {baseline['triton']})",
        "",
        "Per thread and tile of the interior loop (before: the only tile loop). int/select: "
        "IMAD, IADD3, LEA, ISETP, SEL, LOP3, SHF, VIADD, PLOP3, I2F, F2I.",
        "",
        "| kernel | BM×BN, warps×stages | instrs | MUFU | int/select | LDGSTS | SHFL+BAR |",
        "|---|---|---|---|---|---|---|",
    ]
    old = {tuple(r[k] for k in HISTORY_KEYS): r for r in baseline["rows"]}
    for r in rows:
        if not _hot(r):
            continue
        before = old.get(tuple(r.get(k) for k in HISTORY_KEYS))
        now = loop_summary(r)
        cells = [f"{before[c]} → {now[c]}" if before else f"— → {now[c]}" for c in now]
        bn = r.get("BN", r["BM"])
        lines.append(
            f"| {r['kernel']} | {r['BM']}×{bn}, {r['warps']}×{r['stages']} | "
            + " | ".join(cells)
            + " |"
        )
    for mo in models:
        m = mo["M"]
        was = baseline["predicted_us"].get(m) or baseline["predicted_us"].get(str(m))
        same = baseline.get("predicted_us_this_model", {})
        ours = same.get(m) or same.get(str(m))
        if was and ours and mo.get("predicted_us"):
            lines.append(
                f"\nModel at M = {m}: {ours:.1f} µs before by this model ({was:.1f} µs by the "
                f"report's own model, which added the tensor and exp time), "
                f"{mo['predicted_us']:.1f} µs now."
            )
    return "\n".join(lines) + "\n"
