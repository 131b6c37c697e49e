"""Timing and peak-memory measurement shared by the benchmark sections.

Times are medians over repetitions after warm-up, with CUDA synchronisation where the work runs on
a GPU. Peak extra memory is the rise over the memory in use when the measurement starts: on CUDA
from the caching allocator's peak statistics, on CPU from the process's peak resident set size
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["GPU_PEAKS", "Timing", "ntxent_work", "peak_extra_mb", "time_fn"]

# Known peaks: device-name substring -> (dense bf16 FLOP/s, exp/s). Spec sheet / SM count × clock:
# H100/H200 SXM 989-990 TFLOP/s dense bf16; 132 SMs × 16 MUFU ex2 per clock × 1.98 GHz.
GPU_PEAKS = {"H200": (990e12, 132 * 16 * 1.98e9), "H100": (989e12, 132 * 16 * 1.98e9)}


def ntxent_work(m: int, d: int, device_name: str) -> tuple[float, float, float | None]:
    """(flops, exps, limit_ms) of one NT-Xent forward+backward at M rows of D.

    The symmetric algorithm visits each unordered pair once per pass: forward S (M²·D flops,
    M²/2 exps); backward S again (M²·D), P·ẑ and Pᵀ·ẑ (2·M²·D) and M²/2 exps — 4·M²·D flops and
    M² exps in all. The limit is flops / peak bf16 + exps / peak exp rate, None where the peaks of
    ``device_name`` are not known.
    """
    flops, exps = 4.0 * m * m * d, float(m) * m
    peak = next((v for k, v in GPU_PEAKS.items() if k in device_name), None)
    limit = (flops / peak[0] + exps / peak[1]) * 1e3 if peak else None
    return flops, exps, limit


@dataclass
class Timing:
    median_s: float
    reps: int

    @property
    def ms(self) -> float:
        return self.median_s * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 1,
    reps: int = 5,
    max_seconds: float = 20.0,
) -> Timing:
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs.

    A slow ``fn`` gets fewer repetitions so that one measurement stays near ``max_seconds``
    (at least one timed run always happens).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent + dt > max_seconds:
            break
    return Timing(statistics.median(times), len(times))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False


def peak_extra_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory ``fn()`` needs beyond what is allocated before it runs, in MB (None if the
    platform cannot tell)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not _cpu_peak_supported():
        return None
    base = _status_kb("VmRSS")
    fn()
    return max(0.0, (_status_kb("VmHWM") - base) / 1024)
