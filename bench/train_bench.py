"""End-to-end section of the benchmark: a SimCLR pretraining step against the model-only step.

``fastclr.train.step_rates`` times, in one process, (a) the full step — augmentation of two views,
encoder + head forward/backward, NT-Xent, LARS — and (b) the same step on pre-augmented views of the
same shape, plus the augmentation alone, in interleaved rounds whose medians are reported. The
figure is end-to-end / model-only. Before timing, the loss the step uses is checked against the
reference on embeddings of this model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import fastclr
from fastclr.reference import ntxent_reference, views_to_batch
from fastclr.train import build_model, step_rates


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
    err = abs(got.item() - ref.item()) / abs(ref.item())
    assert err < 1e-4, f"loss {got.item()} vs reference {ref.item()}"
    return f"loss vs reference rel {err:.1e}"


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
