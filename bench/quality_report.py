"""quality.md's tables and quality's plots: what ``bench/quality.py`` writes from its suites.

Split from ``bench/quality.py`` (the suites and the command line) so that each file has one job:
this one turns recorded scores into the Markdown and PNG files under bench/results/.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastclr.data import load_digits

#: A verdict's bar: the pretrained score must beat its baseline by this many standard deviations.
SIGMAS = 3.0


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def plot_curves(suites: dict[str, dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(suites), 2, figsize=(11, 3.6 * len(suites)), squeeze=False)
    for (name, suite), (ax_l, ax_k) in zip(suites.items(), axes, strict=True):
        pix = 100 * suite["pixels"]["knn"]
        for r in suite["per_seed"]:
            ep = range(1, len(r["loss_by_epoch"]) + 1)
            ax_l.plot(ep, r["loss_by_epoch"], marker=".", label=f"seed {r['seed']}")
            ax_k.plot(
                ep, [100 * k for k in r["knn_by_epoch"]], marker=".", label=f"seed {r['seed']}"
            )
        ax_k.axhline(pix, color="k", ls="--", lw=1, label="raw pixels")
        rand = 100 * statistics.mean(r["random"]["knn"] for r in suite["per_seed"])
        ax_k.axhline(rand, color="grey", ls=":", lw=1, label="random weights")
        ax_l.set_title(f"{name}: pretraining loss per epoch")
        ax_k.set_title(f"{name}: held-out kNN top-1 (monitor)")
        ax_l.set_xlabel("epoch")
        ax_k.set_xlabel("epoch")
        ax_l.set_ylabel("NT-Xent loss")
        ax_k.set_ylabel("%")
        for ax in (ax_l, ax_k):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def plot_pairs(png: Path, size: int, n: int = 10) -> None:
    """Two augmented views of the same digits under the demo's preset, one pair per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastclr.train import build_augmentation

    data = load_digits()
    aug = build_augmentation("digits", size, "fp32", "auto", seed=0, device=torch.device("cpu"))
    idx = torch.arange(n) * (len(data.train) // n)
    v1, v2 = aug(data.train.images[idx])
    config = aug.config  # type: ignore[attr-defined]
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    src = F.interpolate(data.train.images[idx].permute(0, 3, 1, 2).float() / 255, size=size)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2))
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


def _pm(pair: tuple[float, float]) -> str:
    return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"


def suite_table(title: str, suite: dict[str, Any], v: dict[str, Any], label: str) -> list[str]:
    s, pix = v["summary"], suite["pixels"]
    rows = suite["per_seed"]
    lines = [
        f"### {title}",
        "",
        "| features | linear top-1 (%) | kNN top-1 (%) |",
        "|---|---|---|",
        f"| {label} | {_pm(s['pretrained_linear'])} | {_pm(s['pretrained_knn'])} |",
        f"| same encoder, random weights | {_pm(s['random_linear'])} | {_pm(s['random_knn'])} |",
        f"| raw pixels | {100 * pix['linear']:.2f} | {100 * pix['knn']:.2f} |",
        "",
    ]
    for name, c in v["checks"].items():
        mark = "pass" if c["ok"] else "FAIL"
        spread, also = c.get("baseline_std"), ""
        if spread is not None:
            wide = SIGMAS * max(spread, c["bar"] / SIGMAS)
            verdict_wide = "pass" if c["margin"] > wide else "fail"
            also = (
                f" (the random encoder's own spread ±{100 * spread:.2f}; a bar of 3× the "
                f"larger spread, {100 * wide:.2f}, would {verdict_wide})"
            )
        lines.append(
            f"- {name}: margin {100 * c['margin']:+.2f} points, bar {100 * c['bar']:.2f}{also}: "
            f"{mark}"
        )
    first = statistics.mean(r["loss_by_epoch"][0] for r in rows)
    last = statistics.mean(r["loss_by_epoch"][-1] for r in rows)
    secs = statistics.mean(r["train_seconds"] for r in rows)
    lines += [
        f"- loss per epoch: {first:.3f} (first epoch) → {last:.3f} (last); "
        f"{secs:.0f} s of pretraining per seed.",
        "",
    ]
    keys = ("batch:", "lr:", "warm-up:", "augment:", "kNN k:")
    recipe = [ln.strip() for ln in rows[0]["log"] if ln.strip().startswith(keys)]
    seen = {ln for r in rows for ln in r["log"] if ln.startswith("watch")}
    watcher = sorted(seen, key=lambda ln: (int(ln.split()[2].rstrip(":")), ln))
    if recipe:
        lines += ["What the run printed about its recipe (seed 0):", "", "```", *recipe, "```", ""]
    if watcher:
        lines += ["The run's own plateau warnings (all seeds):", "", "```", *watcher, "```", ""]
    return lines


VARIANTS = "quality-variants.jsonl"


def record_variant(
    path: Path,
    name: str,
    flags: list[str],
    suite: dict[str, Any],
    command: str,
    kind: str = "folder",
) -> None:
    """Append the per-seed scores of suite ``kind`` (folder or demo), trained with ``flags`` by
    ``command``, as variant ``name``."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in suite["per_seed"]:
            row = {
                "variant": name,
                "suite": kind,
                "flags": flags,
                "seed": r["seed"],
                "pretrained": r["pretrained"],
                "random": r["random"],
                "measured": f"{command}, {when}",
            }
            f.write(json.dumps(row) + "\n")


def variant_lines(path: Path) -> list[str]:
    """quality.md's table of the recorded variants of the suites' recipes (folder and demo)."""
    if not path.exists():
        return []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            groups.setdefault((row.get("suite", "folder"), row["variant"]), []).append(row)
    lines = [
        "## Variants of the suites' recipes (3 seeds each unless said)",
        "",
        f"From `{VARIANTS}`; each run's scores and the command that made it are recorded there "
        "(`measured`). Same data, epochs, size, width and evaluation as the suite named.",
        "",
        "| suite | variant | the same with today's flags | seeds | linear top-1 (%) "
        "| kNN top-1 (%) |",
        "|---|---|---|---|---|---|",
    ]
    for (kind, name), rows in groups.items():
        lin = mean_std([r["pretrained"]["linear"] for r in rows])
        knn = mean_std([r["pretrained"]["knn"] for r in rows])
        flags = " ".join(rows[0]["flags"]) or "(none)"
        cell = _pm if len(rows) > 1 else lambda pair: f"{100 * pair[0]:.2f}"
        lines.append(f"| {kind} | {name} | `{flags}` | {len(rows)} | {cell(lin)} | {cell(knn)} |")
    return [*lines, ""]


def ablation_lines(path: Path) -> list[str]:
    """The table of ``bench/quality_ablations.py``'s recorded runs, if any."""
    if not path.exists():
        return []
    from quality_ablations import ablation_table  # type: ignore[import-not-found]

    return ablation_table(path)
