"""The fine-tuning loop: :func:`finetune` → :func:`fit` → :func:`train_epoch` →
:func:`training_step`, built on the same parts as pretraining (run folder, distributed set-up,
random state, interrupts, logs).

One step: one augmented view of each labelled image of the batch (crop + flip,
:func:`~fastclr.finetune.data.one_view`), the classifier's logits under autocast, cross-entropy,
Nesterov SGD, the cosine schedule. After every epoch the classifier is scored on the validation
images (top-1, top-5), the epoch is logged and the checkpoint written. The loss is checked for
finiteness without a host sync per step (read at every log point); a non-finite loss stops the
run with the last good checkpoint kept. Ctrl-C and SIGTERM are honoured at the next step boundary: a
checkpoint is written, then :class:`~fastclr.train.interrupt.Interrupted` (a ``KeyboardInterrupt``)
is raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastclr.augment import SimCLRAugmentation
from fastclr.checkpoint import load_model_state
from fastclr.data.stream import ViewBatch
from fastclr.distributed import (
    DistInfo,
    agree,
    distributed_run,
    on_main,
    wrap_model,
)
from fastclr.downstream.load import RunInfo
from fastclr.errors import NonFiniteLossError
from fastclr.finetune.config import FinetuneConfig
from fastclr.finetune.data import FinetuneData, augment_config, build_finetune_data, one_view
from fastclr.finetune.header import finetune_header
from fastclr.finetune.logs import CURVES_NAME, FinetuneLogger, plot_curves
from fastclr.finetune.plan import FinetunePlan, plan_finetune
from fastclr.finetune.source import labelled_file, prepare_folder, read_source, write_labelled
from fastclr.finetune.state import FinetuneSaver, FinetuneState, build_state, resume_state
from fastclr.finetune.validate import Accuracy, validate
from fastclr.models import Architecture, Classifier
from fastclr.train.checkpoint import Position
from fastclr.train.epochs import StepLog, progress_bar, run_epoch, run_epochs, write_steps
from fastclr.train.header import format_header
from fastclr.train.interrupt import InterruptFlag
from fastclr.train.precision import autocast
from fastclr.train.rng import restore_rng, seed_everything
from fastclr.train.rundir import RunFolder

__all__ = ["FinetuneResult", "finetune", "fit", "train_epoch", "training_step"]


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns (on every rank; files exist only from rank 0).

    ``top1`` / ``top5``: validation accuracy after the last epoch trained (for a run that was
    already finished, the checkpoint's). ``images_per_s``: training images per second over the
    epochs of this process (validation excluded).
    """

    classifier: Classifier
    top1: float
    top5: float
    n_val: int
    epochs_done: int
    global_step: int
    out: Path
    history: list[dict[str, float]] = field(default_factory=list)
    already_finished: bool = False

    @property
    def images_per_s(self) -> float:
        seen = sum(r["images_per_s"] * r["seconds"] for r in self.history)
        seconds = sum(r["seconds"] for r in self.history)
        return seen / seconds if seconds > 0 else math.nan


@dataclass
class _Run:
    """Everything one fine-tuning run works on; the fields after ``train_model`` change."""

    cfg: FinetuneConfig
    plan: FinetunePlan
    ddp: DistInfo
    device: torch.device
    data: FinetuneData
    state: FinetuneState
    saver: FinetuneSaver
    logger: Any
    start: Position
    stop_epoch: int
    train_model: nn.Module
    global_step: int = 0
    finite: Tensor = field(default_factory=lambda: torch.ones((), dtype=torch.bool))
    accuracy: Accuracy | None = None
    last_loss: float = math.nan
    history: list[dict[str, float]] = field(default_factory=list)
    bar: Any = None


