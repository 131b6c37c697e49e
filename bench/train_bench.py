"""End-to-end section of the benchmark: a SimCLR pretraining step against the model-only step.

``step_rates`` times, in one process, (a) the full step — augmentation of two views,
encoder + head forward/backward, NT-Xent, LARS — and (b) the same step on pre-augmented views of the
same shape, plus the augmentation alone, in interleaved rounds whose medians are reported. The
figure is end-to-end / model-only. Before timing, the loss the step uses is checked against the
reference on embeddings of this model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

import fastclr
from fastclr.loss import NTXentLoss
from fastclr.optim import LARS, lars_param_groups, scaled_lr
from fastclr.reference import ntxent_reference, views_to_batch
from fastclr.testing import assert_close_to_reference, error_ratio
from fastclr.train.builders import Augmentation, build_augmentation, build_model
from fastclr.train.loop import TrainingStep
from fastclr.train.precision import make_scaler, resolve_precision
from fastclr.train.recipe import stem_for


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rates(
    arch: str = "resnet18",
    stem: Literal["cifar", "imagenet"] = "cifar",
    batch_size: int = 256,
    image_size: int = 32,
    source_size: int | None = None,
    steps: int = 20,
    warmup_steps: int = 5,
    precision: str = "auto",
    device: str | torch.device | None = None,
    augment_backend: str = "auto",
    loss_backend: str = "auto",
    temperature: float = 0.5,
    compile: bool = False,
    width: float = 1.0,
    augment: Augmentation | None = None,
    seed: int = 0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Pretraining images/s end to end (augment + encoder + loss + LARS) and model-only, one run.

    Both use the same model, optimiser and loss; "model-only" feeds pre-augmented views of the
    same shape and dtype, so ``ratio = end_to_end / model_only`` is the fraction of the model's
    step rate the full pipeline keeps (target ≥ 0.9 on a GPU). Images are counted once per source
    image (each gives two views). Also reports the augmentation alone. ``steps`` are split over
    ``rounds`` interleaved rounds (model-only, end-to-end, augment-only) and each rate is the
    median over rounds.

    Returns a dict with ``end_to_end_images_per_s``, ``model_only_images_per_s``,
    ``augment_only_images_per_s``, ``ratio`` and the settings used.
    """
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    prec = resolve_precision(precision, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)
    model = build_model(arch, stem, width).to(dev)
    if augment is None:
        preset = stem_for(image_size)[0]  # "cifar" or "imagenet": the size recipe
        augment = build_augmentation(preset, image_size, prec, augment_backend, seed, dev)
    loss_fn = NTXentLoss(temperature, backend=loss_backend, check_finite=False)  # type: ignore[arg-type]
    optimizer = LARS(lars_param_groups(model), lr=scaled_lr(batch_size))
    train_model: torch.nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
    stepper = TrainingStep(train_model, loss_fn, optimizer, make_scaler(prec, dev), prec, dev)
    src = source_size or image_size
    g = torch.Generator(device=dev).manual_seed(seed)
    images = torch.randint(
        0, 256, (batch_size, src, src, 3), generator=g, device=dev, dtype=torch.uint8
    )
    v1, v2 = augment(images)
    steps_by_kind: dict[str, Callable[[], object]] = {
        "model": lambda: stepper(v1, v2),
        "full": lambda: stepper(*augment(images)),
        "aug": lambda: augment(images),
    }
    rates = interleaved_rates(steps_by_kind, dev, batch_size, steps, warmup_steps, rounds)
    model_only, end_to_end, augment_only = (rates[k] for k in ("model", "full", "aug"))
    return {
        "end_to_end_images_per_s": end_to_end,
        "model_only_images_per_s": model_only,
        "augment_only_images_per_s": augment_only,
        "ratio": end_to_end / model_only,
        "arch": arch,
        "stem": stem,
        "width": width,
        "batch_size": batch_size,
        "image_size": image_size,
        "source_size": src,
        "precision": prec,
        "device": str(dev),
        "compile": compile,
        "steps": steps,
        "rounds": rounds,
        "view_dtype": str(v1.dtype),
    }


