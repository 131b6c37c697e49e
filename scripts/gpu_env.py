"""The first step of scripts/gpu_check.sh: what the run is made of, and that it imports this copy.

Imports torch, triton, fastclr and every Triton kernel module from the repository (a bare copy,
no install), fails if fastclr comes from anywhere else, then prints the device, the versions and
the clocks. ``--imports-only`` (the dry run) stops before anything needs CUDA.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

MODULES = (
    "fastclr.kernels.triton.augment",
    "fastclr.kernels.triton.ntxent",
    "fastclr.kernels.triton.ntxent_bwd",
    "fastclr.kernels.triton.ntxent_rows",
    "fastclr.kernels.triton.ntxent_fused",
    "fastclr.ops.triton_ntxent",
    "fastclr.ops.triton_fused",
)


def main() -> int:
    root = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
    import torch
    import triton

    import fastclr

    for name in MODULES:
        importlib.import_module(name)
    where = os.path.realpath(fastclr.__file__)
    if not where.startswith(root + os.sep):
        print(f"[gpu-check] fastclr imported from {where}, not from this copy ({root})")
        return 1
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "no CUDA device"
    print(
        f"[gpu-check] {name}, torch {torch.__version__}, triton {triton.__version__}, "
        f"CUDA {torch.version.cuda}; fastclr from {os.path.dirname(where)}"
    )
    if "--imports-only" in sys.argv or not cuda:
        return 0
    props = torch.cuda.get_device_properties(0)
    print(f"[gpu-check] {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB")
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,driver_version", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        print(smi.stdout.strip())
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"(nvidia-smi: {exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
