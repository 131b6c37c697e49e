"""SimCLR pretraining: the training loop, its checkpoints and its logs.

One step (Chen et al. 2020, Algorithm 1): two augmented views of a batch of uint8 images are drawn
on the device, both go through the encoder and projection head in one channels-last forward under
autocast, NT-Xent compares them, LARS updates the weights and the warm-up + cosine schedule moves
the learning rate.

Around it:

* precision: ``auto`` is bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing) and fp32
  on CPU; ``fp32``, ``bf16`` and ``fp16`` force one;
* distributed: under torchrun (``RANK``/``WORLD_SIZE`` in the environment) the process group is
  initialised (NCCL on CUDA, gloo on CPU), the model wrapped in DDP, every rank takes its stride of
  the epoch's permutation, the loss gathers every rank's embeddings, and only rank 0 writes files;
* checkpoints (``OUT/checkpoint.pt``) are written atomically (temp file + ``os.replace``) after
  every epoch and on Ctrl-C (at the next step boundary); ``resume`` restores model, optimiser,
  scheduler, scaler, every RNG (torch CPU/CUDA, python, numpy, the augmentation generator, per
  rank) and the position, so an interrupted run continues bit-identically on CPU;
* the loss is checked for finiteness without a host sync per step (a device-side flag, read at
  every log point and before every checkpoint); a non-finite loss raises
  :class:`NonFiniteLossError` and the last good checkpoint is left as it was;
* logs: ``steps.csv`` and ``epochs.csv``, TensorBoard when installed, ``loss.png`` at the end, a
  tqdm bar with loss and images/s, and a kNN monitor on the held-out split every epoch.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastclr.augment.presets import preset_config
from fastclr.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    check_spec,
    load_checkpoint,
    load_model_state,
    model_spec,
    save_checkpoint_atomic,
)
from fastclr.data import ImageData, TensorImageDataset, load_data
from fastclr.loss import NTXentLoss
from fastclr.models import SimCLR, build_model
from fastclr.optim import (
    BASE_LR,
    LARS,
    MOMENTUM,
    WEIGHT_DECAY,
    WarmupCosine,
    lars_param_groups,
    scaled_lr,
    warmup_cosine_schedule,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "build_augmentation",
    "build_model",
    "load_checkpoint",
    "pretrain",
    "resolve_precision",
    "save_checkpoint_atomic",
    "step_rates",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Warm-up never takes more than this fraction of a run: the paper's 10 epochs assume >= 100.
MAX_WARMUP_FRACTION = 0.1


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; training stopped and the last checkpoint was kept."""


class Augmentation(Protocol):
    """What the loop needs from an augmentation: uint8 (N, H, W, 3) → two (N, 3, S, S) views."""

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]: ...


LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class TrainConfig:
    """Everything a pretraining run depends on (the CLI flags map one to one).

    ``batch_size`` is the global batch (all ranks together); ``lr=None`` means the paper's
    ``0.3 × batch / 256``. ``limit_steps`` caps the steps of every epoch (tests, smoke runs);
    ``stop_after_epochs`` ends this process after that many epochs while the schedule still
    spans ``epochs`` (for time-limited jobs that resume).
    """

    arch: str = "resnet18"
    stem: Literal["cifar", "imagenet"] = "cifar"
    width: float = 1.0
    data: str = "digits"
    image_size: int = 32
    batch_size: int = 256
    epochs: int = 100
    lr: float | None = None
    base_lr: float = BASE_LR
    weight_decay: float = WEIGHT_DECAY
    momentum: float = MOMENTUM
    warmup_epochs: float = 10.0
    temperature: float = 0.5
    proj_dim: int = 128
    head_bn: bool = False
    precision: Precision = "auto"
    augment_backend: str = "auto"
    augment_preset: Literal["auto", "cifar", "imagenet", "digits"] = "auto"
    loss_backend: str = "auto"
    out: str = "runs/simclr"
    seed: int = 0
    resume: str | None = None
    compile: bool = False
    num_workers: int = 0
    limit_steps: int | None = None
    stop_after_epochs: int | None = None
    log_every: int = 10
    knn_k: int = 200
    knn_temperature: float = 0.1
    progress: bool = True
    device: str | None = None

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "epochs", "image_size", "log_every", "proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit_steps is not None and self.limit_steps < 1:
            raise ValueError(f"limit_steps must be >= 1, got {self.limit_steps}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if self.augment_preset not in AUGMENT_PRESETS:
            raise ValueError(
                f"augment_preset must be one of {AUGMENT_PRESETS}, got {self.augment_preset!r}"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")


@dataclass
class TrainResult:
    """What :func:`pretrain` returns (on every rank; files exist only from rank 0)."""

    model: SimCLR
    epochs_done: int
    global_step: int
    last_loss: float
    knn_top1: float | None
    out: Path
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# set-up: device, precision, distributed, model, augmentation


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_pref: str | None) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device_pref is None or device_pref.startswith("cuda"))
    if world <= 1:
        return _Dist(), torch.device(device_pref or ("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return _Dist(rank, world, local_rank, created), device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AMP_DTYPES[precision])


AUGMENT_PRESETS = ("auto", "cifar", "imagenet", "digits")


def _preset_for(cfg: TrainConfig) -> str:
    if cfg.augment_preset != "auto":
        return cfg.augment_preset
    if cfg.data == "digits":
        return "digits"
    return "cifar" if cfg.image_size <= 64 else "imagenet"


def build_augmentation(
    preset: str,
    size: int,
    precision: str,
    backend: str,
    seed: int,
    device: torch.device | None = None,
) -> Augmentation:
    """``fastclr.augment.SimCLRAugmentation`` with the paper's CIFAR or ImageNet recipe.

    ``preset="digits"`` is the CIFAR recipe with milder crops and no flips (see
    :mod:`fastclr.augment.presets`).
    """
    from fastclr.augment import SimCLRAugmentation

    if preset not in AUGMENT_PRESETS[1:]:
        raise ValueError(
            f"augmentation preset must be one of {AUGMENT_PRESETS[1:]}, got {preset!r}"
        )
    config = preset_config(preset, size, _AMP_DTYPES[precision])
    aug: Augmentation = SimCLRAugmentation(config, backend=backend, seed=seed, device=device)
    return aug


def _augment_mean_std(aug: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the augmentation applies (reused for clean evaluation inputs)."""
    config = getattr(aug, "config", None)
    mean = getattr(config, "mean", (0.5, 0.5, 0.5))
    std = getattr(config, "std", (0.5, 0.5, 0.5))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --------------------------------------------------------------------------------------------
# RNG state (checkpoint-safe: tensors and plain Python values only, loads with weights_only=True)


def _augment_generator(aug: object, device: torch.device) -> torch.Generator | None:
    """The augmentation's own generator: an attribute, or ``SimCLRAugmentation.generator(dev)``."""
    g = getattr(aug, "generator", None)
    if callable(g) and not isinstance(g, torch.Generator):
        g = g(device)
    return g if isinstance(g, torch.Generator) else None


def _capture_rng(aug: object, device: torch.device) -> dict[str, Any]:
    np_state: Any = np.random.get_state()  # noqa: NPY002 - the legacy global stream is what users seed
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if hasattr(aug, "state_dict") and callable(aug.state_dict):
        state["augment"] = aug.state_dict()
    else:
        g = _augment_generator(aug, device)
        if g is not None:
            state["augment_generator"] = g.get_state()
    return state


def _restore_rng(state: dict[str, Any], aug: object, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "augment" in state:
        if not (hasattr(aug, "load_state_dict") and callable(aug.load_state_dict)):
            raise CheckpointError("the checkpoint holds augmentation state this augmentation lacks")
        aug.load_state_dict(state["augment"])
    elif "augment_generator" in state:
        g = _augment_generator(aug, device)
        if g is None:
            raise CheckpointError(
                "the checkpoint holds an augmentation generator state but the "
                "augmentation has no .generator"
            )
        g.set_state(state["augment_generator"])


# --------------------------------------------------------------------------------------------
# logging


class _Logger:
    """CSV per step and per epoch, TensorBoard when installed; silent off rank 0."""

    STEP_FIELDS = ("epoch", "step", "global_step", "loss", "lr", "images_per_s")
    EPOCH_FIELDS = ("epoch", "loss", "lr", "knn_top1", "images_per_s", "seconds")

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
        if not self.enabled:
            return
        with open(self.epoch_path, "a", newline="") as f:
            csv.DictWriter(f, self.EPOCH_FIELDS).writerow(row)
        if self.tb is not None:
            for k in ("loss", "knn_top1", "images_per_s"):
                if not math.isnan(row[k]):
                    self.tb.add_scalar(f"epoch/{k}", row[k], int(row["epoch"]))

    def close(self) -> None:
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


# --------------------------------------------------------------------------------------------
# Ctrl-C: finish the step, checkpoint, then raise KeyboardInterrupt


class _InterruptFlag:
    """SIGINT sets a flag read at step boundaries; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------------------------
# the step


class _Stepper:
    """One optimisation step on two views; the model-only part that :func:`step_rates` times."""

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
        self.optimizer.zero_grad(set_to_none=True)
        x = torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)
        with _autocast(self.precision, self.device):
            _, z = self.model(x)
        z1, z2 = z.float().chunk(2)
        loss = self.loss_fn(z1, z2)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


def _make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# --------------------------------------------------------------------------------------------
# the loop


def _warmup_steps(cfg: TrainConfig, steps_per_epoch: int, total: int) -> int:
    want = round(cfg.warmup_epochs * steps_per_epoch)
    return min(want, int(total * MAX_WARMUP_FRACTION))


def _unwrap(model: nn.Module) -> nn.Module:
    inner: nn.Module = getattr(model, "_orig_mod", model)
    outer: nn.Module = getattr(inner, "module", inner)
    return outer


def _agree(finite: Tensor, interrupt: bool, ddp: _Dist, device: torch.device) -> bool:
    """Make every rank agree on "finite so far" (in place) and on "stop requested"."""
    if ddp.world_size == 1:
        return interrupt
    flags = torch.tensor([0.0 if bool(finite) else 1.0, float(interrupt)], device=device)
    dist.all_reduce(flags)
    finite.fill_(bool(flags[0] == 0))
    return bool(flags[1] > 0)


def _skip(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        next(it)
    return it


def pretrain(
    cfg: TrainConfig,
    *,
    augment: Augmentation | None = None,
    loss_fn: LossFn | None = None,
    data: ImageData | None = None,
) -> TrainResult:
    """Run SimCLR pretraining as configured; see the module docstring.

    ``augment``, ``loss_fn`` and ``data`` replace the ones built from ``cfg`` (tests, custom
    pipelines). Raises :class:`NonFiniteLossError` on a NaN/Inf loss and
    :class:`CheckpointError` on a checkpoint that cannot be resumed.
    """
    cfg.validate()
    ddp, device = _setup_distributed(cfg.device)
    try:
        return _pretrain(cfg, ddp, device, augment, loss_fn, data)
    finally:
        if ddp.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def _pretrain(
    cfg: TrainConfig,
    ddp: _Dist,
    device: torch.device,
    augment: Augmentation | None,
    loss_fn: LossFn | None,
    data: ImageData | None,
) -> TrainResult:
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick the fastest convs
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' needs a GPU with bf16 support; use fp16")
    if cfg.batch_size % ddp.world_size:
        raise ValueError(
            f"batch size {cfg.batch_size} does not split evenly over {ddp.world_size} ranks"
        )
    per_rank = cfg.batch_size // ddp.world_size
    out = Path(cfg.out)

    random.seed(cfg.seed + ddp.rank)
    np.random.seed(cfg.seed + ddp.rank)  # noqa: NPY002
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank

    if data is None:
        data = load_data(cfg.data, cfg.image_size, cfg.num_workers)
    train_ds = data.train.to(device)
    steps_per_epoch = train_ds.steps_per_epoch(per_rank, ddp.world_size)
    if cfg.limit_steps is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_steps)
    total_steps = steps_per_epoch * cfg.epochs

    model = build_model(cfg.arch, cfg.stem, cfg.width, cfg.proj_dim, cfg.head_bn).to(device)
    if augment is None:
        augment = build_augmentation(
            _preset_for(cfg),
            cfg.image_size,
            precision,
            cfg.augment_backend,
            cfg.seed + ddp.rank,
            device,
        )
    if loss_fn is None:
        loss_fn = NTXentLoss(
            cfg.temperature,
            backend=cfg.loss_backend,  # type: ignore[arg-type]
            gather_distributed=ddp.world_size > 1,
            check_finite=False,  # checked by the loop without a per-step sync
        )
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.batch_size, cfg.base_lr)
    optimizer = LARS(lars_param_groups(model, cfg.weight_decay), lr=lr, momentum=cfg.momentum)
    warmup = _warmup_steps(cfg, steps_per_epoch, total_steps)
    scheduler = warmup_cosine_schedule(optimizer, warmup, total_steps)
    scaler = _make_scaler(precision, device)

    start_epoch, start_step, global_step = 0, 0, 0
    rng_to_restore: dict[str, Any] | None = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        check_spec(ckpt["model_spec"], model_spec(cfg), cfg.resume)
        load_model_state(model, ckpt["model"], f"checkpoint {cfg.resume}")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        # the schedule follows this run's --epochs (a resumed run may be extended)
        scheduler.lr_lambdas[0] = WarmupCosine(warmup, total_steps)
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        global_step = int(ckpt["global_step"])
        rngs = ckpt["rng"]
        if len(rngs) != ddp.world_size:
            warnings.warn(
                f"resuming a {len(rngs)}-rank run on {ddp.world_size} ranks: RNG streams differ",
                RuntimeWarning,
                stacklevel=2,
            )
        rng_to_restore = rngs[ddp.rank % len(rngs)]

    train_model: nn.Module = model
    if ddp.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    stepper = _Stepper(train_model, loss_fn, optimizer, scaler, precision, device)
    if rng_to_restore is not None:
        _restore_rng(rng_to_restore, augment, device)

    logger = _Logger(out, ddp.is_main, append=bool(cfg.resume))
    mean, std = _augment_mean_std(augment)
    heldout = data.heldout
    knn_top1: float | None = None
    history: list[dict[str, float]] = []
    last_loss = float("nan")
    stop_epoch = cfg.epochs
    if cfg.stop_after_epochs is not None:
        stop_epoch = min(cfg.epochs, start_epoch + cfg.stop_after_epochs)

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        rng = _capture_rng(augment, device)
        if ddp.world_size > 1:
            all_rng: list[Any] = [None] * ddp.world_size
            dist.all_gather_object(all_rng, rng)
        else:
            all_rng = [rng]
        if not ddp.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_spec": model_spec(cfg),
            "feature_dim": model.feature_dim,
            "image_size": cfg.image_size,
            "mean": list(mean),
            "std": list(std),
            "config": dataclasses.asdict(cfg),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": all_rng,
            "world_size": ddp.world_size,
        }
        save_checkpoint_atomic(state, out / CHECKPOINT_NAME)

    from tqdm import tqdm

    bar = tqdm(
        total=total_steps,
        initial=global_step,
        disable=not (cfg.progress and ddp.is_main),
        dynamic_ncols=True,
        desc="pretrain",
        file=sys.stderr,
    )
    finite = torch.ones((), dtype=torch.bool, device=device)
    try:
        with _InterruptFlag() as interrupt:
            for epoch in range(start_epoch, stop_epoch):
                model.train()
                t_epoch = time.perf_counter()
                batches = train_ds.batches(
                    per_rank, seed=cfg.seed, epoch=epoch, rank=ddp.rank, world_size=ddp.world_size
                )
                skip = start_step if epoch == start_epoch else 0
                batches = _skip(batches, skip)
                pending: list[tuple[int, int, Tensor, float]] = []
                epoch_losses: list[Tensor] = []
                t_log, n_log = time.perf_counter(), 0
                stop_now = False
                for step in range(skip, steps_per_epoch):
                    images, _ = next(batches)
                    v1, v2 = augment(images)
                    lr_now = optimizer.param_groups[0]["lr"]
                    loss = stepper(v1, v2)
                    scheduler.step()
                    global_step += 1
                    finite &= torch.isfinite(loss)
                    pending.append((step, global_step, loss, lr_now))
                    epoch_losses.append(loss)
                    n_log += 1
                    last_of_epoch = step == steps_per_epoch - 1
                    local_stop = interrupt.requested and ddp.world_size == 1
                    if n_log >= cfg.log_every or last_of_epoch or local_stop:
                        stop_now = _agree(finite, interrupt.requested, ddp, device)
                        if not bool(finite):
                            bad = next(p for p in pending if not math.isfinite(float(p[2])))
                            raise NonFiniteLossError(
                                f"loss became {float(bad[2])} at epoch {epoch} step {bad[0]} "
                                f"(global step {bad[1]}); stopped. The last good checkpoint "
                                f"({out / CHECKPOINT_NAME}) was kept. Lower --lr, or use "
                                "--precision fp32."
                            )
                        dt = time.perf_counter() - t_log
                        ips = n_log * cfg.batch_size / max(dt, 1e-9)
                        values = torch.stack([p[2] for p in pending]).tolist()  # one sync
                        rows = [
                            {
                                "epoch": epoch,
                                "step": s,
                                "global_step": g,
                                "loss": v,
                                "lr": lr_s,
                                "images_per_s": ips,
                            }
                            for (s, g, _, lr_s), v in zip(pending, values, strict=True)
                        ]
                        logger.steps(rows)
                        last_loss = rows[-1]["loss"]
                        bar.update(len(rows))
                        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.0f}")
                        pending.clear()
                        t_log, n_log = time.perf_counter(), 0
                    if (local_stop or (n_log == 0 and stop_now)) and not last_of_epoch:
                        checkpoint(epoch, step + 1)
                        raise KeyboardInterrupt
                seconds = time.perf_counter() - t_epoch
                epoch_loss = float(torch.stack(epoch_losses).mean()) if epoch_losses else math.nan
                if (
                    heldout is not None
                    and heldout.labels is not None
                    and data.train.labels is not None
                ):
                    knn_top1 = _knn_monitor(model, data.train, heldout, mean, std, cfg, device, ddp)
                row = {
                    "epoch": epoch,
                    "loss": epoch_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "knn_top1": math.nan if knn_top1 is None else knn_top1,
                    "images_per_s": (steps_per_epoch - skip) * cfg.batch_size / seconds,
                    "seconds": seconds,
                }
                history.append(row)
                logger.epoch(row)
                if ddp.is_main:
                    knn_txt = "" if knn_top1 is None else f"  kNN top-1 {knn_top1:.2%}"
                    bar.write(
                        f"epoch {epoch + 1}/{cfg.epochs}  loss {epoch_loss:.4f}{knn_txt}  "
                        f"{row['images_per_s']:.0f} img/s  {seconds:.1f}s"
                    )
                checkpoint(epoch + 1, 0)
                if stop_now or (interrupt.requested and ddp.world_size == 1):
                    raise KeyboardInterrupt  # requested during the epoch's last step or kNN
    except KeyboardInterrupt:
        if ddp.is_main:
            bar.write(f"interrupted; checkpoint in {out / CHECKPOINT_NAME} (resume with --resume)")
        raise
    finally:
        bar.close()
        logger.close()
    if ddp.is_main and (out / "steps.csv").exists():
        plot_loss(out / "steps.csv", out / "loss.png")
    return TrainResult(model, stop_epoch, global_step, last_loss, knn_top1, out, history)


def _knn_monitor(
    model: SimCLR,
    train: TensorImageDataset,
    heldout: TensorImageDataset,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    cfg: TrainConfig,
    device: torch.device,
    ddp: _Dist,
) -> float | None:
    """kNN top-1 of the encoder's features, held-out against train (rank 0; others wait)."""
    from fastclr.evaluate import extract_features, knn_accuracy

    acc: float | None = None
    if ddp.is_main:
        enc = _unwrap(model)
        assert isinstance(enc, SimCLR)
        f_tr = extract_features(enc.encoder, train, mean, std, cfg.image_size, device)
        f_ho = extract_features(enc.encoder, heldout, mean, std, cfg.image_size, device)
        assert train.labels is not None and heldout.labels is not None
        acc = knn_accuracy(
            f_tr,
            train.labels.to(device),
            f_ho,
            heldout.labels.to(device),
            k=cfg.knn_k,
            temperature=cfg.knn_temperature,
        )
    if ddp.world_size > 1:
        dist.barrier()
    return acc


# --------------------------------------------------------------------------------------------
# throughput: end-to-end step against the model-only step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rates(
    arch: str = "resnet18",
    stem: Literal["cifar", "imagenet"] = "cifar",
    batch_size: int = 256,
    image_size: int = 32,
    source_size: int | None = None,
    steps: int = 20,
    warmup_steps: int = 5,
    precision: str = "auto",
    device: str | torch.device | None = None,
    augment_backend: str = "auto",
    loss_backend: str = "auto",
    temperature: float = 0.5,
    compile: bool = False,
    width: float = 1.0,
    augment: Augmentation | None = None,
    seed: int = 0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Pretraining images/s end to end (augment + encoder + loss + LARS) and model-only, one run.

    Both use the same model, optimiser and loss; "model-only" feeds pre-augmented views of the
    same shape and dtype, so ``ratio = end_to_end / model_only`` is the fraction of the model's
    step rate the full pipeline keeps (target ≥ 0.9 on a GPU). Images are counted once per source
    image (each gives two views). Also reports the augmentation alone. ``steps`` are split over
    ``rounds`` interleaved rounds (model-only, end-to-end, augment-only) and each rate is the
    median over rounds.

    Returns a dict with ``end_to_end_images_per_s``, ``model_only_images_per_s``,
    ``augment_only_images_per_s``, ``ratio`` and the settings used.
    """
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    prec = resolve_precision(precision, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)
    model = build_model(arch, stem, width).to(dev)
    if augment is None:
        preset = "cifar" if image_size <= 64 else "imagenet"
        augment = build_augmentation(preset, image_size, prec, augment_backend, seed, dev)
    loss_fn = NTXentLoss(temperature, backend=loss_backend, check_finite=False)  # type: ignore[arg-type]
    optimizer = LARS(lars_param_groups(model), lr=scaled_lr(batch_size))
    train_model: nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]
    stepper = _Stepper(train_model, loss_fn, optimizer, _make_scaler(prec, dev), prec, dev)
    src = source_size or image_size
    g = torch.Generator(device=dev).manual_seed(seed)
    images = torch.randint(
        0, 256, (batch_size, src, src, 3), generator=g, device=dev, dtype=torch.uint8
    )
    v1, v2 = augment(images)

    def timed(fn: Callable[[], object], n: int) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
        return n * batch_size / (time.perf_counter() - t0)

    model_step: Callable[[], object] = lambda: stepper(v1, v2)  # noqa: E731
    full_step: Callable[[], object] = lambda: stepper(*augment(images))  # noqa: E731
    aug_step: Callable[[], object] = lambda: augment(images)  # noqa: E731
    for fn in (model_step, full_step, aug_step):
        timed(fn, warmup_steps)
    # Interleaved rounds, median of each: drift (clocks, other jobs) hits both rates alike.
    rates: dict[str, list[float]] = {"model": [], "full": [], "aug": []}
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        rates["model"].append(timed(model_step, per_round))
        rates["full"].append(timed(full_step, per_round))
        rates["aug"].append(timed(aug_step, per_round))
    model_only, end_to_end, augment_only = (
        statistics.median(rates[k]) for k in ("model", "full", "aug")
    )
    return {
        "end_to_end_images_per_s": end_to_end,
        "model_only_images_per_s": model_only,
        "augment_only_images_per_s": augment_only,
        "ratio": end_to_end / model_only,
        "arch": arch,
        "stem": stem,
        "width": width,
        "batch_size": batch_size,
        "image_size": image_size,
        "source_size": src,
        "precision": prec,
        "device": str(dev),
        "compile": compile,
        "steps": steps,
        "rounds": rounds,
        "view_dtype": str(v1.dtype),
    }
