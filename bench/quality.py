"""Representation quality on the embedded digits: fastclr's SimCLR against its baselines.

    python bench/quality.py            # 3 seeds × 40 epochs, ~5-8 minutes on 2 CPU cores
    python bench/quality.py --seeds 0  # one seed, a quick look

For each seed: pretrain a quarter-width ResNet-18 with the digits recipe of ``fastclr pretrain``
(``cli_defaults("digits")``, 40 epochs instead of 15), then evaluate on the held-out split with a
linear probe (L-BFGS logistic regression on frozen, standardised features) and kNN (cosine,
temperature-weighted votes). Baselines, evaluated identically on the same split:

- the same encoder with its random initial weights (same seed), and
- logistic regression / kNN on the raw pixels.

Writes bench/results/quality.{md,json}, quality-curves.png (loss per step, kNN per epoch) and
digits-pairs.png (augmented pairs), and exits non-zero unless the pretrained encoder beats the
random one by more than three seed-to-seed standard deviations on both linear and kNN accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastclr.data import ImageData, load_digits
from fastclr.evaluate import extract_features, knn_accuracy, linear_probe_accuracy
from fastclr.train import TrainConfig, build_augmentation, build_model, load_checkpoint, pretrain
from fastclr.train.config import cli_defaults

RESULTS = Path(__file__).resolve().parent / "results"
# The CLI's digits recipe, trained longer than its 15-epoch demo: at 15 epochs kNN on the features
# is still below kNN on raw pixels; at 40 it is above (measured on seed 0: 89.7% → 93.0%).
EPOCHS = 40
DEMO = cli_defaults("digits")


def digits_config(seed: int, out: Path, epochs: int | None = None) -> TrainConfig:
    return TrainConfig(
        **{
            **DEMO,
            "epochs": epochs or DEMO["epochs"],
            "out": str(out),
            "overwrite": True,  # each `make quality` replaces the previous runs of its seeds
            "seed": seed,
            "progress": False,
            "device": "cpu" if not torch.cuda.is_available() else None,
        }
    )


def _probe(f_tr: torch.Tensor, f_te: torch.Tensor, data: ImageData) -> dict[str, float]:
    assert data.train.labels is not None and data.heldout is not None
    assert data.heldout.labels is not None
    y_tr, y_te = data.train.labels.to(f_tr.device), data.heldout.labels.to(f_tr.device)
    return {
        "linear": linear_probe_accuracy(f_tr, y_tr, f_te, y_te),
        "knn": knn_accuracy(f_tr, y_tr, f_te, y_te),
    }


def encoder_scores(
    model: torch.nn.Module, cfg: TrainConfig, ckpt: dict[str, Any], data: ImageData
) -> dict[str, float]:
    dev = next(model.parameters()).device
    mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    assert data.heldout is not None
    encoder = model.encoder  # type: ignore[union-attr]
    f_tr = extract_features(encoder, data.train, mean, std, cfg.image_size, dev)
    f_te = extract_features(encoder, data.heldout, mean, std, cfg.image_size, dev)
    return _probe(f_tr, f_te, data)


def pixel_scores(data: ImageData) -> dict[str, float]:
    assert data.heldout is not None

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x[..., 0].reshape(x.shape[0], -1).double() / 255.0

    return _probe(flat(data.train.images), flat(data.heldout.images), data)


def read_csv(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(f)
        ]


def plot_curves(runs: list[Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_k) = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(runs):
        steps = read_csv(run / "steps.csv")
        epochs = read_csv(run / "epochs.csv")
        ax_l.plot([r["global_step"] for r in steps], [r["loss"] for r in steps], label=f"seed {i}")
        ax_k.plot(
            [r["epoch"] for r in epochs],
            [100 * r["knn_top1"] for r in epochs],
            marker="o",
            label=f"seed {i}",
        )
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("NT-Xent loss")
    ax_l.set_title("pretraining loss (log(2N − 1) = chance)")
    ax_k.set_xlabel("epoch")
    ax_k.set_ylabel("held-out kNN top-1 (%)")
    ax_k.set_title("kNN monitor")
    for ax in (ax_l, ax_k):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("fastclr SimCLR on digits (quarter-width ResNet-18, 16-px views)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_pairs(cfg: TrainConfig, data: ImageData, png: Path, n: int = 10) -> None:
    """Two augmented views of the same digits, one pair per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aug = build_augmentation(
        "digits", cfg.image_size, "fp32", "auto", seed=0, device=torch.device("cpu")
    )
    idx = torch.arange(n) * (len(data.train) // n)
    v1, v2 = aug(data.train.images[idx])
    config = aug.config  # type: ignore[attr-defined]
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2))
    src = F.interpolate(
        data.train.images[idx].permute(0, 3, 1, 2).float() / 255, size=cfg.image_size
    )
    for row, (title, imgs) in enumerate(
        (("source", src), ("view 1", v1 * std + mean), ("view 2", v2 * std + mean))
    ):
        for j in range(n):
            ax = axes[row, j]
            ax.imshow(imgs[j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title)
    fig.suptitle("SimCLR views of digits (fastclr 'digits' preset): different, same digit")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=EPOCHS, help="pretraining epochs per seed")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--runs", type=Path, default=Path("runs/quality"))
    args = p.parse_args(argv)
    torch.set_num_threads(int(DEMO["threads"] or torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    t0 = time.perf_counter()
    per_seed: list[dict[str, Any]] = []
    for seed in args.seeds:
        run = args.runs / f"seed{seed}"
        cfg = digits_config(seed, run, args.epochs)
        print(f"[seed {seed}] pretraining {cfg.epochs} epochs ...", flush=True)
        t = time.perf_counter()
        result = pretrain(cfg, data=data)
        train_s = time.perf_counter() - t
        ckpt = load_checkpoint(run / "checkpoint.pt")
        pre = encoder_scores(result.model.cpu().eval(), cfg, ckpt, data)
        torch.manual_seed(seed)
        rand_model = build_model(cfg.arch, cfg.stem, cfg.width).eval()
        rand = encoder_scores(rand_model, cfg, ckpt, data)
        steps = read_csv(run / "steps.csv")
        epochs = read_csv(run / "epochs.csv")
        row = {
            "seed": seed,
            "pretrained": pre,
            "random": rand,
            "train_seconds": train_s,
            "first_loss": steps[0]["loss"],
            "last_loss": steps[-1]["loss"],
            "knn_by_epoch": [e["knn_top1"] for e in epochs],
        }
        per_seed.append(row)
        print(
            f"[seed {seed}] pretrained linear {pre['linear']:.2%} kNN {pre['knn']:.2%} | "
            f"random linear {rand['linear']:.2%} kNN {rand['knn']:.2%} | {train_s:.0f}s",
            flush=True,
        )
    pixels = pixel_scores(data)
    total_s = time.perf_counter() - t0

    summary: dict[str, Any] = {}
    for kind in ("pretrained", "random"):
        for metric in ("linear", "knn"):
            summary[f"{kind}_{metric}"] = mean_std([r[kind][metric] for r in per_seed])
    checks = {}
    for metric in ("linear", "knn"):
        (mp, sp), (mr, sr) = summary[f"pretrained_{metric}"], summary[f"random_{metric}"]
        spread = max(sp, sr)
        checks[metric] = {
            "margin": mp - mr,
            "spread": spread,
            "ok": len(per_seed) > 1 and mp - mr > 3 * spread,
        }
    m = 2 * int(DEMO["batch_size"])
    chance = math.log(m - 1)
    sanity = {
        "chance_loss_log_M_minus_1": chance,
        "first_loss_mean": statistics.mean(r["first_loss"] for r in per_seed),
        "last_loss_mean": statistics.mean(r["last_loss"] for r in per_seed),
        "knn_rises": all(r["knn_by_epoch"][-1] > r["knn_by_epoch"][0] for r in per_seed),
    }
    cfg0 = digits_config(args.seeds[0], args.runs / f"seed{args.seeds[0]}", args.epochs)
    plot_curves([args.runs / f"seed{s}" for s in args.seeds], args.out / "quality-curves.png")
    plot_pairs(cfg0, data, args.out / "digits-pairs.png")

    def pm(key: str) -> str:
        mu, sd = summary[key]
        return f"{100 * mu:.2f} ± {100 * sd:.2f}"

    lines = [
        f"Digits, held-out split ({len(data.heldout or [])} images), {len(per_seed)} seeds "
        f"(mean ± std), {total_s / 60:.1f} min in all on this machine.",
        "",
        "| features | linear top-1 (%) | kNN top-1 (%) |",
        "|---|---|---|",
        f"| fastclr SimCLR, {cfg0.epochs} epochs | {pm('pretrained_linear')} "
        f"| {pm('pretrained_knn')} |",
        f"| same encoder, random weights | {pm('random_linear')} | {pm('random_knn')} |",
        f"| raw pixels (32×32) | {100 * pixels['linear']:.2f} | {100 * pixels['knn']:.2f} |",
        "",
        f"pretrained − random: linear {100 * checks['linear']['margin']:+.2f} points "
        f"(3σ = {300 * checks['linear']['spread']:.2f}), kNN {100 * checks['knn']['margin']:+.2f} "
        f"points (3σ = {300 * checks['knn']['spread']:.2f}).",
        f"Loss: starts at {sanity['first_loss_mean']:.3f} (chance log(2N − 1) = {chance:.3f}), "
        f"ends at {sanity['last_loss_mean']:.3f}; kNN rises over training in every seed: "
        f"{sanity['knn_rises']}.",
        f"Pretraining time per seed: "
        f"{statistics.mean(r['train_seconds'] for r in per_seed):.0f} s.",
    ]
    print("\n" + "\n".join(lines))
    (args.out / "quality.md").write_text(
        "# Representation quality on digits\n\n" + "\n".join(lines) + "\n"
    )
    (args.out / "quality.json").write_text(
        json.dumps(
            {
                "per_seed": per_seed,
                "pixels": pixels,
                "summary": summary,
                "checks": checks,
                "sanity": sanity,
                "total_seconds": total_s,
                "command": "python bench/quality.py",
            },
            indent=1,
        )
    )
    ok = all(c["ok"] for c in checks.values())
    if not ok:
        print(
            "QUALITY CHECK FAILED: pretrained does not beat random weights by > 3σ", file=sys.stderr
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
