"""Small ablations behind the default recipe: why kNN lagged the linear probe on a small folder.

    python bench/quality_ablations.py --name sqrt --lr 1.2            # one variant, ~3 min
    python bench/quality_ablations.py --name crop30 --lr 1.2 --crop-min 0.3 --flip 0

Each call trains one variant on a labelled image folder (default: digits exported as 28-px PNGs by
``bench/quality.py``'s :func:`export_digits_folder`) for 20 epochs at batch 256, quarter width,
one seed, then evaluates the frozen features several ways: the backbone ``h`` and the projection
``z``; raw, centred and standardised features (train statistics) before the cosine; kNN with
k = 20 and 200 and τ = 0.07, 0.1 and 0.5; and the linear probe. One JSON line per variant is
appended to ``bench/results/quality-ablations.jsonl``; ``bench/quality.py`` tabulates them in
``quality.md`` (:func:`ablation_table`). Single seeds: differences of a point or two are noise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
JSONL = RESULTS / "quality-ablations.jsonl"
KS = (20, 200)
TAUS = (0.07, 0.1, 0.5)


def evaluate_ways(model: Any, data: Any, mean: Any, std: Any, size: int) -> dict[str, float]:
    """Linear and kNN top-1 of ``h`` and ``z`` under every normalisation, k and τ."""
    from fastclr.evaluate import extract_features, knn_accuracy, linear_probe_accuracy

    y_tr, y_te = data.train.labels, data.heldout.labels
    layers = {"h": model.encoder, "z": torch.nn.Sequential(model.encoder, model.head)}
    out: dict[str, float] = {}
    for layer, net in layers.items():
        f_tr = extract_features(net, data.train, mean, std, size, "cpu")
        f_te = extract_features(net, data.heldout, mean, std, size, "cpu")
        out[f"{layer}_linear"] = linear_probe_accuracy(f_tr, y_tr, f_te, y_te)
        mu, sd = f_tr.mean(0), f_tr.std(0).clamp(min=1e-6)
        ways = {
            "raw": (f_tr, f_te),
            "center": (f_tr - mu, f_te - mu),
            "std": ((f_tr - mu) / sd, (f_te - mu) / sd),
        }
        for norm, (a, b) in ways.items():
            for k in KS:
                for tau in TAUS:
                    key = f"{layer}_knn_{norm}_k{k}_t{tau}"
                    out[key] = knn_accuracy(a, y_tr, b, y_te, k=k, temperature=tau)
    return out


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Train the variant ``args`` describes through :func:`fastclr.train.pretrain`; score it."""
    from fastclr.augment import AugmentConfig, SimCLRAugmentation
    from fastclr.checkpoint import load_checkpoint
    from fastclr.data import load_data
    from fastclr.train import TrainConfig, pretrain

    torch.set_num_threads(1)
    data = load_data(args.data, args.size)
    out = args.runs / args.name
    cfg = TrainConfig(
        width=args.width,
        data=args.data,
        image_size=args.size,
        batch_size=args.batch,
        epochs=args.epochs,
        lr=args.lr,
        head_bn=args.head_bn,
        warmup_epochs=args.warmup,
        out=str(out),
        seed=args.seed,
        progress=False,
        device="cpu",
    )
    augment = None
    if args.crop_min is not None or args.flip is not None:
        over: dict[str, Any] = {}
        if args.crop_min is not None:
            over["scale"] = (args.crop_min, 1.0)
        if args.flip is not None:
            over["flip_p"] = args.flip
        config = AugmentConfig.cifar(size=args.size, dtype=torch.float32, **over)
        augment = SimCLRAugmentation(config, seed=args.seed, device=torch.device("cpu"))
    t = time.perf_counter()
    res = pretrain(cfg, data=data, augment=augment)
    ckpt = load_checkpoint(out)
    model = res.model.cpu().eval()
    row: dict[str, Any] = {
        "name": args.name,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": time.perf_counter() - t,
        "knn_by_epoch": [h["knn_top1"] for h in res.history],
        "loss_by_epoch": [h["loss"] for h in res.history],
    }
    row.update(evaluate_ways(model, data, tuple(ckpt["mean"]), tuple(ckpt["std"]), args.size))
    return row


def _describe(a: dict[str, Any]) -> str:
    parts = [f"lr {a['lr']}" if a.get("lr") else "lr 0.3 (linear rule)"]
    if a.get("batch", 256) != 256:
        parts.append(f"batch {a['batch']}")
    if a.get("crop_min") is not None:
        parts.append(f"crops ≥ {a['crop_min']:.0%}")
    if a.get("flip") == 0:
        parts.append("no flips")
    if a.get("head_bn"):
        parts.append("BN in head")
    if a.get("epochs", 20) != 20:
        parts.append(f"{a['epochs']} epochs")
    return ", ".join(parts)


