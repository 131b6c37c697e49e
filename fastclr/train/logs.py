"""Run logs: ``steps.csv`` and ``epochs.csv``, TensorBoard when installed, and the loss plot.

A resumed run first cuts its logs back to the checkpoint it resumes from (:func:`cut_back_logs`):
rows written after that checkpoint by the interrupted process (a kill between checkpoints, or
inside a checkpoint write) are dropped, and so is a torn last row, so that every step and every
epoch appears once, in order, and the loss plot is monotone in step. TensorBoard events past the
checkpoint are purged the same way (``purge_step``).

(Named ``logs`` rather than ``logging`` so that it never shadows the standard library module.)
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["EPOCH_FIELDS", "STEP_FIELDS", "RunLogger", "cut_back_logs", "plot_loss"]

STEP_FIELDS = ("epoch", "step", "global_step", "loss", "lr", "images_per_s")
EPOCH_FIELDS = ("epoch", "loss", "lr", "knn_top1", "images_per_s", "seconds")


def _cut_back(path: Path, fields: tuple[str, ...], key: str, keep_below: int) -> None:
    """Rewrite ``path`` (atomically) with its well-formed rows whose ``key`` < ``keep_below``.

    Rows are keyed by ``key``: a key seen twice (logs of a run resumed by an older fastclr) keeps
    its last row; the output is sorted by key. A missing file or a foreign header is left alone.
    """
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != fields:
                return
            rows = list(reader)
    except (OSError, csv.Error, UnicodeDecodeError):
        return
    idx = fields.index(key)
    kept: dict[int, list[str]] = {}
    for row in rows:
        if len(row) != len(fields):
            continue  # a row torn by a kill mid-write
        try:
            k = int(row[idx])
            [float(v) for v in row]
        except ValueError:
            continue
        if k < keep_below:
            kept[k] = row
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        w.writerows(kept[k] for k in sorted(kept))
    os.replace(tmp, path)


def cut_back_logs(
    out: Path, global_step: int, epochs_done: int, epoch_fields: tuple[str, ...] = EPOCH_FIELDS
) -> None:
    """Keep the rows of ``steps.csv`` up to ``global_step`` and of ``epochs.csv`` below
    ``epochs_done``: the logs as they were when the resumed checkpoint was written.
    ``epoch_fields``: the columns of ``epochs.csv`` (another command's logger may log others)."""
    _cut_back(out / "steps.csv", STEP_FIELDS, "global_step", global_step + 1)
    _cut_back(out / "epochs.csv", epoch_fields, "epoch", epochs_done)


class RunLogger:
    """CSV per step and per epoch, TensorBoard when installed; silent off rank 0.

    ``append=True`` (a resumed run) keeps existing CSV files and adds rows to them; with
    ``resume_at=(global_step, epochs_done)`` they are first cut back to that point
    (:func:`cut_back_logs`). ``manifest`` (the run folder's
    :class:`~fastclr.train.rundir.Manifest`) records every file written.
    """

    STEP_FIELDS = STEP_FIELDS
    EPOCH_FIELDS: tuple[str, ...] = EPOCH_FIELDS

    def __init__(
        self,
        out: Path,
        enabled: bool,
        append: bool,
        resume_at: tuple[int, int] | None = None,
        manifest: Any = None,
    ) -> None:
        self.enabled = enabled
        self.tb: Any = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self._record = manifest.record if manifest is not None else (lambda *paths: None)
        self._record("steps.csv", "epochs.csv")
        self.step_path, self.epoch_path = out / "steps.csv", out / "epochs.csv"
        if append and resume_at is not None:
            cut_back_logs(out, *resume_at, epoch_fields=self.EPOCH_FIELDS)
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
            purge = resume_at[0] + 1 if append and resume_at is not None else None
            self._tb_dir, self._tb_before = out / "tb", _files(out / "tb")
            self.tb = SummaryWriter(str(self._tb_dir), purge_step=purge)
            self._record_tb()

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
            self._tb_epoch(row)

    def _tb_epoch(self, row: dict[str, float]) -> None:
        """The epoch's TensorBoard scalars (a NaN, e.g. no kNN monitor, is left out)."""
        for k in ("loss", "knn_top1", "images_per_s"):
            if not math.isnan(row[k]):
                self.tb.add_scalar(f"epoch/{k}", row[k], int(row["epoch"]))

    def _record_tb(self) -> None:
        """Add the event files this run's writer created in ``tb/`` to the manifest."""
        new = _files(self._tb_dir) - self._tb_before
        self._record(*(self._tb_dir / name for name in sorted(new)))

    def close(self) -> None:
        """Flush and close TensorBoard (the CSV files are closed after every write)."""
        if self.tb is not None:
            self.tb.close()
            self._record_tb()


def _files(folder: Path) -> set[str]:
    """Names of the files in ``folder`` (none when it does not exist)."""
    try:
        return {p.name for p in folder.iterdir() if p.is_file()}
    except OSError:
        return set()


def plot_loss(steps_csv: Path, png: Path) -> None:
    """Loss against step from ``steps.csv`` into ``png`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
