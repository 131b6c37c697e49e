"""The record and the Markdown report of bench/pipeline_bench.py (machine tag, tables, problems)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
from typing import Any

import torch
from step_limit import STAGES

#: CPU flags that decide bf16 and wide-vector speed, reported with every run
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
PIPELINE_NAMES = {
    "fastclr": "fastclr (crops in workers, augmentation in the step)",
    "fastclr-workers": "fastclr, views finished in workers (fused native crop + augment)",
    "fastclr-bf16": "fastclr, views finished in workers, `--precision bf16` (opt-in)",
    "lightly": "lightly example (ImageFolder + SimCLRTransform + NTXentLoss + LARS)",
}
STAGE_NAMES = {"forward": "model forward", "backward": "model backward", "optimizer": "optimiser"}


def machine() -> dict[str, Any]:
    """CPU, its bf16 support and flags, versions, threads and date, for the record."""
    import fastclr
    from fastclr import _native
    from fastclr.cpu_info import cpu_bf16_support, cpu_flags, cpu_model

    tag: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_bf16_support(),
        "flags": [f for f in FLAGS_OF_INTEREST if f in cpu_flags()],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_isa": _native.require().active_isa() if _native.available() else None,
        "torch": torch.__version__,
        "fastclr": fastclr.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for peer in ("torchvision", "lightly"):
        try:
            tag[peer] = __import__(peer).__version__
        except ImportError:
            tag[peer] = None
    return tag


def problems(record: dict[str, Any]) -> list[str]:
    """Every error or failed sanity check in ``record`` (empty: the run is valid)."""
    out = [f"check: {record['check']['error']}"] if "error" in record.get("check", {}) else []
    for size, res in record.get("sizes", {}).items():
        results = [(f"{p} round", r) for p, rs in res.get("rounds", {}).items() for r in rs]
        results += [(f"{p} profile", r) for p, r in res.get("profiles", {}).items()]
        if "variants" in res:
            results.append(("variants", res["variants"]))
        for name, r in results:
            why = r.get("error") or r.get("problem")
            if why:
                out.append(f"{size} px {name}: {why}")
    return out


def _med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else None


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def throughput_table(res: dict[str, Any]) -> list[str]:
    """Images/s and CPU ms/img per pipeline (medians over rounds), against the lightly pipeline."""
    lines = [
        "| pipeline | images/s (median) | rounds | CPU ms/img (all processes) | main / workers "
        "| img/s × lightly | lightly CPU ÷ this CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    peer = res["rounds"]["lightly"]
    peer_rate, peer_cpu = _med(peer, "images_per_s"), _med(peer, "cpu_ms_per_img")
    for p, rows in res["rounds"].items():
        rate, cpu = _med(rows, "images_per_s"), _med(rows, "cpu_ms_per_img")
        each = ", ".join(_fmt(r.get("images_per_s")) for r in rows)
        main, work = _med(rows, "main_cpu_ms_per_img"), _med(rows, "worker_cpu_ms_per_img")
        split = f"{_fmt(main)} / {_fmt(work)}"
        x_rate = rate / peer_rate if rate and peer_rate else None
        x_cpu = peer_cpu / cpu if cpu and peer_cpu else None
        lines.append(
            f"| {PIPELINE_NAMES[p]} | {_fmt(rate)} | {each} | {_fmt(cpu)} | {split} | "
            f"{_fmt(x_rate, '.2f')} | {_fmt(x_cpu, '.2f')} |"
        )
    return lines


def stage_table(res: dict[str, Any]) -> list[str]:
    """CPU ms/img per stage at 1 thread per pipeline, with FLOPs and fraction of the matmul rate."""
    prof, batch = res["profiles"], res["batch"]
    ok = [p for p in prof if "cpu_s" in prof[p]]
    rate = prof.get("fastclr", {}).get("matmul", {}).get("fp32", {}).get("cpu_flop_per_s")
    flops = prof[ok[0]]["flops"] if ok else {}
    head = "| stage | " + " | ".join(f"{p} ms/img" for p in ok) + " | GFLOP/img | "
    head += " | ".join(f"{p}: fraction of matmul rate" for p in ok) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(ok))]
    for stage in ("decode", "crop/resize", "augment", *STAGES, "total"):
        ms = {}
        for p in ok:
            cpu = prof[p]["cpu_s"]
            s = sum(cpu.values()) if stage == "total" else cpu.get(stage)
            ms[p] = None if s is None else 1e3 * s / batch
        f = sum(flops.get(s, 0.0) for s in STAGES) if stage == "total" else flops.get(stage, 0.0)
        frac = {p: (f / batch) / (ms[p] / 1e3) / rate if f and rate and ms[p] else None for p in ok}
        name = STAGE_NAMES.get(stage, stage)
        lines.append(
            f"| {name} | " + " | ".join(_fmt(ms[p], ".2f") for p in ok) + f" | "
            f"{_fmt(f / batch / 1e9 if f else None, '.3f')} | "
            + " | ".join(_fmt(frac[p], ".3f") for p in ok)
            + " |"
        )
    if rate:
        floor = 1e3 * sum(flops.get(s, 0.0) for s in STAGES) / batch / rate
        lines += [
            "",
            f"1-thread fp32 matmul rate (CPU time): {rate / 1e9:.1f} GFLOP/s; the step's "
            f"FLOPs at that rate take {floor:.2f} ms/img (its floor).",
        ]
    return lines


def variants_table(res: dict[str, Any]) -> list[str]:
    """fastclr's model step: fp32/bf16 × joint/separate, against fp32 joint (the default)."""
    v = res["variants"]
    if "rows" not in v:
        return [f"variants: {v.get('error')}"]
    base = v["rows"]["fp32/joint"]
    flop = sum(v["flops"].get(s, 0.0) for s in STAGES) / res["batch"]
    lines = [
        "| precision / views forward | images/s | CPU ms/img | img/s × fp32 joint "
        "| CPU × fp32 joint | loss at step 0 | fraction of matmul rate (own dtype, CPU time) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in v["rows"].items():
        rate = v["matmul"][k.split("/")[0]]["cpu_flop_per_s"]
        lines.append(
            f"| {k} | {r['images_per_s']:.1f} | {r['cpu_ms_per_img']:.2f} | "
            f"{r['images_per_s'] / base['images_per_s']:.2f} | "
            f"{base['cpu_ms_per_img'] / r['cpu_ms_per_img']:.2f} | {r['first_loss']:.4f} | "
            f"{flop / (r['cpu_ms_per_img'] / 1e3) / rate:.3f} |"
        )
    mm = v["matmul"]
    lines += [
        "",
        f"matmul rate at {v['threads']} threads per CPU second: fp32 "
        f"{mm['fp32']['cpu_flop_per_s'] / 1e9:.1f}, bf16 {mm['bf16']['cpu_flop_per_s'] / 1e9:.1f} "
        f"GFLOP/s (wall: fp32 {mm['fp32']['flop_per_s'] / 1e9:.1f}, bf16 "
        f"{mm['bf16']['flop_per_s'] / 1e9:.1f}); {flop / 1e9:.3f} GFLOP per image (two views, "
        "forward + backward)",
    ]
    return lines


def size_sections(res: dict[str, Any]) -> list[str]:
    """The tables of one view size, for the parts that were measured."""
    lines: list[str] = []
    if "rounds" in res:
        rows = [r for rs in res["rounds"].values() for r in rs]
        loads = [r["loadavg_before"][0] for r in rows if "loadavg_before" in r]
        lines += [
            f"Load average (1 min) at the start of the rounds: {min(loads, default=0):.1f}–"
            f"{max(loads, default=0):.1f}; torch threads per training process: "
            f"{res.get('threads') or 'default'}",
            "",
            *throughput_table(res),
            "",
        ]
    if "profiles" in res:
        lines += [
            "CPU ms per image per stage, one batch in one process at 1 thread:",
            "",
            *stage_table(res),
            "",
        ]
    if "variants" in res:
        lines += [
            "fastclr's model step alone (pre-augmented views), interleaved rounds:",
            "",
            *variants_table(res),
            "",
        ]
    return lines


def report(record: dict[str, Any]) -> list[str]:
    """The Markdown report of one run."""
    m = record["machine"]
    lines = [
        "# fastclr pretraining step vs the lightly-example pipeline (CPU)",
        "",
        f"Command: `{record['command']}` ({record.get('seconds', 0):.0f} s)",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['threads']} torch threads; "
        f"{m['cpu_bf16']}; "
        f"flags {', '.join(m['flags'])}; torch {m['torch']} ({m['torch_cpu_capability']}), "
        f"torchvision {m['torchvision']}, lightly {m['lightly']}, fastclr {m['fastclr']} "
        f"(native {m['native_isa']}), Python {m['python']}, {m['date']}",
        "",
    ]
    chk = record.get("check", {})
    if "error" in chk:
        lines += [f"Checks before timing FAILED: {chk['error']}", ""]
    else:
        lines += [
            "Checks before timing (error / allowed bound; <= 1 passes): lightly's NT-Xent vs the "
            f"float64 reference {chk.get('lightly_loss_error_ratio', 0):.3g}, fastclr's "
            f"{chk.get('fastclr_loss_error_ratio', 0):.3g}; views finished in loader workers vs "
            f"the float64 augmentation definition {chk.get('worker_views_error_ratio', 0):.3g}; "
            "every timed step's loss finite and in (0, log(2B - 1) + 1).",
            "",
        ]
    for size, res in record.get("sizes", {}).items():
        lines += [f"## {size} px: ResNet-18 width {res['width']}, batch {res['batch']}", ""]
        lines += size_sections(res)
    bad = problems(record)
    lines += ["Problems: " + ("; ".join(bad) if bad else "none")]
    return lines