def ablation_table(path: Path = JSONL) -> list[str]:
    """Markdown lines tabulating the recorded variants (see the module docstring)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return []

    def pc(r: dict[str, Any], key: str) -> str:
        return f"{100 * r[key]:.1f}" if key in r else "—"

    lines = [
        "## Ablations: why kNN lagged the linear probe (one seed each)",
        "",
        "`python bench/quality_ablations.py` (module docstring): 28-px digits PNG folder, 20 "
        "epochs, batch 256, width 0.25, 5 steps an epoch (100 steps). kNN columns are τ = 0.1 "
        "unless named; *std* = features standardised with the training statistics before the "
        "cosine.",
        "",
        "| variant | linear h | linear z | kNN h k=200 | kNN h k=20 | kNN h k=200 std "
        "| kNN h k=20 std | kNN z k=20 | kNN h k=200 τ=0.07 / 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_describe(r['args'])} | {pc(r, 'h_linear')} | {pc(r, 'z_linear')} "
            f"| {pc(r, 'h_knn_raw_k200_t0.1')} | {pc(r, 'h_knn_raw_k20_t0.1')} "
            f"| {pc(r, 'h_knn_std_k200_t0.1')} | {pc(r, 'h_knn_std_k20_t0.1')} "
            f"| {pc(r, 'z_knn_raw_k20_t0.1')} "
            f"| {pc(r, 'h_knn_raw_k200_t0.07')} / {pc(r, 'h_knn_raw_k200_t0.5')} |"
        )
    return [*lines, "", *FINDINGS]


# What the rows above (and the suites of quality.md) say, item by item of issue 13's list. The
# rows ran on an earlier export of the same digits (28 px, a different random 80/20 split than
# the suites'), through the same training code.
FINDINGS = [
    "**Findings.** Single seeds; a point or two is noise.",
    "",
    "- *Learning rate* (fixed): the linear rule's 0.3 at batch 256 over 100 steps barely moves "
    "LARS's weights (linear 89.4%); the square-root rule's 1.2 gives 97.5%, and 4.8 no more "
    "(96.4%). The default is now the paper's square-root rule below batch 4096 or 100 epochs.",
    "- *kNN k* (fixed): with ~140 training images a class, k = 200 fills every vote with more "
    "than a whole class; the same features score 7-18 points higher at k = 20 (77.4% → 90.3% at "
    "lr 1.2), raw pixels 5 points (91.9% → 97.2%). The default k is now 15% of the smallest "
    "class (21 here), at most 200. τ moves kNN by at most 3 points at k = 200 and not at k = 20.",
    "- *Feature layer*: the backbone h beats the projection z on both probes (97.5% vs 94.4% "
    "linear, 90.3% vs 83.8% kNN at k = 20); the monitor already used h.",
    "- *Normalisation*: standardising the features with the training statistics before the "
    "cosine (what the linear probe does) adds 3-11 points at k = 200 but also lifts raw pixels "
    "(91.9% → 95.0%); left as an ablation, the monitor keeps the usual cosine kNN.",
    "- *Crop scale and flips* (fixed): crops of at least 30% of a 28-px image, measured "
    "together with no flips, raise kNN from 77.4% to 86.1% (k = 200) and 90.3% to 92.8% (k = 20), "
    "linear unchanged within noise. The `small` preset (views under 32 px) takes the crops. "
    "Flips are a property of the data, not of its size: the recipe now drops them for grayscale "
    "data (the `-grey` presets). On the suites' folder, 3 seeds of 40 epochs (the variants "
    "table): with flips linear 97.49 ± 0.74% / kNN 93.96 ± 1.53%, without 98.61 ± 0.48% / "
    "96.66 ± 0.00%. The crop-only run was not finished, so the crops' own share is not measured.",
    "- *BatchNorm in the head* (fixed): at 100 steps with flips (one seed) +5 kNN points at "
    "k = 200 and -2.5 linear; at 440 steps without flips (3 seeds) +0.83 kNN (97.49 ± 0.28% vs "
    "96.66%) and +0.09 linear (98.70 ± 0.16% vs 98.61 ± 0.48%), with a third of the linear "
    "probe's spread. Now the default for `--data FOLDER` (SimCLR's own code and solo-learn's "
    "projector have it too); the hand-tuned demo keeps its head without it.",
    "- *Number of steps* (fixed): batch 128 (11 steps an epoch, 220 in all) instead of 256 (100 "
    "steps) adds 2-3 kNN points; with the milder crops it is the best variant (95.0% at k = 20). "
    "The recipe now halves the batch while an epoch has fewer than 8 steps. Through the CLI on "
    "the suites' folder (seed 0, the recipe of the time otherwise; linear / kNN): 20 epochs (100 "
    "steps) 95.8% / 89.1%; `--batch-size 128` (220 steps) 97.8% / 89.7%; `--epochs 40` (200 "
    "steps) 98.1% / 92.8%.",
    "- *Width*: one seed at width 0.5 through the default recipe (the variants table): linear "
    "98.89% / kNN 97.77% against 98.61% / 97.21% at 0.25 (same seed), within a point, while its "
    "random encoder rose too (98.05% linear) and the run took 4.9× as long here (850 s vs 175 s, "
    "on a machine shared with other jobs). The suites keep quarter width for the CPU budget.",
    "- *What remains*: on digits a random-weight ResNet is a strong kNN baseline (92.1% at "
    "k = 21) and raw pixels a stronger one (96.7%); the default recipe now passes both with 440 "
    "steps (kNN 97.5%), but its kNN monitor saturates near 97-98% by epoch ~12 while the loss "
    "keeps falling, so the run's watcher reports a kNN plateau for the rest of the run. The "
    "feature normalisation of the monitor and the crop-only share were not measured further.",
    "",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--data", default="runs/quality/digits28-png")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="default: the paper's linear rule, 0.3")
    p.add_argument("--head-bn", action="store_true")
    p.add_argument("--warmup", type=float, default=10.0, help="epochs, capped at 10%% of the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-min", type=float, default=None)
    p.add_argument("--flip", type=float, default=None)
    p.add_argument("--runs", type=Path, default=Path("runs/ablations"))
    p.add_argument("--out", type=Path, default=JSONL)
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        from quality import export_digits_folder  # type: ignore[import-not-found]

        export_digits_folder(args.data, args.size)
    if args.lr is None:
        from fastclr.train.recipe import linear_lr

        args.lr = linear_lr(args.batch)  # the old default, explicitly (the recipe would pick √)
    row = run_variant(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print("\n".join(ablation_table(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
