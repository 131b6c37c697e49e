"""The training loop: :func:`pretrain` → :func:`fit` → :func:`train_epoch` → :func:`training_step`.

One step (Chen et al. 2020, Algorithm 1): two augmented views of a batch of uint8 images are drawn
on the device, both go through the encoder and projection head in one channels-last forward under
autocast, NT-Xent compares them, LARS updates the weights and the warm-up + cosine schedule moves
the learning rate (:class:`TrainingStep` is the model part, :func:`training_step` adds the rest).

The loss is checked for finiteness without a host sync per step (a device-side flag, read at
every log point and before every checkpoint); a non-finite loss raises
:class:`NonFiniteLossError` and the last good checkpoint is left as it was. Ctrl-C is honoured at
the next step boundary, and so is SIGTERM: a checkpoint is written, then
:class:`~fastclr.train.interrupt.Interrupted` (a ``KeyboardInterrupt``) is raised.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastclr.augment.params import AugmentConfig
from fastclr.augment.presets import preset_config
from fastclr.checkpoint import load_model_state
from fastclr.data import ImageData
from fastclr.data.select import TrainData, build_train_data
from fastclr.data.stream import ViewBatch
from fastclr.distributed import (
    DistInfo,
    agree,
    distributed_run,
    on_main,
    wrap_model,
)
from fastclr.errors import NonFiniteLossError
from fastclr.models import Architecture, SimCLR
from fastclr.train.builders import (
    Augmentation,
    LossFn,
    augment_mean_std,
    build_augmentation,
    build_loss,
    build_optimizer,
    build_scheduler,
    build_simclr,
)
from fastclr.train.checkpoint import CheckpointSaver, Position, TrainingState, resume
from fastclr.train.config import TrainConfig
from fastclr.train.epochs import StepLog, progress_bar, run_epoch, run_epochs, write_steps
from fastclr.train.header import format_header, run_header
from fastclr.train.interrupt import InterruptFlag
from fastclr.train.logs import RunLogger, plot_loss
from fastclr.train.monitor import knn_monitor
from fastclr.train.plan import RunPlan, plan_run
from fastclr.train.precision import make_scaler
from fastclr.train.rng import restore_rng, seed_everything
from fastclr.train.rundir import RunFolder, prepare_on_every_rank
from fastclr.train.step import TrainingStep
from fastclr.train.validation import check_environment
from fastclr.train.views import augment_views, worker_views
from fastclr.train.watch import PlateauWatcher

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "TrainingStep",
    "fit",
    "pretrain",
    "train_epoch",
    "training_step",
]


@dataclass
class TrainResult:
    """What :func:`pretrain` returns (on every rank; files exist only from rank 0).

    ``already_finished``: the resumed checkpoint had reached ``epochs`` already, so nothing was
    trained or written (``model`` holds the checkpoint's weights).
    """

    model: SimCLR
    epochs_done: int
    global_step: int
    last_loss: float
    knn_top1: float | None
    out: Path
    history: list[dict[str, float]] = field(default_factory=list)
    already_finished: bool = False


@dataclass
class _Run:
    """Everything one pretraining run works on, built by :func:`_build_run`.

    ``plan`` holds every derived setting (:mod:`fastclr.train.plan`). The fields after
    ``start`` change as the run goes: the step count, the device-side "every loss so far was
    finite" flag, the last logged loss, the kNN monitor's last result and the per-epoch history.
    The normalisation the kNN monitor applies is ``saver.mean/std``, the one the checkpoint
    records for evaluation.
    """

    cfg: TrainConfig
    plan: RunPlan
    ddp: DistInfo
    device: torch.device
    data: TrainData
    stop_epoch: int
    state: TrainingState
    step: TrainingStep
    saver: CheckpointSaver
    logger: RunLogger
    start: Position
    global_step: int
    finite: Tensor
    watcher: PlateauWatcher
    last_loss: float = math.nan
    knn_top1: float | None = None
    skips_said: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    bar: Any = None


def pretrain(
    cfg: TrainConfig,
    *,
    augment: Augmentation | None = None,
    loss_fn: LossFn | None = None,
    data: ImageData | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> TrainResult:
    """Run SimCLR pretraining as configured; see :mod:`fastclr.train`.

    ``augment``, ``loss_fn`` and ``data`` replace the ones built from ``cfg`` (tests, custom
    pipelines). ``checkpoint``: the contents of ``cfg.resume`` when the caller has read them
    already (so the file is read once). Raises :class:`NonFiniteLossError` on a NaN/Inf loss,
    :class:`~fastclr.errors.UsageError` for settings or data that cannot be used and
    :class:`~fastclr.checkpoint.CheckpointError` for a checkpoint that cannot be resumed.
    """
    cfg.validate()
    with distributed_run(cfg.device) as (ddp, device):
        check_environment(cfg, device)
        return fit(cfg, ddp, device, augment, loss_fn, data, checkpoint)


def fit(
    cfg: TrainConfig,
    ddp: DistInfo,
    device: torch.device,
    augment: Augmentation | None = None,
    loss_fn: LossFn | None = None,
    data: ImageData | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> TrainResult:
    """Check and lock the run folder, plan the run, build it (and resume), train its epochs,
    plot the loss; see :func:`pretrain`."""
    folder = prepare_on_every_rank(cfg, ddp, checkpoint)
    try:
        if folder.finished:
            return _finished(folder)
        folder.warn_notes()
        plan = _plan_on_main(cfg, ddp, device, data, folder.checkpoint, augment is None)
        if plan.threads:
            torch.set_num_threads(plan.threads)
        run = _build_run(cfg, plan, ddp, device, augment, loss_fn, folder)
        return _train(run)
    finally:
        folder.release()


def _train(run: _Run) -> TrainResult:
    """The epochs of a built run, with a progress bar, Ctrl-C/SIGTERM honoured; the loss plot."""
    ddp = run.ddp
    run.bar = progress_bar(run, "pretrain")
    run_epochs(run, train_epoch)
    out = run.saver.out
    if ddp.is_main and (out / "steps.csv").exists():
        plot_loss(out / "steps.csv", out / "loss.png")
        run.saver.manifest.record("loss.png")
    model = run.state.model
    return TrainResult(
        model, run.stop_epoch, run.global_step, run.last_loss, run.knn_top1, out, run.history
    )


def _plan_on_main(
    cfg: TrainConfig,
    ddp: DistInfo,
    device: torch.device,
    data: ImageData | None,
    checkpoint: dict[str, Any] | None,
    own_augment: bool = True,
) -> RunPlan:
    """:func:`~fastclr.train.plan.plan_run` on rank 0 alone; the others receive its plan
    (without the images rank 0 may have decoded for the in-memory loader: each rank decodes its
    own when it builds the loader). A refusal is raised on every rank. ``own_augment``: training
    builds the augmentation (``pretrain`` was not given one)."""
    full: RunPlan | None = None
    saved = checkpoint.get("plan") if checkpoint is not None else None
    at: tuple[int, int, int] | None = None
    if checkpoint is not None:
        ck = checkpoint
        at = (int(ck["epoch"]), int(ck["step_in_epoch"]), int(ck["global_step"]))

    def make() -> RunPlan:
        nonlocal full
        full = plan_run(
            cfg,
            world_size=ddp.world_size,
            device=device,
            data=data,
            saved=saved if isinstance(saved, dict) else None,
            resume_at=at,
            own_augment=own_augment,
        )
        return full.without_memory() if ddp.world_size > 1 else full

    shared = on_main(make, ddp)
    return full if full is not None else shared


def _build_run(
    cfg: TrainConfig,
    plan: RunPlan,
    ddp: DistInfo,
    device: torch.device,
    augment: Augmentation | None,
    loss_fn: LossFn | None,
    folder: RunFolder,
) -> _Run:
    """Seed, load the data, build every component from the plan, resume if asked."""
    seed_everything(cfg.seed, ddp.rank)
    if augment is None:
        augment = build_augmentation(
            plan.preset,
            plan.image_size,
            plan.precision,
            cfg.augment_backend,
            cfg.seed + ddp.rank,
            device,
        )
    train_data = _load_data(cfg, plan, ddp, device, augment)
    model = build_simclr(cfg, plan).to(device)
    optimizer = build_optimizer(model, cfg, plan)
    scaler = make_scaler(plan.precision, device)
    state = TrainingState(model, optimizer, build_scheduler(optimizer, plan), scaler, augment)
    start, rng = Position(), None
    if cfg.resume:
        start, rng = resume(cfg.resume, cfg, plan, state, ddp, checkpoint=folder.checkpoint)
    train_model = wrap_model(model, ddp, device, cfg.compile)
    loss_fn = loss_fn if loss_fn is not None else build_loss(cfg, ddp.world_size)
    step = TrainingStep(
        train_model,
        loss_fn,
        optimizer,
        scaler,
        plan.precision,
        device,
        plan.chunk,
        separate=plan.views_forward == "separate",
    )
    if rng is not None:
        restore_rng(rng, augment, device)
    if ddp.is_main:
        where = (str(cfg.resume), start.epoch, start.global_step) if cfg.resume else None
        lines = run_header(plan, cfg, train_data, device, model, resume_from=where)
        print(format_header(lines), flush=True)
    return _assemble(cfg, plan, ddp, device, train_data, state, step, start, augment, folder)


def _assemble(
    cfg: TrainConfig,
    plan: RunPlan,
    ddp: DistInfo,
    device: torch.device,
    train_data: TrainData,
    state: TrainingState,
    step: TrainingStep,
    start: Position,
    augment: Augmentation,
    folder: RunFolder,
) -> _Run:
    """The :class:`_Run` of built parts: its saver, logger and plateau watcher."""
    out = Path(cfg.out)
    stop_epoch = plan.epochs
    if cfg.stop_after_epochs is not None:
        stop_epoch = min(plan.epochs, start.epoch + cfg.stop_after_epochs)
    steps = max(plan.steps_per_epoch, 1)
    watcher = PlateauWatcher(
        plan.epochs, plan.warmup_steps / steps, plan.lr, plan.rule_lr, math.log(2 * plan.batch - 1)
    )
    return _Run(
        cfg=cfg,
        plan=plan,
        ddp=ddp,
        device=device,
        data=train_data,
        stop_epoch=stop_epoch,
        state=state,
        step=step,
        saver=CheckpointSaver(
            out, cfg, plan, ddp, device, *augment_mean_std(augment), folder.manifest
        ),
        logger=RunLogger(
            out,
            ddp.is_main,
            append=bool(cfg.resume),
            resume_at=(start.global_step, start.epoch) if cfg.resume else None,
            manifest=folder.manifest,
        ),
        start=start,
        global_step=start.global_step,
        finite=torch.ones((), dtype=torch.bool, device=device),
        watcher=watcher,
    )


def _load_data(
    cfg: TrainConfig,
    plan: RunPlan,
    ddp: DistInfo,
    device: torch.device,
    augment: Augmentation,
) -> TrainData:
    """This rank's loader of the planned kind (:mod:`fastclr.data.select`).

    Streaming loaders draw the crops themselves, with the augmentation's crop settings; when
    the plan finishes the views in their workers, they also get the augmentation's recipe.
    """
    crop = getattr(augment, "config", None)
    if not isinstance(crop, AugmentConfig):
        crop = preset_config(plan.preset, plan.image_size)
    data = build_train_data(
        plan.data,
        loader=plan.loader,
        num_workers=plan.num_workers,
        crop=crop,
        image_size=plan.image_size,
        batch_size=plan.per_rank,
        seed=cfg.seed,
        rank=ddp.rank,
        world_size=ddp.world_size,
        device=device,
        monitor=plan.knn_k is not None,
        finish_views=worker_views(plan.augment_in, augment),
    )
    if data.loader.steps_per_epoch < plan.steps_per_epoch:
        raise RuntimeError(
            f"the {plan.loader} loader has {data.loader.steps_per_epoch} steps an epoch on rank "
            f"{ddp.rank}, the plan {plan.steps_per_epoch}: the data changed while the run started"
        )
    return data


def _finished(folder: RunFolder) -> TrainResult:
    """The result of resuming a run that has already reached its last epoch (nothing written)."""
    ck = folder.checkpoint
    assert ck is not None and folder.path is not None
    model = Architecture(**ck["model_spec"]).build()
    load_model_state(model, ck["model"], f"checkpoint {folder.path}")
    epochs, step = int(ck["epoch"]), int(ck["global_step"])
    out = folder.path.parent
    return TrainResult(model, epochs, step, math.nan, None, out, [], already_finished=True)


def train_epoch(run: _Run, epoch: int, interrupt: InterruptFlag) -> bool:
    """Train one epoch (from the resume point in the first), log, monitor and checkpoint it.

    Returns whether every rank agreed to stop (Ctrl-C on some rank) at the last log point; on a
    stop request in the middle of the epoch it checkpoints and raises
    :class:`~fastclr.train.interrupt.Interrupted`.
    """
    run.state.model.train()
    return run_epoch(run, epoch, interrupt, training_step, _log_point, _end_epoch)


def training_step(run: _Run, batch: ViewBatch) -> Tensor:
    """Augment ``batch`` into two views, take one optimisation step, advance the schedule.

    Returns the detached loss; its finiteness is folded into ``run.finite`` on the device.
    """
    v1, v2 = augment_views(run.state.augment, batch.to(run.device))
    loss = run.step(v1, v2)
    with warnings.catch_warnings():
        # with fp16 the grad scaler skips the optimizer's step when it finds Inf gradients (it
        # then lowers its scale); torch warns the schedule then stepped first, which is intended
        warnings.filterwarnings(
            "ignore", message="Detected call of `lr_scheduler.step", category=UserWarning
        )
        run.state.scheduler.step()
    run.global_step += 1
    run.finite &= torch.isfinite(loss)
    return loss


def _diverged(run: _Run, log: StepLog, epoch: int) -> NonFiniteLossError:
    """The error of a NaN/Inf loss: where, what was kept, and the likely causes of this run."""
    bad = next((p for p in log.pending if not math.isfinite(float(p[2]))), None)
    where = (
        f"loss became {float(bad[2])} at epoch {epoch} step {bad[0]} (global step {bad[1]})"
        if bad is not None
        else f"another rank's loss became NaN or Inf in epoch {epoch}"
    )
    kept = (
        f"the last good checkpoint ({run.saver.path}) was kept"
        if run.saver.path.exists()
        else "no checkpoint had been written yet"
    )
    return NonFiniteLossError(f"{where}; training stopped and {kept}. {_likely_causes(run)}")


def _likely_causes(run: _Run) -> str:
    """What to change, from this run's settings (never advice it already follows)."""
    cfg, plan = run.cfg, run.plan
    causes = []
    if cfg.temperature < 0.05:
        causes.append(
            f"--temperature {cfg.temperature:g} is very small (logits reach 1/τ = "
            f"{1 / cfg.temperature:.3g}); SimCLR uses 0.1 to 0.5"
        )
    if plan.lr > 4 * plan.rule_lr:
        ratio = plan.lr / plan.rule_lr
        causes.append(f"--lr {plan.lr:.4g} is {ratio:.0f}× the rule's {plan.rule_lr:.3g}: lower it")
    if plan.precision == "fp16":
        causes.append("--precision fp16 has a narrow range: use bf16 or fp32")
    elif plan.precision == "bf16":
        causes.append("try --precision fp32")
    if not causes:
        causes.append(f"lower --lr (now {plan.lr:.4g})")
    return "Likely: " + "; ".join(causes) + "."


def _log_point(run: _Run, log: StepLog, epoch: int, requested: bool) -> bool:
    """Agree on finiteness and stopping across ranks, then write the pending step rows."""
    stop_now = agree(run.finite, requested, run.ddp, run.device)
    if not bool(run.finite):
        raise _diverged(run, log, epoch)
    write_steps(run, log, epoch)
    return stop_now


def _say_skips(run: _Run) -> None:
    """After an epoch: how many unreadable files the loader has met (and replaced) so far."""
    summary = run.data.summary
    n = summary.skipped_count
    if n <= run.skips_said or run.plan.loader == "memory":  # memory: dropped when decoded
        return
    path, reason = next(iter(summary.skipped.items()))
    of = f" of {summary.listed:,}" if summary.listed else ""
    run.bar.write(
        f"data: {n}{of} files could not be read so far; each was replaced in its batch by "
        f"another file of the data set (first: {path}: {reason})"
    )
    run.skips_said = n


def _end_epoch(run: _Run, epoch: int, losses: list[Tensor], steps: int, seconds: float) -> None:
    """kNN monitor, the epoch's log row and summary line, and the end-of-epoch checkpoint."""
    run.saver.check_finite(run.state, run.global_step)  # before anything is measured or saved
    cfg = run.cfg
    epoch_loss = float(torch.stack(losses).mean()) if losses else math.nan
    heldout, train = run.data.monitor_heldout, run.data.monitor_train
    if run.data.monitored:  # the same on every rank; the sets themselves may live on rank 0 only
        mean, std = run.saver.mean, run.saver.std
        assert run.plan.knn_k is not None
        run.knn_top1 = knn_monitor(
            run.state.model,
            (train, heldout),
            (mean, std),
            run.plan.image_size,
            run.plan.knn_k,
            cfg.knn_temperature,
            run.device,
            run.ddp,
        )
    row = {
        "epoch": epoch,
        "loss": epoch_loss,
        "lr": run.state.optimizer.param_groups[0]["lr"],
        "knn_top1": math.nan if run.knn_top1 is None else run.knn_top1,
        "images_per_s": steps * run.plan.batch / seconds if steps > 0 else math.nan,
        "seconds": seconds,
    }
    run.history.append(row)
    run.logger.epoch(row)
    if run.ddp.is_main:
        knn_txt = "" if run.knn_top1 is None else f"  kNN top-1 {run.knn_top1:.2%}"
        run.bar.write(
            f"epoch {epoch + 1}/{run.plan.epochs}  loss {epoch_loss:.4f}{knn_txt}  "
            f"{row['images_per_s']:.0f} img/s  {seconds:.1f}s"
        )
        for warning in run.watcher.update(epoch, epoch_loss, run.knn_top1):
            run.bar.write(warning)
        _say_skips(run)
    run.saver.save(run.state, Position(epoch + 1, 0, run.global_step))
