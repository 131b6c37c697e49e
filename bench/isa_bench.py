"""The native kernels' instruction-set copies side by side, and against another build of them.

    python bench/isa_bench.py                         # every copy in the installed build
    python bench/isa_bench.py --so /tmp/b/_cpu.so     # + every copy of another build

The installed ``fastclr._cpu`` holds one copy of the kernels per instruction set and runs the best
one the CPU supports (kernels/cpu/isa.h); ``FASTCLR_ISA`` lowers the choice. A library built with
``-march=native`` for comparison:

    cmake -S . -B /tmp/b -DFASTCLR_NATIVE_ARCH=ON -DPython_EXECUTABLE=$(which python)
    cmake --build /tmp/b -j2        # -> /tmp/b/_cpu.cpython-*.so

Each variant runs in its own process (one module per process), the variants interleaved over
``--rounds`` rounds so that a busy machine slows them alike. Times are CPU seconds of one thread
(``time.process_time``, OpenMP and torch set to one thread): on a shared machine the wall clock
mostly measures the neighbours. Every variant's loss and augmentation are checked against the
float64 references before they are timed. The last row times the plain-torch alternatives a user
has without the native library, in the same rounds: the float32 definition of the loss
(``ntxent_reference(..., upcast=False)``, the full M×M matrix) and the ``"torch"`` augmentation
backend. Medians over rounds are printed, each with its ratio to the installed build's best copy
and to that torch row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TORCH_ROW = "torch (no native library)"

# Runs in a child process: argv = [so path or "", quick flag, "native" or "torch"].
_CHILD = r"""
import importlib.util, json, statistics, sys, time
from dataclasses import replace
if sys.argv[1]:
    spec = importlib.util.spec_from_file_location("fastclr._cpu", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fastclr._cpu"] = mod
    spec.loader.exec_module(mod)
import torch
import fastclr
from fastclr import _native
from fastclr.augment import AugmentConfig, SimCLRAugmentation, apply_reference, sample_params
from fastclr.augment.native_backend import apply_native
from fastclr.reference import ntxent_reference, views_to_batch
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference
torch.set_num_threads(1)
lib = _native.require()
quick = sys.argv[2] == "1"
torch_row = sys.argv[3] == "torch"
g = torch.Generator().manual_seed(0)
# check first: values and gradients against float64, both sides of the constant-shift switch
for tau in (0.5, 0.02):
    v = [torch.randn(97, 40, generator=g, dtype=torch.float64) for _ in range(2)]
    x = [t.float().requires_grad_() for t in v]
    y = [t.clone().requires_grad_() for t in v]
    got = fastclr.ntxent(*x, temperature=tau, backend="native")
    got.backward()
    ref = ntxent_reference(*views_to_batch(y), tau)
    ref.backward()
    assert_close_to_reference(got, ref, rtol=2e-5, atol=1e-5, name="loss")
    assert_close_to_reference([t.grad for t in x], [t.grad for t in y], rtol=2e-4, atol=1e-6)
cfg = AugmentConfig.imagenet(17, jitter_p=1.0, blur_p=1.0)
imgs = torch.randint(0, 256, (4, 30, 23, 3), dtype=torch.uint8, generator=g)
p = sample_params(4, torch.tensor([[30, 23]] * 4), cfg, g)
ref64 = apply_reference(imgs, p, replace(cfg, dtype=torch.float64))
assert_close_to_reference(apply_native(imgs, p, cfg), ref64, atol=AUGMENT_ATOL, elementwise=True)

def cpu_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3

def torch_loss(a, b):
    return ntxent_reference(*views_to_batch([a, b]), 0.1, upcast=False)

def native_loss(a, b):
    return fastclr.ntxent(a, b, temperature=0.1, backend="native")

loss = torch_loss if torch_row else native_loss
isa = lib.active_isa() if hasattr(lib, "active_isa") else "single build"
out = {"isa": "torch fp32" if torch_row else isa}
for m in ((1024, 2048) if quick else (2048, 8192)):
    a = torch.randn(m // 2, 128, generator=g, requires_grad=True)
    b = torch.randn(m // 2, 128, generator=g, requires_grad=True)
    out[f"loss fwd+bwd 2N={m}"] = cpu_ms(lambda: loss(a, b).backward(), 5)
n = 8 if quick else 32
imgs = torch.randint(0, 256, (n, 256, 256, 3), dtype=torch.uint8, generator=g)
backend = "torch" if torch_row else "native"
aug = SimCLRAugmentation(AugmentConfig.imagenet(224), backend=backend, seed=0)
out[f"augment {n}x224 (2 views)"] = cpu_ms(lambda: aug(imgs), 3)
print(json.dumps(out))
"""


def _run(so: str, isa: str | None, quick: bool, kind: str) -> dict[str, float | str]:
    env = dict(os.environ)
    env.pop("FASTCLR_ISA", None)
    if isa is not None:
        env["FASTCLR_ISA"] = isa
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-c", _CHILD, so, "1" if quick else "0", kind]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"variant so={so or 'installed'} FASTCLR_ISA={isa}: {proc.stderr[-2000:]}")
    result: dict[str, float | str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _copies(so: str) -> list[str | None]:
    """The instruction-set copies in library `so`, worst first (``[None]`` for a one-copy build)."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('fastclr._cpu', sys.argv[1])\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print(getattr(mod, 'compiled_isas', 'native'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, so], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"--so {so}: cannot load it: {proc.stderr[-2000:]}")
    names: list[str | None] = list(proc.stdout.strip().split(","))
    return [None] if names == ["native"] else names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--so", action="append", default=[], help="another _cpu library to time")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for so in args.so:
        if not Path(so).is_file():
            parser.error(f"--so: no such file: {so}")

    from fastclr import _native

    compiled = _native.require().compiled_isas.split(",")
    # (label, so, FASTCLR_ISA, kind); the installed build's best copy first, torch last
    variants: list[tuple[str, str, str | None, str]] = [
        ("installed, best copy", "", None, "native")
    ]
    variants += [(f"installed, {isa}", "", isa, "native") for isa in reversed(compiled[:-1])]
    for so in args.so:
        copies = reversed(_copies(so))
        variants += [(f"--so {so}, {isa or 'its one copy'}", so, isa, "native") for isa in copies]
    variants += [(TORCH_ROW, "", None, "torch")]
    samples: dict[str, list[dict[str, float | str]]] = {v[0]: [] for v in variants}
    for r in range(args.rounds):
        for label, so, isa, kind in variants:
            print(f"round {r + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            samples[label].append(_run(so, isa, args.quick, kind))

    keys = [k for k in samples[variants[0][0]][0] if k != "isa"]
    med = {
        label: {k: statistics.median(float(s[k]) for s in samples[label]) for k in keys}
        for label, *_ in variants
    }
    best, ref = med[variants[0][0]], med[TORCH_ROW]
    print(
        f"CPU ms of one thread, median of {args.rounds} interleaved rounds "
        "(ratios: / best copy, and torch's time / this one)"
    )
    print()
    print("| variant | copy | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for label, *_ in variants:
        cells = [
            f"{v:.1f} ({v / best[k]:.2f}× best; torch ÷ this: {ref[k] / v:.1f})"
            for k, v in med[label].items()
        ]
        print(f"| {label} | {samples[label][0]['isa']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
