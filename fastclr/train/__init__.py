"""SimCLR pretraining: ``pretrain(TrainConfig(...))`` and the pieces it is made of.

One module per job:

* :mod:`~fastclr.train.config` — :class:`TrainConfig`, what the user asks for, with the one set
  of defaults the library and the CLI share (the CLI is generated from it);
* :mod:`~fastclr.train.recipe` — the rules (batch, learning rate, warm-up, preset, stem);
* :mod:`~fastclr.train.plan` — :func:`plan_run`: every derived setting decided once, with its
  reason, into an immutable :class:`RunPlan` that the header prints, the checkpoint stores and
  resume reads;
* :mod:`~fastclr.train.precision` — ``auto``/fp32/bf16/fp16, autocast and the grad scaler;
* :mod:`~fastclr.train.builders` — model, augmentation, loss, optimiser and schedule from a plan;
* :mod:`~fastclr.train.views` — two augmented views of a loader's batch;
* :mod:`~fastclr.train.rng` — seeding, and capturing/restoring every random stream;
* :mod:`~fastclr.train.checkpoint` — :class:`CheckpointSaver` and resuming (the file format is the
  leaf module :mod:`fastclr.checkpoint`, which evaluation reads too);
* :mod:`~fastclr.train.logs` — ``steps.csv`` / ``epochs.csv``, TensorBoard, the loss plot;
* :mod:`~fastclr.train.interrupt` — Ctrl-C at the next step boundary;
* :mod:`~fastclr.train.epochs` — the epoch and step loop with its log points and stops, which
  fine-tuning shares;
* :mod:`~fastclr.train.monitor` — the per-epoch kNN monitor;
* :mod:`~fastclr.train.loop` — ``pretrain`` → ``fit`` → ``train_epoch`` → ``training_step``.

Rank, world size and device come from :mod:`fastclr.distributed`, the one place every part of
fastclr asks. Behaviour in short: precision ``auto`` is bf16 autocast on CUDA (fp16 + GradScaler
where bf16 is missing) and fp32 on CPU. Under torchrun (``RANK``/``WORLD_SIZE`` set) the model
is wrapped in DDP, every rank takes its stride of the epoch's permutation, the loss gathers every
rank's embeddings, and only rank 0 writes files. ``OUT/checkpoint.pt`` is written atomically
after every epoch and on Ctrl-C; ``resume`` restores model, optimiser, scheduler, scaler, every
RNG and the position, so an interrupted run continues bit-identically on CPU. A non-finite loss
raises :class:`NonFiniteLossError` and keeps the last good checkpoint. Logs: ``steps.csv``,
``epochs.csv``, TensorBoard when installed, ``loss.png``, a tqdm bar, and a kNN monitor on the
held-out split every epoch.
"""

from fastclr.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint_atomic,
)
from fastclr.train.builders import build_augmentation, build_model
from fastclr.train.config import TrainConfig
from fastclr.train.loop import NonFiniteLossError, TrainResult, pretrain
from fastclr.train.plan import RunPlan, plan_run
from fastclr.train.precision import PRECISIONS, resolve_precision

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "PRECISIONS",
    "CheckpointError",
    "NonFiniteLossError",
    "RunPlan",
    "TrainConfig",
    "TrainResult",
    "build_augmentation",
    "build_model",
    "load_checkpoint",
    "plan_run",
    "pretrain",
    "resolve_precision",
    "save_checkpoint_atomic",
]
