"""The training loop: :func:`pretrain` → :func:`fit` → :func:`train_epoch` → :func:`training_step`.

One step (Chen et al. 2020, Algorithm 1): two augmented views of a batch of uint8 images are drawn
on the device, both go through the encoder and projection head in one channels-last forward under
autocast, NT-Xent compares them, LARS updates the weights and the warm-up + cosine schedule moves
the learning rate (:class:`TrainingStep` is the model part, :func:`training_step` adds the rest).

The loss is checked for finiteness without a host sync per step (a device-side flag, read at
every log point and before every checkpoint); a non-finite loss raises
:class:`NonFiniteLossError` and the last good checkpoint is left as it was. Ctrl-C is honoured at
the next step boundary: a checkpoint is written, then ``KeyboardInterrupt`` is raised.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fastclr.augment.params import AugmentConfig
from fastclr.augment.presets import preset_config
from fastclr.checkpoint import load_model_state
from fastclr.data import ImageData
from fastclr.data.files import FolderListing
from fastclr.data.select import (
    TrainData,
    build_train_data,
    count_train_images,
    images_are_grey,
    train_listing,
)
from fastclr.data.stream import ViewBatch, augment_views
from fastclr.models import SimCLR
from fastclr.optim import WarmupCosine
from fastclr.train.builders import (
    Augmentation,
    LossFn,
    augment_mean_std,
    augment_preset_for,
    build_augmentation,
    build_loss,
    build_optimizer,
    build_scheduler,
    build_simclr,
    warmup_steps,
)
from fastclr.train.checkpoint import CheckpointSaver, Position, TrainingState, resume
from fastclr.train.config import TrainConfig
from fastclr.train.distributed import (
    DistInfo,
    agree,
    broadcast_object,
    setup_distributed,
    teardown,
    wrap_model,
)
from fastclr.train.header import HeaderLine, format_header, run_header
from fastclr.train.interrupt import InterruptFlag
from fastclr.train.logs import RunLogger, plot_loss
from fastclr.train.monitor import knn_monitor
from fastclr.train.precision import autocast, make_scaler, resolve_precision
from fastclr.train.recipe import Choice, batch_for, lr_for, preset_for, run_recipe
from fastclr.train.rng import restore_rng, seed_everything
from fastclr.train.rundir import ResumePlan, prepare_run_folder
from fastclr.train.validation import check_device, check_environment
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


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; training stopped and the last checkpoint was kept."""


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


