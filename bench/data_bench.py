"""Data section of the benchmark: how fast the loaders feed the model, and their peak memory.

On a folder of synthetic ~500×375 JPEGs this script writes (smooth colour fields plus noise,
quality 90), each measurement runs in its own subprocess so that its peak RSS (main process +
largest decoding worker) is its own:

* loader alone at 224 px (ImageNet recipe: crops drawn on the original size, two views per image):
  the streaming loader with 2 DataLoader workers, and DALI's graph on the CPU (2 threads), against
  the model-only step rate of the CPU model at 224 px (quarter-width ResNet-18, fp32). On a GPU
  (not measured here): DALI with nvJPEG (``device="mixed"``) against ResNet-50 bf16 at 224 px;
  target: the loader + fused augmentation at or above the model's step rate.
* the 2-core target at 64 px: the streaming loader with 2 workers feeding the quarter-width
  ResNet-18 (CIFAR stem) step, end to end from files (decode + crop in the workers, colour
  augmentation + model + loss + LARS in the main process) against the model-only step on
  pre-augmented views, in interleaved rounds (median); target end-to-end ≥ 0.85 × model-only.

Before timing, one streamed batch is checked against the definition: its crops equal the boxes
drawn on the files' original sizes, resized by the documented rule (:func:`resize_box`).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

SOURCE_W, SOURCE_H = 500, 375
#: quarter-width ResNet-18: the CPU model of the end-to-end targets
CPU_MODEL = {"arch": "resnet18", "width": 0.25}


def write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs of 500×375 in 4 class folders: smooth random colour fields plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SOURCE_H, 0:SOURCE_W].astype(np.float32)
    for i in range(n):
        sub = root / f"class{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.005, 0.03, size=(3, 2))
        ph = rng.uniform(0, 6.3, size=3)
        chans = [127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + ph[c]) for c in range(3)]
        img = np.stack(chans, -1) + rng.normal(0, 12, (SOURCE_H, SOURCE_W, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            sub / f"{i:05d}.jpg", quality=90
        )
    return root


def _peak_mb() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (me + kids) / 1024


def _loader(spec: dict[str, Any]) -> Any:
    from fastclr.augment import AugmentConfig
    from fastclr.data import list_image_folder

    listing = list_image_folder(spec["folder"])
    data = (listing.files, listing.labels, AugmentConfig.imagenet(spec["size"]), spec["batch"])
    if spec["loader"] == "dali":
        from fastclr.data.dali import DaliLoader

        return DaliLoader(*data, num_threads=spec["workers"], device=spec["device"])
    from fastclr.data.stream import StreamingLoader

    return StreamingLoader(*data, num_workers=spec["workers"], pin_memory=spec["device"] == "cuda")


def _child_loader(spec: dict[str, Any]) -> dict[str, Any]:
    loader = _loader(spec)
    it = loader.epoch(0)
    next(it)  # warm-up: workers start, DALI builds its graph
    t0 = time.perf_counter()
    n = 0
    for _ in range(spec["batches"]):
        batch = next(it)
        n += batch.labels.numel()
    if spec["device"] == "cuda":
        torch.cuda.synchronize()
    rate = n / (time.perf_counter() - t0)
    del it, loader
    import gc

    gc.collect()
    return {"images_per_s": rate, "peak_rss_mb": _peak_mb()}


def _model_step(spec: dict[str, Any]) -> tuple[Callable[..., Any], Any]:
    from fastclr.loss import NTXentLoss
    from fastclr.optim import LARS, lars_param_groups, scaled_lr
    from fastclr.train.builders import build_augmentation, build_model
    from fastclr.train.loop import TrainingStep
    from fastclr.train.precision import make_scaler, resolve_precision
    from fastclr.train.recipe import stem_for

    dev = torch.device(spec["device"])
    prec = resolve_precision("auto", dev)
    stem = stem_for(spec["size"])[0]
    model = build_model(spec["arch"], stem, spec["width"]).to(dev)
    aug = build_augmentation(stem, spec["size"], prec, "auto", 0, dev)
    opt = LARS(lars_param_groups(model), lr=scaled_lr(spec["batch"]))
    loss = NTXentLoss(0.5, check_finite=False)
    return TrainingStep(model, loss, opt, make_scaler(prec, dev), prec, dev), aug


def _child_model(spec: dict[str, Any]) -> dict[str, Any]:
    step, aug = _model_step(spec)
    s, b = spec["size"], spec["batch"]
    views = torch.randint(0, 256, (b, s, s, 3), dtype=torch.uint8, device=spec["device"])
    v1, v2 = aug(views)
    step(v1, v2)
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step(v1, v2)
    if spec["device"] == "cuda":
        torch.cuda.synchronize()
    return {
        "images_per_s": spec["steps"] * b / (time.perf_counter() - t0),
        "peak_rss_mb": _peak_mb(),
    }


def _child_e2e(spec: dict[str, Any]) -> dict[str, Any]:
    """Interleaved rounds: model-only steps, then steps fed by the streaming loader."""
    from fastclr.train.views import augment_views

    step, aug = _model_step(spec)
    loader = _loader({**spec, "loader": "stream"})
    b, per_round = spec["batch"], spec["steps"]
    batches = (bt for e in range(1_000) for bt in loader.epoch(e))
    first = next(batches)
    v1, v2 = augment_views(aug, first)
    step(v1, v2)
    step(*augment_views(aug, next(batches)))
    rates: dict[str, list[float]] = {"model": [], "files": []}
    for _ in range(spec["rounds"]):
        t0 = time.perf_counter()
        for _ in range(per_round):
            step(v1, v2)
        rates["model"].append(per_round * b / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(per_round):
            step(*augment_views(aug, next(batches)))
        rates["files"].append(per_round * b / (time.perf_counter() - t0))
    model, files = (statistics.median(rates[k]) for k in ("model", "files"))
    return {
        "model_images_per_s": model,
        "files_images_per_s": files,
        "ratio": files / model,
        "round_rates": rates,
        "peak_rss_mb": _peak_mb(),
    }


def _in_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
        return {"status": f"error: {tail[0]}"}
    return {"status": "ok", **json.loads(out.stdout.strip().splitlines()[-1])}


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median images/s and largest peak RSS of several runs (the first error, if any)."""
    bad = [r for r in results if r.get("status") != "ok"]
    if bad:
        return bad[0]
    return {
        "status": "ok",
        "images_per_s": statistics.median(r["images_per_s"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "all_images_per_s": [r["images_per_s"] for r in results],
    }


def check_batch(folder: Path) -> str:
    """One streamed batch against the definition: resize_box of the boxes drawn on the headers."""
    from PIL import Image

    from fastclr.augment import AugmentConfig
    from fastclr.data import list_image_folder
    from fastclr.data.decode import open_rgb, resize_box
    from fastclr.data.stream import StreamingLoader, draw_boxes

    listing = list_image_folder(folder)
    crop = AugmentConfig.imagenet(64)
    loader = StreamingLoader(listing.files, listing.labels, crop, 4, num_workers=0, draft=False)
    batch = next(loader.epoch(0))
    idx = loader.order(0)[0]
    sizes = []
    for i in idx:
        with Image.open(listing.files[int(i)]) as im:
            sizes.append((im.size[1], im.size[0]))
    boxes = draw_boxes(np.asarray(sizes), crop, 2, 0, 0, 0, 0)
    assert batch.views is not None
    for j, i in enumerate(idx):
        rgb, _ = open_rgb(listing.files[int(i)])
        for v in range(2):
            want = resize_box(rgb, tuple(int(t) for t in boxes[j, v]), 64)  # type: ignore[arg-type]
            if not np.array_equal(batch.views[v, j].numpy(), want):
                raise AssertionError(f"streamed crop {j}/{v} differs from the definition")
    return "streamed crops = resize_box(draw on original size): exact"


def run(device: torch.device, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    from fastclr.data.select import dali_available

    out: dict[str, Any] = {"quick": quick, "device": str(device), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        n = 48 if quick else 320
        progress(f"data: writing {n} JPEGs of {SOURCE_W}×{SOURCE_H}")
        folder = write_jpegs(Path(tmp) / "jpegs", n)
        try:
            out["check"] = check_batch(folder)
        except AssertionError as exc:
            out["status"] = f"CHECK FAILED: {exc}"
            return out
        dev = device.type
        big = 224
        batch = 8 if quick else 16
        nb = 2 if quick else 8
        base = {"folder": str(folder), "size": big, "batch": batch, "batches": nb, "device": dev}
        rows = [("streaming, 2 workers", "stream", 2)]
        if dali_available():
            rows.append(("DALI graph on CPU, 2 threads", "dali", 2))
        # loaders interleaved over rounds (one subprocess each), median rate and largest peak:
        # on a shared machine a single run of each is mostly noise
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in rows}
        for r in range(1 if quick else 3):
            for name, loader, workers in rows:
                progress(f"data: {name} at {big} px (round {r + 1})")
                spec = {**base, "loader": loader, "workers": workers, "device": "cpu"}
                runs[name].append(_in_child("loader", spec))
        for name, results in runs.items():
            out["rows"].append({"name": name, "rounds": len(results), **_median(results)})
        if dev == "cuda" and dali_available():
            progress("data: DALI nvJPEG (mixed) at 224 px")
            spec = {**base, "loader": "dali", "workers": 4, "batch": 256, "batches": 20}
            out["rows"].append({"name": "DALI nvJPEG on GPU", **_in_child("loader", spec)})
        model = {**CPU_MODEL} if dev == "cpu" else {"arch": "resnet50", "width": 1.0}
        progress(f"data: model-only step at {big} px")
        mspec = {
            **model,
            "size": big,
            "batch": batch if dev == "cpu" else 256,
            "steps": 1 if quick else 2,
            "device": dev,
        }
        out["model"] = {
            "name": f"{model['arch']} width {model['width']}",
            **mspec,
            **_in_child("model", mspec),
        }
        progress("data: end to end from files at 64 px vs model-only (2 workers)")
        espec = {
            **CPU_MODEL,
            "folder": str(folder),
            "size": 64,
            "workers": 2,
            "batch": 16 if quick else 32,
            "steps": 1 if quick else 2,
            "rounds": 1 if quick else 3,
            "device": dev,
        }
        out["e2e"] = {**espec, **_in_child("e2e", espec)}
    failed = [r for r in [*out["rows"], out["model"], out["e2e"]] if r.get("status") != "ok"]
    out["status"] = "ok" if not failed else f"error: {failed[0].get('status')}"
    return out


def table(res: dict[str, Any]) -> list[str]:
    if "rows" not in res or "model" not in res:
        return [f"data: {res.get('status')}"]
    m = res["model"]
    lines = [
        f"Loader alone at 224 px from {SOURCE_W}×{SOURCE_H} JPEGs (two views per image; median "
        "of interleaved runs, one subprocess each; peak RSS = main process + largest worker)",
        "",
        "| loader | images/s | × model step | peak RSS MB |",
        "|---|---|---|---|",
    ]
    model_rate = m.get("images_per_s")
    for r in res["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | {r.get('status')} | | |")
            continue
        ratio = f"{r['images_per_s'] / model_rate:.2f}" if model_rate else "n/a"
        lines.append(
            f"| {r['name']} | {r['images_per_s']:,.1f} | {ratio} | {r['peak_rss_mb']:,.0f} |"
        )
    if m.get("status") == "ok":
        lines.append(
            f"| model-only step ({m['name']}, batch {m['batch']}) | {m['images_per_s']:,.1f} "
            f"| 1.00 | {m['peak_rss_mb']:,.0f} |"
        )
    e = res.get("e2e", {})
    lines += [""]
    if e.get("status") == "ok":
        verdict = "meets" if e["ratio"] >= 0.85 else "MISSES"
        lines += [
            f"End to end from files at 64 px, {e['arch']} width {e['width']}, batch {e['batch']}, "
            f"{e['workers']} workers, median of {e['rounds']} interleaved rounds of "
            f"{e['steps']} steps:",
            "",
            "| step | images/s |",
            "|---|---|",
            f"| model only (pre-augmented views) | {e['model_images_per_s']:,.1f} |",
            f"| from files (stream loader + augmentation + model) | "
            f"{e['files_images_per_s']:,.1f} |",
            "",
            f"from files / model-only = **{e['ratio']:.2f}** ({verdict} the 0.85 target; "
            f"peak RSS {e['peak_rss_mb']:,.0f} MB)",
        ]
    else:
        lines.append(f"end to end from files: {e.get('status')}")
    if "check" in res:
        lines += ["", res["check"]]
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        torch.set_num_threads(max(1, torch.get_num_threads()))
        kind, spec = sys.argv[2], json.loads(sys.argv[3])
        fn = {"loader": _child_loader, "model": _child_model, "e2e": _child_e2e}[kind]
        print(json.dumps(fn(spec)))
    else:
        res = run(torch.device("cpu"), "--quick" in sys.argv, lambda m: print(m, file=sys.stderr))
        print("\n".join(table(res)))
