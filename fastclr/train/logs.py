"""Run logs: ``steps.csv`` and ``epochs.csv``, TensorBoard when installed, and the loss plot.

(Named ``logs`` rather than ``logging`` so that it never shadows the standard library module.)
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EPOCH_FIELDS", "STEP_FIELDS", "RunLogger", "plot_loss"]

STEP_FIELDS = ("epoch", "step", "global_step", "loss", "lr", "images_per_s")
EPOCH_FIELDS = ("epoch", "loss", "lr", "knn_top1", "images_per_s", "seconds")


class RunLogger:
    """CSV per step and per epoch, TensorBoard when installed; silent off rank 0.

    ``append=True`` (a resumed run) keeps existing CSV files and adds rows to them.
    """

    STEP_FIELDS = STEP_FIELDS
    EPOCH_FIELDS = EPOCH_FIELDS

    def __init__(self, out: Path, enabled: bool, append: bool) -> None:
        self.enabled = enabled
        self.tb: Any = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.step_path, self.epoch_path = out / "steps.csv", out / "epochs.csv"
        for path, fields in (
            (self.step_path, self.STEP_FIELDS),
            (self.epoch_path, self.EPOCH_FIELDS),
        ):
            if not (append and path.exists()):
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(fields)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.tb = None
        else:
            self.tb = SummaryWriter(str(out / "tb"))

    def steps(self, rows: list[dict[str, float]]) -> None:
        """Append per-step rows (keys :data:`STEP_FIELDS`)."""
        if not self.enabled or not rows:
            return
        with open(self.step_path, "a", newline="") as f:
            w = csv.DictWriter(f, self.STEP_FIELDS)
            w.writerows(rows)
        if self.tb is not None:
            for r in rows:
                self.tb.add_scalar("train/loss", r["loss"], int(r["global_step"]))
                self.tb.add_scalar("train/lr", r["lr"], int(r["global_step"]))

    def epoch(self, row: dict[str, float]) -> None:
        """Append one per-epoch row (keys :data:`EPOCH_FIELDS`)."""
        if not self.enabled:
            return
        with open(self.epoch_path, "a", newline="") as f:
            csv.DictWriter(f, self.EPOCH_FIELDS).writerow(row)
        if self.tb is not None:
            for k in ("loss", "knn_top1", "images_per_s"):
                if not math.isnan(row[k]):
                    self.tb.add_scalar(f"epoch/{k}", row[k], int(row["epoch"]))

    def close(self) -> None:
        """Flush and close TensorBoard (the CSV files are closed after every write)."""
        if self.tb is not None:
            self.tb.close()


def plot_loss(steps_csv: Path, png: Path) -> None:
    """Loss against step from ``steps.csv`` into ``png`` (matplotlib, Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no loss plot", RuntimeWarning, stacklevel=2)
        return
    xs: list[int] = []
    ys: list[float] = []
    with open(steps_csv, newline="") as f:
        for row in csv.DictReader(f):
            xs.append(int(row["global_step"]))
            ys.append(float(row["loss"]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(xs, ys, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("SimCLR pretraining loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
