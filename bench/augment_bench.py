"""Augmentation section of the benchmark: two SimCLR views per image, images per second.

The same uint8 batch goes through every backend. Backends that apply explicit parameters
(torch, native, triton) are first checked against the float64 reference for the same parameters
on a few images; kornia and DALI draw their own parameters, so they are checked for what they
promise (shape, dtype, memory format, finite values in the normalised range). The ratio column
compares each backend with kornia's AugmentationSequential measured in this run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from measure import time_fn

from fastclr.augment import AugmentConfig, SimCLRAugmentation, apply_reference, kornia_pipeline
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference, error_ratio

N_CHECKED = 4  # images checked against the reference before timing
# Known memory bandwidths (bytes/s) by device-name substring: spec sheets.
GPU_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12}


@dataclass
class AugRow:
    batch: str
    backend: str
    images_per_s: float | None = None
    ms: float | None = None
    vs_kornia: float | None = None
    gb_per_s: float | None = None  # CUDA only: sources read once per view + views written
    fraction_of_bw: float | None = None
    status: str = "ok"
    check: str = ""


def batches(device: torch.device, quick: bool) -> list[tuple[str, AugmentConfig, torch.Tensor]]:
    """(label, config, uint8 NHWC images) for each benchmark batch."""
    g = torch.Generator().manual_seed(0)
    out = []
    if device.type == "cuda":
        specs = [
            ("256 × 32² (CIFAR)", 256, 32, 32, "cifar"),
            ("256 × 224² from 320²", 256, 320, 224, "imagenet"),
        ]
    elif quick:
        specs = [
            ("64 × 32² (CIFAR)", 64, 32, 32, "cifar"),
            ("8 × 224² from 256²", 8, 256, 224, "imagenet"),
        ]
    else:
        specs = [
            ("256 × 32² (CIFAR)", 256, 32, 32, "cifar"),
            ("64 × 224² from 288²", 64, 288, 224, "imagenet"),
        ]
    for label, n, src, size, preset in specs:
        cfg = AugmentConfig.cifar(size) if preset == "cifar" else AugmentConfig.imagenet(size)
        imgs = torch.randint(0, 256, (n, src, src, 3), dtype=torch.uint8, generator=g)
        out.append((label, cfg, imgs.to(device)))
    return out


def _check_params_backend(aug: SimCLRAugmentation, images: torch.Tensor) -> str:
    sub = images[:N_CHECKED]
    p1, _ = aug.sample(sub.shape[0], torch.tensor([list(sub.shape[1:3])] * sub.shape[0]))
    got = aug.apply(sub, p1)
    ref64 = apply_reference(sub, p1.to(sub.device), replace(aug.config, dtype=torch.float64))
    assert_close_to_reference(got, ref64, atol=AUGMENT_ATOL, name="augmented views")
    return f"vs reference: error/bound {error_ratio(got, ref64, atol=AUGMENT_ATOL):.2g}"


def _check_promise(views: tuple[torch.Tensor, torch.Tensor], cfg: AugmentConfig) -> str:
    for v in views:
        assert v.shape[1:] == (3, cfg.size, cfg.size), f"shape {tuple(v.shape)}"
        assert v.dtype == cfg.dtype, f"dtype {v.dtype}"
        assert v.is_contiguous(memory_format=torch.channels_last), "not channels_last"
        lo = min((0 - m) / s for m, s in zip(cfg.mean, cfg.std, strict=True))
        hi = max((1 - m) / s for m, s in zip(cfg.mean, cfg.std, strict=True))
        vf = v.float()
        assert torch.isfinite(vf).all(), "non-finite output"
        assert vf.min() >= lo - 0.05 and vf.max() <= hi + 0.05, "outside the normalised range"
    assert not torch.equal(views[0], views[1]), "two views are identical"
    return "shape/dtype/range/two views differ"


def run(
    device: torch.device, quick: bool, reps: int, progress: Callable[[str], None]
) -> list[AugRow]:
    rows: list[AugRow] = []
    names = ["reference", "torch", "kornia"]
    if device.type == "cuda":
        names.insert(2, "triton")
    else:
        from fastclr.augment import native_backend

        if native_backend.available():
            names.insert(2, "native")
    try:
        import nvidia.dali  # noqa: F401

        names.append("dali")
    except ImportError:
        pass
    for label, cfg, images in batches(device, quick):
        n = images.shape[0]
        batch_rows: list[AugRow] = []
        for name in names:
            progress(f"augment {name} {label}")
            row = AugRow(label, name)
            batch_rows.append(row)
            if name == "reference" and (n > 64 or cfg.size > 64):
                row.status = "skipped: per-image float64 definition, too slow to time"
                continue
            try:
                if name == "kornia":
                    kp = kornia_pipeline(cfg)

                    def two_views(
                        kp: Callable[[torch.Tensor], torch.Tensor] = kp, x: torch.Tensor = images
                    ) -> object:
                        return kp(x), kp(x)
                else:
                    aug = SimCLRAugmentation(cfg, backend=name, seed=0, device=device)
                    if name in ("torch", "native", "triton"):
                        row.check = _check_params_backend(aug, images)

                    def two_views(
                        aug: SimCLRAugmentation = aug, x: torch.Tensor = images
                    ) -> object:
                        return aug(x)

                views = two_views()
                assert isinstance(views, tuple)
                promise = _check_promise(views, cfg)
                row.check = row.check or promise
            except AssertionError as exc:
                row.status = f"CHECK FAILED: {exc}"
                continue
            except (ImportError, NotImplementedError, RuntimeError) as exc:
                row.status = f"unavailable: {str(exc).splitlines()[0][:60]}"
                continue
            t = time_fn(two_views, device, warmup=1, reps=reps, max_seconds=8.0)
            row.ms = t.ms
            row.images_per_s = n / t.median_s
            if device.type == "cuda":
                # the least traffic two views need: each view reads its source once and writes
                # its (3, S, S) output once
                out_bytes = 2 * views[0].numel() * views[0].element_size()
                moved = 2 * images.numel() * images.element_size() + out_bytes
                row.gb_per_s = moved / t.median_s / 1e9
                name = torch.cuda.get_device_name(device)
                bw = next((v for k, v in GPU_BANDWIDTH.items() if k in name), None)
                row.fraction_of_bw = moved / t.median_s / bw if bw else None
        kornia = next((r for r in batch_rows if r.backend == "kornia" and r.images_per_s), None)
        for r in batch_rows:
            if kornia and r.images_per_s:
                r.vs_kornia = r.images_per_s / kornia.images_per_s
        rows += batch_rows
    return rows


def table(rows: list[AugRow], gpu: bool = False) -> list[str]:
    head = "| batch | backend | ms (two views) | images/s | vs kornia |"
    head += " GB/s | fraction of bandwidth |" if gpu else ""
    head += " status | check |"
    lines = [head, "|" + "---|" * head[1:].count("|")]
    for r in rows:
        ips = "—" if r.images_per_s is None else f"{r.images_per_s:,.0f}"
        ms = "—" if r.ms is None else f"{r.ms:.1f}"
        ratio = "—" if r.vs_kornia is None else f"{r.vs_kornia:.2f}×"
        line = f"| {r.batch} | {r.backend} | {ms} | {ips} | {ratio} |"
        if gpu:
            gbs = "—" if r.gb_per_s is None else f"{r.gb_per_s:.0f}"
            frac = "—" if r.fraction_of_bw is None else f"{r.fraction_of_bw:.2f}"
            line += f" {gbs} | {frac} |"
        lines.append(line + f" {r.status} | {r.check} |")
    return lines