class TrainingStep:
    """One optimisation step on two views: forward, loss, backward, (scaled) optimiser step.

    The model-only part of a step (no augmentation, no schedule); ``bench/train_bench.py`` times
    it against the full step.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        precision: str,
        device: torch.device,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.precision, self.device = precision, device

    def __call__(self, v1: Tensor, v2: Tensor) -> Tensor:
        """The detached loss of this step (on the device; no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        x = torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            _, z = self.model(x)
        z1, z2 = z.float().chunk(2)
        loss = self.loss_fn(z1, z2)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


@dataclass
class _Run:
    """Everything one pretraining run works on, built by :func:`_build_run`.

    The fields after ``start`` change as the run goes: the step count, the device-side
    "every loss so far was finite" flag, the last logged loss, the kNN monitor's last result and
    the per-epoch history. The normalisation the kNN monitor applies is ``saver.mean/std``, the
    one the checkpoint records for evaluation.
    """

    cfg: TrainConfig
    ddp: DistInfo
    device: torch.device
    data: TrainData
    per_rank: int
    steps_per_epoch: int
    total_steps: int
    stop_epoch: int
    state: TrainingState
    step: TrainingStep
    saver: CheckpointSaver
    logger: RunLogger
    start: Position
    global_step: int
    finite: Tensor
    knn_k: int
    watcher: PlateauWatcher
    last_loss: float = math.nan
    knn_top1: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    bar: Any = None


@dataclass
class _StepLog:
    """Steps taken since the last log point (their losses stay on the device until then)."""

    pending: list[tuple[int, int, Tensor, float]] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.pending.clear()
        self.t0 = time.perf_counter()


def pretrain(
    cfg: TrainConfig,
    *,
    augment: Augmentation | None = None,
    loss_fn: LossFn | None = None,
    data: ImageData | None = None,
) -> TrainResult:
    """Run SimCLR pretraining as configured; see :mod:`fastclr.train`.

    ``augment``, ``loss_fn`` and ``data`` replace the ones built from ``cfg`` (tests, custom
    pipelines). Raises :class:`NonFiniteLossError` on a NaN/Inf loss and
    :class:`~fastclr.checkpoint.CheckpointError` on a checkpoint that cannot be resumed.
    """
    cfg.validate()
    check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ddp, device = setup_distributed(cfg.device)
    try:
        check_environment(cfg, device)
        return fit(cfg, ddp, device, augment, loss_fn, data)
    finally:
        teardown(ddp)


def _check_setup(cfg: TrainConfig, ddp: DistInfo, device: torch.device) -> str:
    """The resolved precision, after the checks that need the device and the world size."""
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick the fastest convs
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16 needs a GPU with bf16 support; use fp16")
    if precision == "fp16" and device.type == "cpu":
        warnings.warn(
            "--precision fp16 on the CPU is emulated (CPUs have no fp16 matrix units) and much "
            "slower than fp32; use --precision fp32 (or bf16) on the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
    if cfg.batch() % ddp.world_size:
        raise ValueError(
            f"batch size {cfg.batch()} does not split evenly over {ddp.world_size} ranks"
        )
    return precision


def _build_run(
    cfg: TrainConfig,
    ddp: DistInfo,
    device: torch.device,
    augment: Augmentation | None,
    loss_fn: LossFn | None,
    data: ImageData | None,
    plan: ResumePlan | None = None,
    chosen: list[Choice] | None = None,
) -> _Run:
    """Seed, load the data, build every component, resume if asked: the run, ready to train."""
    precision = _check_setup(cfg, ddp, device)
    per_rank = cfg.batch() // ddp.world_size
    seed_everything(cfg.seed, ddp.rank)
    if augment is None:
        augment = build_augmentation(
            augment_preset_for(cfg), cfg.image_size, precision, cfg.augment_backend,
            cfg.seed + ddp.rank, device,
        )  # fmt: skip
    train_data = _load_data(cfg, ddp, device, augment, data, per_rank)
    steps_per_epoch = train_data.loader.steps_per_epoch
    if cfg.limit_steps is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_steps)
    total_steps = steps_per_epoch * cfg.epochs

    model = build_simclr(cfg).to(device)
    if loss_fn is None:
        loss_fn = build_loss(cfg, ddp.world_size)
    optimizer = build_optimizer(model, cfg)
    warmup = warmup_steps(cfg, steps_per_epoch, total_steps)
    scaler = make_scaler(precision, device)
    state = TrainingState(
        model, optimizer, build_scheduler(optimizer, warmup, total_steps), scaler, augment
    )

    start, rng = Position(), None
    if cfg.resume:
        ckpt = plan.checkpoint if plan is not None else None
        schedule = WarmupCosine(warmup, total_steps)
        start, rng = resume(cfg.resume, cfg, state, ddp, schedule, checkpoint=ckpt)
    train_model = wrap_model(model, ddp, device, cfg.compile)
    step = TrainingStep(train_model, loss_fn, optimizer, scaler, precision, device)
    if rng is not None:
        restore_rng(rng, augment, device)

    recipe, knn_k = run_recipe(cfg, steps_per_epoch, total_steps, train_data.monitor_train)
    lr = float(optimizer.defaults["lr"])
    if ddp.is_main:
        choices = [*(chosen or []), *recipe]
        _print_header(
            cfg, train_data, device, precision, model, data, steps_per_epoch, lr, ddp, start,
            choices,
        )  # fmt: skip
    out = Path(cfg.out)
    stop_epoch = cfg.epochs
    if cfg.stop_after_epochs is not None:
        stop_epoch = min(cfg.epochs, start.epoch + cfg.stop_after_epochs)
    return _Run(
        cfg=cfg, ddp=ddp, device=device, data=train_data, per_rank=per_rank,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps, stop_epoch=stop_epoch,
        state=state, step=step,
        saver=CheckpointSaver(out, cfg, ddp, device, *augment_mean_std(augment)),
        logger=RunLogger(
            out, ddp.is_main, append=bool(cfg.resume),
            resume_at=(start.global_step, start.epoch) if cfg.resume else None,
        ),
        start=start, global_step=start.global_step,
        finite=torch.ones((), dtype=torch.bool, device=device),
        knn_k=knn_k,
        watcher=PlateauWatcher(
            cfg.epochs, warmup / max(steps_per_epoch, 1), lr,
            lr_for(cfg.batch(), cfg.epochs)[0], math.log(2 * cfg.batch() - 1),
        ),
    )  # fmt: skip


def _print_header(
    cfg: TrainConfig,
    train_data: TrainData,
    device: torch.device,
    precision: str,
    model: nn.Module,
    data: ImageData | None,
    steps_per_epoch: int,
    lr: float,
    ddp: DistInfo,
    start: Position,
    choices: list[Choice],
) -> None:
    """Print the run's header: its setup, then every recipe choice with the reason for it."""
    lines = run_header(
        cfg, train_data, device, precision, model,
        data_name=data.name if data is not None else cfg.data,
        steps_per_epoch=steps_per_epoch, lr=lr, world_size=ddp.world_size,
        resume_from=(str(cfg.resume), start.epoch, start.global_step) if cfg.resume else None,
    )  # fmt: skip
    lines += [HeaderLine(c.name, f"{c.value} ({c.reason})") for c in choices]
    print(format_header(lines), flush=True)


def _load_data(
    cfg: TrainConfig,
    ddp: DistInfo,
    device: torch.device,
    augment: Augmentation,
    data: ImageData | None,
    per_rank: int,
) -> TrainData:
    """The loader ``cfg.loader`` resolves to (:mod:`fastclr.data.select`) for this rank.

    Streaming loaders draw the crops themselves, with the augmentation's crop settings.
    """
    crop = getattr(augment, "config", None)
    if not isinstance(crop, AugmentConfig):
        crop = preset_config(augment_preset_for(cfg), cfg.image_size)
    return build_train_data(
        data if data is not None else cfg.data,
        loader=cfg.loader,
        crop=crop,
        image_size=cfg.image_size,
        batch_size=per_rank,
        seed=cfg.seed,
        rank=ddp.rank,
        world_size=ddp.world_size,
        device=device,
        num_workers=cfg.num_workers,
    )


def fit(
    cfg: TrainConfig,
    ddp: DistInfo,
    device: torch.device,
    augment: Augmentation | None = None,
    loss_fn: LossFn | None = None,
    data: ImageData | None = None,
) -> TrainResult:
    """Set up (and resume) a run, train its epochs, plot the loss; see :func:`pretrain`."""
    from tqdm import tqdm

    plan = _prepare_on_every_rank(cfg, ddp)
    if plan.finished:
        return _finished(cfg, plan)
    # the batch and preset rules read the training files' listing: list them once, if needed
    need = cfg.batch_size is None or cfg.augment_preset == "auto"
    listing = train_listing(data if data is not None else cfg.data) if need else None
    cfg, batch = resolve_batch(cfg, plan, data, ddp.world_size, listing)
    cfg, preset = resolve_preset(cfg, plan, data, listing)
    run = _build_run(cfg, ddp, device, augment, loss_fn, data, plan, [batch, preset])
    run.bar = tqdm(
        total=run.total_steps,
        initial=run.global_step,
        disable=not (cfg.progress and ddp.is_main),
        dynamic_ncols=True,
        desc="pretrain",
        file=sys.stderr,
    )
    try:
        with InterruptFlag() as interrupt:
            for epoch in range(run.start.epoch, run.stop_epoch):
                stop_now = train_epoch(run, epoch, interrupt)
                if stop_now or (interrupt.requested and ddp.world_size == 1):
                    raise KeyboardInterrupt  # requested during the epoch's last step or kNN
    except KeyboardInterrupt:
        if ddp.is_main:
            run.bar.write(f"interrupted; checkpoint in {run.saver.path} (resume with --resume)")
        raise
    finally:
        run.bar.close()
        run.logger.close()
    out = run.saver.out
    if ddp.is_main and (out / "steps.csv").exists():
        plot_loss(out / "steps.csv", out / "loss.png")
    model = run.state.model
    return TrainResult(
        model, run.stop_epoch, run.global_step, run.last_loss, run.knn_top1, out, run.history
    )


def resolve_batch(
    cfg: TrainConfig,
    plan: ResumePlan | None,
    data: ImageData | None,
    world_size: int,
    listing: FolderListing | None = None,
) -> tuple[TrainConfig, Choice]:
    """``cfg`` with its batch size fixed, and the header line that says why.

    Given: kept. Unset: a resumed run's checkpoint's, else :func:`~fastclr.train.recipe.batch_for`
    of the number of training images (counted from the listing, before any loader is built;
    ``listing`` is :func:`~fastclr.data.select.train_listing`'s, where the caller has it).
    """
    if cfg.batch_size is not None:
        return cfg, Choice("batch", str(cfg.batch_size), "given")
    ck = plan.checkpoint if plan is not None else None
    trained = ck.get("config", {}).get("batch_size") if ck is not None else None
    if trained is not None:
        batch, why = int(trained), "the checkpoint's"
    else:
        batch, why = batch_for(
            count_train_images(data if data is not None else cfg.data, listing), world_size
        )
    return dataclasses.replace(cfg, batch_size=batch), Choice("batch", str(batch), why)


def resolve_preset(
    cfg: TrainConfig,
    plan: ResumePlan | None,
    data: ImageData | None,
    listing: FolderListing | None = None,
) -> tuple[TrainConfig, Choice]:
    """``cfg`` with its augmentation preset named, and the header line that says why.

    Given (or a resumed run's): kept. ``auto``: the embedded digits' demo preset for
    ``--data digits``, else :func:`~fastclr.train.recipe.preset_for` of the view size and of
    whether the training images are grayscale (a few decoded, before any loader is built).
    """
    if cfg.augment_preset != "auto":
        ck = plan.checkpoint if plan is not None else None
        saved = ck.get("config", {}).get("augment_preset") if ck is not None else None
        why = "the checkpoint's" if cfg.resume and saved == cfg.augment_preset else "given"
        return cfg, Choice("augment", cfg.augment_preset, why)
    if data is None and cfg.data == "digits":
        name, why = "digits", "the embedded digits' demo preset: crops of at least 30%, no flips"
    else:
        grey = images_are_grey(data if data is not None else cfg.data, listing)
        name, why = preset_for(cfg.image_size, grey)
    return dataclasses.replace(cfg, augment_preset=name), Choice("augment", name, why)


def _prepare_on_every_rank(cfg: TrainConfig, ddp: DistInfo) -> ResumePlan:
    """:func:`prepare_run_folder` on rank 0 first; its failure, if any, is raised on every rank.

    Rank 0 alone checks for an existing run and probes the folder; the other ranks wait for its
    verdict (so none trains alone or hangs in a collective), then read the checkpoint.
    """
    if ddp.world_size == 1:
        return prepare_run_folder(cfg, True)
    verdict: tuple[str, str] | None = None
    plan: ResumePlan | None = None
    if ddp.is_main:
        try:
            plan = prepare_run_folder(cfg, True)
        except Exception as e:
            broadcast_object((type(e).__name__, str(e)), 0, ddp)
            raise
    verdict = broadcast_object(verdict, 0, ddp)
    if verdict is not None:
        name, message = verdict
        raise (OSError if name.endswith(("FolderError", "OSError")) else ValueError)(message)
    return plan if plan is not None else prepare_run_folder(cfg, False)


def _finished(cfg: TrainConfig, plan: ResumePlan) -> TrainResult:
    """The result of resuming a run that has already reached its last epoch (nothing written)."""
    ck = plan.checkpoint
    assert ck is not None
    model = build_simclr(cfg)
    load_model_state(model, ck["model"], f"checkpoint {plan.path}")
    epochs, step = int(ck["epoch"]), int(ck["global_step"])
    out = Path(cfg.out)
    return TrainResult(model, epochs, step, math.nan, None, out, [], already_finished=True)


def train_epoch(run: _Run, epoch: int, interrupt: InterruptFlag) -> bool:
    """Train one epoch (from the resume point in the first), log, monitor and checkpoint it.

    Returns whether every rank agreed to stop (Ctrl-C on some rank) at the last log point; on a
    stop request in the middle of the epoch it checkpoints and raises ``KeyboardInterrupt``.
    """
    cfg, ddp = run.cfg, run.ddp
    run.state.model.train()
    t_epoch = time.perf_counter()
    skip = run.start.step_in_epoch if epoch == run.start.epoch else 0
    batches = run.data.loader.epoch(epoch, skip)  # the same batches after a resume
    log = _StepLog()
    stop_now = False
    for step in range(skip, run.steps_per_epoch):
        batch = next(batches)
        lr_now = run.state.optimizer.param_groups[0]["lr"]
        loss = training_step(run, batch)
        log.pending.append((step, run.global_step, loss, lr_now))
        log.losses.append(loss)
        last_of_epoch = step == run.steps_per_epoch - 1
        local_stop = interrupt.requested and ddp.world_size == 1
        if len(log.pending) >= cfg.log_every or last_of_epoch or local_stop:
            stop_now = _log_point(run, log, epoch, interrupt.requested)
        if (local_stop or (not log.pending and stop_now)) and not last_of_epoch:
            run.saver.save(run.state, Position(epoch, step + 1, run.global_step))
            raise KeyboardInterrupt
    seconds = time.perf_counter() - t_epoch
    _end_epoch(run, epoch, log.losses, run.steps_per_epoch - skip, seconds)
    return stop_now


def training_step(run: _Run, batch: ViewBatch) -> Tensor:
    """Augment ``batch`` into two views, take one optimisation step, advance the schedule.

    Returns the detached loss; its finiteness is folded into ``run.finite`` on the device.
    """
    v1, v2 = augment_views(run.state.augment, batch.to(run.device))
    loss = run.step(v1, v2)
    run.state.scheduler.step()
    run.global_step += 1
    run.finite &= torch.isfinite(loss)
    return loss


def _log_point(run: _Run, log: _StepLog, epoch: int, requested: bool) -> bool:
    """Agree on finiteness and stopping across ranks, then write the pending step rows."""
    stop_now = agree(run.finite, requested, run.ddp, run.device)
    if not bool(run.finite):
        bad = next(p for p in log.pending if not math.isfinite(float(p[2])))
        raise NonFiniteLossError(
            f"loss became {float(bad[2])} at epoch {epoch} step {bad[0]} "
            f"(global step {bad[1]}); stopped. The last good checkpoint "
            f"({run.saver.path}) was kept. Lower --lr, or use --precision fp32."
        )
    n = len(log.pending)
    ips = n * run.cfg.batch() / max(time.perf_counter() - log.t0, 1e-9)
    values = torch.stack([p[2] for p in log.pending]).tolist()  # one sync
    rows = [
        {"epoch": epoch, "step": s, "global_step": g, "loss": v, "lr": lr, "images_per_s": ips}
        for (s, g, _, lr), v in zip(log.pending, values, strict=True)
    ]
    run.logger.steps(rows)
    run.last_loss = rows[-1]["loss"]
    run.bar.update(len(rows))
    run.bar.set_postfix(loss=f"{run.last_loss:.4f}", img_s=f"{ips:.0f}")
    log.reset()
    return stop_now


def _end_epoch(run: _Run, epoch: int, losses: list[Tensor], steps: int, seconds: float) -> None:
    """kNN monitor, the epoch's log row and summary line, and the end-of-epoch checkpoint."""
    cfg = run.cfg
    epoch_loss = float(torch.stack(losses).mean()) if losses else math.nan
    heldout, train = run.data.monitor_heldout, run.data.monitor_train
    if run.data.monitored:  # the same on every rank; the sets themselves may live on rank 0 only
        mean, std = run.saver.mean, run.saver.std
        run.knn_top1 = knn_monitor(
            run.state.model, train, heldout, mean, std, cfg.image_size,
            run.knn_k, cfg.knn_temperature, run.device, run.ddp,
        )  # fmt: skip
    row = {
        "epoch": epoch,
        "loss": epoch_loss,
        "lr": run.state.optimizer.param_groups[0]["lr"],
        "knn_top1": math.nan if run.knn_top1 is None else run.knn_top1,
        "images_per_s": steps * cfg.batch() / seconds,
        "seconds": seconds,
    }
    run.history.append(row)
    run.logger.epoch(row)
    if run.ddp.is_main:
        knn_txt = "" if run.knn_top1 is None else f"  kNN top-1 {run.knn_top1:.2%}"
        run.bar.write(
            f"epoch {epoch + 1}/{cfg.epochs}  loss {epoch_loss:.4f}{knn_txt}  "
            f"{row['images_per_s']:.0f} img/s  {seconds:.1f}s"
        )
        for warning in run.watcher.update(epoch, epoch_loss, run.knn_top1):
            run.bar.write(warning)
    run.saver.save(run.state, Position(epoch + 1, 0, run.global_step))
