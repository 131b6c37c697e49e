"""The epoch and step loop that pretraining (:mod:`fastclr.train.loop`) and fine-tuning
(:mod:`fastclr.finetune.loop`) share: the epochs with Ctrl-C/SIGTERM honoured, the steps of one
epoch with their log points and mid-epoch stop, and the step rows written at a log point.

What a step is, what a log point checks first and what ends an epoch stay with each loop; this
module holds the bookkeeping around them, so that both loops resume, log and stop alike.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from fastclr.distributed import DistInfo
from fastclr.train.checkpoint import Position
from fastclr.train.interrupt import InterruptFlag

__all__ = ["EpochRun", "StepLog", "progress_bar", "run_epoch", "run_epochs", "write_steps"]


class EpochRun(Protocol):
    """What the shared loop reads of a run (each loop's ``_Run`` dataclass has these fields).

    ``cfg.log_every``, ``plan.steps_per_epoch`` / ``plan.batch``, ``data.loader.epoch``,
    ``state.optimizer``, ``saver.save`` / ``saver.path``, ``logger.steps`` / ``logger.close`` and
    the tqdm ``bar`` are used; their types differ between pretraining and fine-tuning.
    """

    cfg: Any
    plan: Any
    ddp: DistInfo
    data: Any
    state: Any
    saver: Any
    logger: Any
    start: Position
    stop_epoch: int
    global_step: int
    last_loss: float
    bar: Any


@dataclass
class StepLog:
    """Steps taken since the last log point (their losses stay on the device until then)."""

    pending: list[tuple[int, int, Tensor, float]] = field(default_factory=list)
    losses: list[Tensor] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.pending.clear()
        self.t0 = time.perf_counter()


def progress_bar(run: EpochRun, desc: str) -> Any:
    """The run's tqdm bar on stderr (shown on rank 0 with ``--progress``), from its step."""
    from tqdm import tqdm

    return tqdm(
        total=run.plan.total_steps,
        initial=run.global_step,
        disable=not (run.cfg.progress and run.ddp.is_main),
        dynamic_ncols=True,
        desc=desc,
        file=sys.stderr,
    )


def run_epochs(run: EpochRun, train_epoch: Callable[[Any, int, InterruptFlag], bool]) -> None:
    """``train_epoch(run, epoch, interrupt)`` for the run's remaining epochs; Ctrl-C or SIGTERM
    (a stop agreed at an epoch's last log point, or asked for in its last step) checkpoints,
    says where and raises. The bar and the logger are closed in any case."""
    try:
        with InterruptFlag() as interrupt:
            for epoch in range(run.start.epoch, run.stop_epoch):
                stop_now = train_epoch(run, epoch, interrupt)
                if stop_now or (interrupt.requested and run.ddp.world_size == 1):
                    raise interrupt.stop()  # requested during the epoch's last step (or after)
    except KeyboardInterrupt as e:
        if run.ddp.is_main:
            what = "terminated" if getattr(e, "signum", 2) == signal.SIGTERM else "interrupted"
            run.bar.write(f"{what}; checkpoint in {run.saver.path} (resume with --resume)")
        raise
    finally:
        run.bar.close()
        run.logger.close()


def run_epoch(
    run: EpochRun,
    epoch: int,
    interrupt: InterruptFlag,
    training_step: Callable[[Any, Any], Tensor],
    log_point: Callable[[Any, StepLog, int, bool], bool],
    end_epoch: Callable[[Any, int, list[Tensor], int, float], None],
) -> bool:
    """The steps of one epoch (from the resume point in the first), with a log point every
    ``cfg.log_every`` steps, at the epoch's last step and on a stop request, then
    ``end_epoch(run, epoch, losses, steps taken, seconds)``.

    Returns whether every rank agreed to stop at the last log point; on a stop request in the
    middle of the epoch it checkpoints and raises :class:`~fastclr.train.interrupt.Interrupted`.
    """
    t_epoch = time.perf_counter()
    skip = run.start.step_in_epoch if epoch == run.start.epoch else 0
    steps = run.plan.steps_per_epoch
    batches = run.data.loader.epoch(epoch, skip)  # the same batches after a resume
    log = StepLog()
    stop_now = False
    for step in range(skip, steps):
        batch = next(batches)
        lr_now = float(run.state.optimizer.param_groups[0]["lr"])
        loss = training_step(run, batch)
        log.pending.append((step, run.global_step, loss, lr_now))
        log.losses.append(loss)
        last = step == steps - 1
        local_stop = interrupt.requested and run.ddp.world_size == 1
        if len(log.pending) >= run.cfg.log_every or last or local_stop:
            stop_now = log_point(run, log, epoch, interrupt.requested)
        if (local_stop or (not log.pending and stop_now)) and not last:
            run.saver.save(run.state, Position(epoch, step + 1, run.global_step))
            raise interrupt.stop()
    end_epoch(run, epoch, log.losses, steps - skip, time.perf_counter() - t_epoch)
    return stop_now


def write_steps(run: EpochRun, log: StepLog, epoch: int) -> None:
    """Write the pending steps' rows (one device → host copy for all their losses), move the bar,
    keep the last loss in ``run.last_loss`` and empty the log."""
    n = len(log.pending)
    ips = n * run.plan.batch / max(time.perf_counter() - log.t0, 1e-9)
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