def finetune(cfg: FinetuneConfig, *, checkpoint: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune a pretrained network (or the same one from scratch) on a labelled subset.

    ``checkpoint``: the contents of ``cfg.resume`` when the caller has read them already.
    Raises :class:`~fastclr.errors.UsageError` for settings or data that cannot be used,
    :class:`~fastclr.checkpoint.CheckpointError` for a checkpoint that cannot be used, and
    :class:`~fastclr.train.NonFiniteLossError` when the loss or the weights become NaN or Inf.
    """
    cfg.validate()
    with distributed_run(cfg.device) as (ddp, device):
        return fit(cfg, ddp, device, checkpoint)


def fit(
    cfg: FinetuneConfig,
    ddp: DistInfo,
    device: torch.device,
    checkpoint: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Check and lock the run folder, plan the run, build it (and resume), train its epochs,
    plot its curves."""
    folder = prepare_folder(cfg, ddp, checkpoint)
    try:
        if folder.finished:
            return _finished(folder)
        folder.warn_notes()
        source, weights = (None, None) if cfg.resume else read_source(cfg)
        plan = _plan_on_main(cfg, ddp, device, folder, source)
        if plan.threads:
            torch.set_num_threads(plan.threads)
        run = _build_run(cfg, plan, ddp, device, weights, folder)
        _train(run)
        return _result(run)
    finally:
        folder.release()


def _plan_on_main(
    cfg: FinetuneConfig,
    ddp: DistInfo,
    device: torch.device,
    folder: RunFolder,
    source: RunInfo | None,
) -> FinetunePlan:
    """:func:`~fastclr.finetune.plan.plan_finetune` on rank 0 alone (which also writes the
    run's ``labelled.txt``); the others receive its plan. A refusal is raised on every rank."""
    saved = (folder.checkpoint or {}).get("plan") if cfg.resume else None
    listing = labelled_file(cfg) if cfg.resume else None

    def make() -> FinetunePlan:
        plan = plan_finetune(
            cfg,
            source,
            world_size=ddp.world_size,
            device=device,
            saved=saved,
            labelled_file=listing,
        )
        if not cfg.resume:
            write_labelled(cfg, plan, folder)
        return plan.without_memory() if ddp.world_size > 1 else plan

    return on_main(make, ddp)


def _build_run(
    cfg: FinetuneConfig,
    plan: FinetunePlan,
    ddp: DistInfo,
    device: torch.device,
    weights: dict[str, Tensor] | None,
    folder: RunFolder,
) -> _Run:
    """Seed, load the data, build the network and optimiser from the plan, resume if asked."""
    seed_everything(cfg.seed, ddp.rank)
    augment = SimCLRAugmentation(
        augment_config(plan), seed=cfg.seed + ddp.rank, device=device, layout="NHWC"
    )
    data = build_finetune_data(plan, cfg.seed, ddp.rank, ddp.world_size, device)
    state = build_state(plan, cfg, weights, augment, device)
    start, rng = Position(), None
    saver = FinetuneSaver(Path(cfg.out), cfg, plan, ddp, device, folder.manifest)
    if cfg.resume:
        start, rng = resume_state(cfg.resume, state, plan, ddp, folder.checkpoint)
        saver.last = (folder.checkpoint or {}).get("accuracy")
    train_model = wrap_model(state.classifier, ddp, device, False)
    if rng is not None:
        restore_rng(rng, augment, device)
    out = Path(cfg.out)
    if ddp.is_main:
        where = (str(cfg.resume), start.epoch, start.global_step) if cfg.resume else None
        lines = finetune_header(plan, state.classifier, device, cfg.out, where)
        print(format_header(lines, "fastclr finetune"), flush=True)
    stop = plan.epochs
    if cfg.stop_after_epochs is not None:
        stop = min(stop, start.epoch + cfg.stop_after_epochs)
    resume_at = (start.global_step, start.epoch) if cfg.resume else None
    run = _Run(
        cfg,
        plan,
        ddp,
        device,
        data,
        state,
        saver,
        FinetuneLogger(
            out, ddp.is_main, append=bool(cfg.resume), resume_at=resume_at, manifest=folder.manifest
        ),
        start,
        stop,
        train_model,
        global_step=start.global_step,
        finite=torch.ones((), dtype=torch.bool, device=device),
    )
    run.bar = progress_bar(run, "finetune")
    return run


def _train(run: _Run) -> None:
    """The epochs of this process; Ctrl-C or SIGTERM checkpoints and ends it."""
    run_epochs(run, train_epoch)
    out = run.saver.out
    if run.ddp.is_main and (out / "epochs.csv").exists() and (out / "steps.csv").exists():
        run.saver.manifest.record(CURVES_NAME)
        plot_curves(out)


def train_epoch(run: _Run, epoch: int, interrupt: InterruptFlag) -> bool:
    """Train one epoch (from the resume point in the first), validate, log and checkpoint it.

    Returns whether every rank agreed to stop at the last log point; on a stop request in the
    middle of the epoch it checkpoints and raises :class:`~fastclr.train.interrupt.Interrupted`.
    """
    run.state.classifier.train()
    return run_epoch(run, epoch, interrupt, training_step, _log_point, _end_epoch)


def training_step(run: _Run, batch: ViewBatch) -> Tensor:
    """One optimisation step on one augmented view of ``batch``; returns the detached loss
    (its finiteness folded into ``run.finite`` on the device)."""
    state, device = run.state, run.device
    batch = batch.to(device)
    x = one_view(state.augment, batch).contiguous(memory_format=torch.channels_last)
    state.optimizer.zero_grad(set_to_none=True)
    with autocast(run.plan.precision, device):
        logits = run.train_model(x)
    loss = F.cross_entropy(logits.float(), batch.labels)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    run.global_step += 1
    loss = loss.detach()
    run.finite &= torch.isfinite(loss)
    return loss


def _log_point(run: _Run, log: StepLog, epoch: int, requested: bool) -> bool:
    """Agree on finiteness and stopping across ranks, then write the pending step rows."""
    stop_now = agree(run.finite, requested, run.ddp, run.device)
    if not bool(run.finite):
        kept = "the last good checkpoint was kept" if run.saver.path.exists() else "none saved"
        raise NonFiniteLossError(
            f"the fine-tuning loss became NaN or Inf in epoch {epoch}; stopped, {kept}. "
            f"Lower --lr (now {run.plan.lr:.4g})"
            + (", or use --precision fp32." if run.plan.precision != "fp32" else ".")
        )
    write_steps(run, log, epoch)
    return stop_now


def _end_epoch(run: _Run, epoch: int, losses: list[Tensor], steps: int, seconds: float) -> None:
    """Validation, the epoch's log row and summary line, and the end-of-epoch checkpoint."""
    plan = run.plan
    acc = validate(
        run.state.classifier,
        run.data.val,
        (plan.mean, plan.std),
        plan.image_size,
        run.device,
        run.ddp,
        workers=plan.num_workers,
        summary=run.data.summary,
    )
    run.accuracy = acc
    row = {
        "epoch": epoch,
        "loss": float(torch.stack(losses).mean()) if losses else math.nan,
        "lr": run.state.optimizer.param_groups[0]["lr"],
        "top1": acc.top1,
        "top5": acc.top5,
        "images_per_s": steps * plan.batch / max(seconds, 1e-9),
        "seconds": seconds,
    }
    run.history.append(row)
    run.logger.epoch(row)
    if run.ddp.is_main:
        run.bar.write(
            f"epoch {epoch + 1}/{plan.epochs}  loss {row['loss']:.4f}  top-1 {acc.top1:.2%}  "
            f"top-5 {acc.top5:.2%}  {row['images_per_s']:.0f} img/s  {seconds:.1f}s"
        )
    run.saver.save(run.state, Position(epoch + 1, 0, run.global_step), acc)


def _result(run: _Run) -> FinetuneResult:
    acc = run.accuracy
    return FinetuneResult(
        run.state.classifier,
        math.nan if acc is None else acc.top1,
        math.nan if acc is None else acc.top5,
        0 if acc is None else acc.n,
        run.stop_epoch,
        run.global_step,
        run.saver.out,
        run.history,
    )


def _finished(folder: RunFolder) -> FinetuneResult:
    """The result of resuming a run that has already reached its last epoch (nothing written)."""
    ck = folder.checkpoint
    assert ck is not None and folder.path is not None
    model = Architecture(**ck["model_spec"]).build()
    load_model_state(model, ck["model"], f"checkpoint {folder.path}")
    head = ck["classifier"]
    classifier = Classifier(model, int(head["head_layer"]), len(head["classes"]))
    load_model_state(classifier.fc, head["fc"], f"checkpoint {folder.path}")
    acc = ck.get("accuracy") or {}
    return FinetuneResult(
        classifier,
        float(acc.get("top1", math.nan)),
        float(acc.get("top5", math.nan)),
        int(acc.get("n", 0)),
        int(ck["epoch"]),
        int(ck["global_step"]),
        folder.path.parent,
        already_finished=True,
    )
