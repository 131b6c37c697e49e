"""Augmentation throughput: the torch backend next to kornia on the same batch (images/s).

``python -m fastclr.augment.throughput [--threads T] [--rounds R]`` prints one row per case and
implementation; ``bench/throughput.py`` can call :func:`augment_throughput` for the same rows.
Each case first checks the torch backend against the float64 reference on a few images, then
times two views per call, interleaving the implementations round by round (the machine's load
changes by the second on shared boxes) and keeping the median wall and CPU (process) time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fastclr.augment import AugmentConfig, SimCLRAugmentation, kornia_pipeline, sample_params
from fastclr.augment.inputs import Images, src_sizes_of
from fastclr.augment.reference import apply_reference
from fastclr.augment.torch_backend import FP32_ATOL, apply_torch

__all__ = ["ThroughputRow", "augment_throughput", "default_cases", "main"]


@dataclass(frozen=True)
class ThroughputRow:
    case: str
    impl: str
    images_per_s: float  # two views of every image per call, by median wall time
    wall_ms: float  # median wall time of one call (two views)
    cpu_ms: float  # median process CPU time of one call
    speedup: float  # kornia's median wall time / this one's (1.0 for kornia itself)


def default_cases(seed: int = 0) -> list[tuple[str, AugmentConfig, Images]]:
    """The two batches of the design target plus a ragged ImageNet-like one."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)

    sides = torch.randint(256, 321, (64, 2), generator=g).tolist()
    return [
        ("cifar 256x32 from 32", AugmentConfig.cifar(32), rand(256, 32, 32, 3)),
        ("imagenet 64x224 from 288", AugmentConfig.imagenet(224), rand(64, 288, 288, 3)),
        (
            "imagenet 64x224 from 256-320 ragged",
            AugmentConfig.imagenet(224),
            [rand(h, w, 3) for h, w in sides],
        ),
    ]


def _check(cfg: AugmentConfig, images: Images) -> None:
    few = images[:4]
    n = len(few)
    p = sample_params(n, src_sizes_of(few if isinstance(few, Tensor) else list(few)), cfg)
    ref = apply_reference(few, p, replace(cfg, dtype=torch.float64))
    err = float((apply_torch(few, p, replace(cfg, dtype=torch.float32)).double() - ref).abs().max())
    if err > FP32_ATOL:
        raise AssertionError(f"torch backend differs from the reference by {err:.3g}")


class _TwoViews:
    def __init__(self, one_view: Callable[[Images], Tensor]) -> None:
        self.one_view = one_view

    def __call__(self, images: Images) -> tuple[Tensor, Tensor]:
        return self.one_view(images), self.one_view(images)


def _bind(fn: Callable[[Images], object], images: Images) -> Callable[[], object]:
    return lambda: fn(images)


def augment_throughput(
    cases: list[tuple[str, AugmentConfig, Images]] | None = None, rounds: int = 7
) -> list[ThroughputRow]:
    """Time torch vs kornia (two views per call) on each case; see the module docstring."""
    rows: list[ThroughputRow] = []
    for name, cfg, images in cases if cases is not None else default_cases():
        _check(cfg, images)
        n = len(images)
        aug = SimCLRAugmentation(cfg, backend="torch", seed=0)
        impls: dict[str, Callable[[], object]] = {"torch": _bind(aug, images)}
        if isinstance(images, Tensor):  # kornia needs a dense batch
            impls["kornia"] = _bind(_TwoViews(kornia_pipeline(cfg)), images)
        wall: dict[str, list[float]] = {key: [] for key in impls}
        cpu: dict[str, list[float]] = {key: [] for key in impls}
        for f in impls.values():
            f()  # warm-up
        for _ in range(rounds):
            for key, f in impls.items():
                t0, c0 = time.perf_counter(), time.process_time()
                f()
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
        med = {key: statistics.median(v) for key, v in wall.items()}
        base = med.get("kornia")
        for key in impls:
            rows.append(
                ThroughputRow(
                    case=name,
                    impl=key,
                    images_per_s=n / med[key],
                    wall_ms=med[key] * 1e3,
                    cpu_ms=statistics.median(cpu[key]) * 1e3,
                    speedup=(base / med[key]) if base is not None else float("nan"),
                )
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(
        f"{'case':38s} {'impl':7s} {'img/s':>9s} {'wall ms':>9s} {'cpu ms':>9s} {'vs kornia':>9s}"
    )
    for r in augment_throughput(rounds=args.rounds):
        vs = "n/a" if math.isnan(r.speedup) else f"{r.speedup:.1f}x"  # no kornia for ragged
        print(
            f"{r.case:38s} {r.impl:7s} {r.images_per_s:9.1f} {r.wall_ms:9.1f} {r.cpu_ms:9.1f} "
            f"{vs:>9s}"
        )


if __name__ == "__main__":
    main()
