"""Fine-tuning's logs: ``steps.csv`` (as pretraining's), ``epochs.csv`` with validation top-1
and top-5, TensorBoard when installed, and ``curves.png`` (loss per step, accuracy per epoch).

The CSV files are pretraining's :class:`~fastclr.train.logs.RunLogger` with other epoch columns,
so a resumed run cuts them back to its checkpoint the same way.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fastclr.train.logs import RunLogger

__all__ = ["CURVES_NAME", "EPOCH_FIELDS", "FinetuneLogger", "plot_curves"]

EPOCH_FIELDS = ("epoch", "loss", "lr", "top1", "top5", "images_per_s", "seconds")
CURVES_NAME = "curves.png"


class FinetuneLogger(RunLogger):
    """``steps.csv`` and ``epochs.csv`` (:data:`EPOCH_FIELDS`) of a fine-tuning run."""

    EPOCH_FIELDS = EPOCH_FIELDS

    def _tb_epoch(self, row: dict[str, float]) -> None:
        """The epoch's TensorBoard scalars: loss, validation top-1 and top-5, speed."""
        for k in ("loss", "top1", "top5", "images_per_s"):
            self.tb.add_scalar(f"epoch/{k}", row[k], int(row["epoch"]))


def _read(path: Path, x: str, ys: tuple[str, ...]) -> tuple[list[float], list[list[float]]]:
    xs: list[float] = []
    cols: list[list[float]] = [[] for _ in ys]
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            xs.append(float(row[x]))
            for col, y in zip(cols, ys, strict=True):
                col.append(float(row[y]))
    return xs, cols


def plot_curves(out: Path, png: Path | None = None) -> Path:
    """Training loss against step (``steps.csv``) beside validation top-1 and top-5 against
    epoch (``epochs.csv``), into ``png`` (default ``out/curves.png``); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = png if png is not None else out / CURVES_NAME
    steps, (loss,) = _read(out / "steps.csv", "global_step", ("loss",))
    epochs, (top1, top5) = _read(out / "epochs.csv", "epoch", ("top1", "top5"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    a.plot(steps, loss, lw=1)
    a.set(xlabel="step", ylabel="cross-entropy", title="fine-tuning loss")
    b.plot([e + 1 for e in epochs], [100 * v for v in top1], label="top-1")
    b.plot([e + 1 for e in epochs], [100 * v for v in top5], label="top-5")
    b.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
