"""What the CPU this process runs on can do natively (a leaf module: standard library and torch).

:func:`cpu_has_native_bf16` answers whether bf16 matrix products run in hardware here (x86:
AVX-512 BF16 or AMX-BF16; Arm: the BF16 extension) rather than being emulated through fp32,
which is what a bf16 choice on a CPU depends on. Flags come from ``/proc/cpuinfo`` (Linux); where
that file cannot be read, torch's own CPU probes are asked instead.

Example:
    >>> from fastclr.cpu_info import cpu_bf16_support, cpu_has_native_bf16
    >>> cpu_has_native_bf16(), cpu_bf16_support()
    (True, 'native bf16: amx_bf16, avx512_bf16')
"""

from __future__ import annotations

import functools
import platform

import torch

__all__ = ["BF16_FLAGS", "cpu_bf16_support", "cpu_flags", "cpu_has_native_bf16", "cpu_model"]

#: CPU feature flags (as /proc/cpuinfo names them) that mean hardware bf16 matrix arithmetic:
#: x86 AVX-512 BF16 (vdpbf16ps) and AMX-BF16 tiles; Arm's BF16 extension (BFDOT/BFMMLA).
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``).

    Empty where the file cannot be read (not Linux); :func:`cpu_has_native_bf16` then asks torch.
    """
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else "cpu"."""
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model"):
            return value.strip()
    return platform.processor() or "cpu"


def _torch_probe() -> list[str]:
    """The bf16 flags torch's own probes report (used only without /proc/cpuinfo)."""
    cpu = getattr(torch, "cpu", None)
    found = []
    for flag, probe in (
        ("amx_bf16", "_is_amx_tile_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
    ):
        fn = getattr(cpu, probe, None)
        if callable(fn) and fn():
            found.append(flag)
    return found


def _bf16_flags() -> list[str]:
    flags = cpu_flags()
    if not flags:
        return _torch_probe()
    arm = platform.machine().lower() in ("aarch64", "arm64")
    return sorted(f for f in BF16_FLAGS if f in flags and (arm or f != "bf16"))


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (:data:`BF16_FLAGS`)."""
    return bool(_bf16_flags())


def cpu_bf16_support() -> str:
    """One line for a run header or a benchmark record: which bf16 flags the CPU has, if any."""
    found = _bf16_flags()
    if found:
        return "native bf16: " + ", ".join(found)
    return "no native bf16 (bf16 is emulated through fp32 here)"