def interleaved_rates(
    kinds: dict[str, Callable[[], object]],
    dev: torch.device,
    batch_size: int,
    steps: int,
    warmup_steps: int,
    rounds: int,
) -> dict[str, float]:
    """Images/s of each kind of step: ``steps`` split over ``rounds`` interleaved rounds, the
    median over rounds (drift from clocks or other jobs hits every kind alike)."""

    def timed(fn: Callable[[], object], n: int) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
        return n * batch_size / (time.perf_counter() - t0)

    for fn in kinds.values():
        timed(fn, warmup_steps)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for k, fn in kinds.items():
            rates[k].append(timed(fn, per_round))
    return {k: statistics.median(v) for k, v in rates.items()}


def settings(device: torch.device, quick: bool) -> dict[str, Any]:
    if device.type == "cuda":
        return dict(
            arch="resnet50",
            stem="imagenet",
            batch_size=256,
            image_size=224,
            source_size=256,
            steps=20,
            warmup_steps=5,
            width=1.0,
        )
    # 2 CPU cores: a narrow ResNet-18 on 32-px images still shows where the time goes.
    return dict(
        arch="resnet18",
        stem="cifar",
        batch_size=64,
        image_size=32,
        source_size=32,
        steps=2 if quick else 4,
        warmup_steps=1,
        width=0.25,
    )


def _check_loss(cfg: dict[str, Any], device: torch.device) -> str:
    model = build_model(cfg["arch"], cfg["stem"], cfg["width"]).to(device)
    x = torch.rand(16, 3, cfg["image_size"], cfg["image_size"], device=device)
    with torch.no_grad():
        _, z1 = model(x)
        _, z2 = model(x.flip(3))
    got = fastclr.ntxent(z1.float(), z2.float(), temperature=0.5, check_finite=False)
    ref = ntxent_reference(*views_to_batch([z1.double(), z2.double()]), 0.5)
    assert_close_to_reference(got, ref, rtol=1e-4, name="loss")
    return f"loss vs reference: error/bound {error_ratio(got, ref, rtol=1e-4):.2g}"


def run(device: torch.device, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    cfg = settings(device, quick)
    out: dict[str, Any] = {"settings": cfg}
    try:
        out["check"] = _check_loss(cfg, device)
    except AssertionError as exc:
        out["status"] = f"CHECK FAILED: {exc}"
        return out
    progress("train step rates (interleaved rounds)")
    res = step_rates(device=device, rounds=1 if quick else 3, **cfg)
    for key in ("end_to_end_images_per_s", "model_only_images_per_s", "augment_only_images_per_s"):
        out[key] = res[key]
    out["ratio"] = res["ratio"]
    out["precision"] = res["precision"]
    out["repeats"] = 1 if quick else 3
    out["status"] = "ok"
    return out


def table(res: dict[str, Any]) -> list[str]:
    if res.get("status") != "ok":
        return [f"end-to-end: {res.get('status')}"]
    s = res["settings"]
    per_img = {
        k: 1e3 / res[k]
        for k in ("end_to_end_images_per_s", "model_only_images_per_s", "augment_only_images_per_s")
    }
    return [
        f"{s['arch']} (width {s['width']}, {s['stem']} stem), batch {s['batch_size']}, "
        f"{s['image_size']}² from {s['source_size']}², {res['precision']}, "
        f"median of {res['repeats']} interleaved rounds of {s['steps']} steps",
        "",
        "| step | images/s | ms per image |",
        "|---|---|---|",
        f"| end to end (augment + model + loss + LARS) | {res['end_to_end_images_per_s']:,.1f} "
        f"| {per_img['end_to_end_images_per_s']:.2f} |",
        f"| model only (pre-augmented views) | {res['model_only_images_per_s']:,.1f} "
        f"| {per_img['model_only_images_per_s']:.2f} |",
        f"| augmentation only (two views) | {res['augment_only_images_per_s']:,.1f} "
        f"| {per_img['augment_only_images_per_s']:.2f} |",
        "",
        f"end-to-end / model-only = **{res['ratio']:.2f}** ({res['check']})",
    ]
