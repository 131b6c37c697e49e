"""The configuration of a pretraining run: :class:`TrainConfig`, what the user asked for.

A :class:`TrainConfig` holds the user's choices and nothing derived: one set of defaults that
``pretrain(TrainConfig())`` and ``fastclr pretrain`` share. A field left at ``None`` (or
``"auto"``) is decided by a stated rule when the run is planned (:mod:`fastclr.train.plan`:
the embedded digits' demo recipe, the batch, learning-rate and warm-up rules of the paper, the
preset from the view size and colour, the stem from the view size...), and the plan prints
each value with its reason. Every field is declared with :func:`fastclr.options.option`, so
``fastclr pretrain``'s flags and the checks of :meth:`TrainConfig.validate` come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastclr import options
from fastclr.augment import BACKENDS as AUGMENT_BACKENDS
from fastclr.augment.presets import PRESETS
from fastclr.data.select import LOADERS
from fastclr.errors import UsageError
from fastclr.loss import BACKENDS as LOSS_BACKENDS
from fastclr.loss import BackendName
from fastclr.models import ARCHS, STEMS
from fastclr.optim import BASE_LR, MOMENTUM, WEIGHT_DECAY
from fastclr.options import check_options, option, resumed_options
from fastclr.train.precision import PRECISIONS, Precision

__all__ = [
    "AUGMENT_IN",
    "AUGMENT_PRESETS",
    "PER_INVOCATION",
    "RESUME_MAY_CHANGE",
    "TrainConfig",
    "resumed_config",
]

AUGMENT_PRESETS = ("auto", *PRESETS)
#: ``--views-forward``: both views in one encoder forward, or one forward per view.
VIEWS_FORWARD = ("joint", "separate")
#: ``--augment-in``: where the views are finished (:mod:`fastclr.train.plan` decides ``auto``).
AUGMENT_IN = ("auto", "main", "workers")
Stem = Literal["auto", "cifar", "imagenet"]
Loader = Literal["auto", "memory", "stream", "dali"]
#: Settings a resumed run may change without losing exactness: the length of the schedule (to
#: extend a run), how and where it computes (workers, threads, device, compilation, the loss
#: implementation, numerically equal up to rounding) and what it reports. Every other setting
#: shapes the batches, the model or the optimisation, so a resume must keep the saved value.
RESUME_MAY_CHANGE = frozenset(
    {
        *("epochs", "num_workers", "threads", "device", "compile", "loss_backend"),
        *("log_every", "progress", "knn_k", "knn_temperature"),
    }
)
#: Settings of this invocation only, never taken from a checkpoint.
PER_INVOCATION = frozenset(
    {"out", "resume", "overwrite", "stop_after_epochs", "allow_legacy_checkpoint", "data_changed"}
)


def chunk_value(text: str) -> int | str:
    """``--chunk-size``: a whole number >= 1, or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or str(value) != text.strip():
        raise ValueError("a whole number >= 1 or auto")
    return value


@dataclass
class TrainConfig:
    """Everything a pretraining run depends on (``fastclr pretrain`` has one flag per field).

    ``None`` (and ``"auto"``) means "decided by the run plan's rule" (:mod:`fastclr.train.plan`),
    which the run prints with its reason. ``batch_size`` is the global batch (all ranks
    together). ``limit_steps`` caps the steps of every epoch (tests, smoke runs);
    ``stop_after_epochs`` ends this process after that many epochs while the schedule still
    spans ``epochs`` (for time-limited jobs that resume).
    """

    arch: str = option("resnet18", "encoder architecture", choices=sorted(ARCHS))
    stem: Stem = option(
        "auto",
        "encoder stem; auto: cifar for views <= 64 px, else imagenet",
        choices=("auto", *STEMS),
    )
    width: float | None = option(
        None,
        "channel multiplier of the encoder",
        unset="0.25 for the embedded digits' demo, else 1.0",
        positive=True,
    )
    data: str = option("digits", "'digits' (embedded) or an image folder")
    image_size: int | None = option(
        None,
        "size of the training views in px",
        unset="16 for the embedded digits' demo, else 224, or the images' median shorter "
        "side when smaller (at least 16)",
        at_least=1,
    )
    batch_size: int | None = option(
        None,
        "global batch (all ranks together)",
        unset="128 for the digits demo; else 256, halved (down to 32) while an epoch would "
        "have fewer than 8 steps (fastclr.train.recipe)",
        at_least=2,
        why="with one image per batch NT-Xent has no negatives and its loss is always 0",
    )
    epochs: int | None = option(
        None, "epochs of the schedule", unset="15 for the digits demo, else 100", at_least=1
    )
    lr: float | None = option(
        None,
        "peak learning rate",
        unset="6.0 for the digits demo; else the paper's rule: base-lr × batch / 256 when "
        "batch >= 4096 and epochs >= 100, else 0.075 × √batch (fastclr.train.recipe)",
        positive=True,
    )
    base_lr: float = option(
        BASE_LR, "learning rate per 256 images of the linear rule (when it applies)", positive=True
    )
    weight_decay: float = option(WEIGHT_DECAY, "LARS weight decay", non_negative=True)
    momentum: float = option(MOMENTUM, "LARS momentum", non_negative=True, below=1.0)
    warmup_epochs: float | None = option(
        None,
        "linear warm-up epochs (at most 10% of the run)",
        unset="10% of the run, at most 10 epochs",
        non_negative=True,
    )
    temperature: float = option(0.5, "NT-Xent temperature", positive=True)
    proj_dim: int = option(128, "output size of the projection head", at_least=1)
    # BatchNorm after the head's hidden layer, as SimCLR's own implementation and solo-learn's
    # projector have it. On the 28-px digits folder (3 seeds, 40 epochs, bench/results/
    # quality.md) it gave kNN 97.49 ± 0.28% against 96.66 ± 0.00% without, linear 98.70 against
    # 98.61. The hand-tuned demo recipe was measured without it and keeps it off.
    head_bn: bool | None = option(
        None,
        "BatchNorm in the projection head",
        unset="off for the digits demo (tuned without it), else on",
    )
    precision: Precision = option(
        "auto", "auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU", choices=PRECISIONS
    )
    augment_backend: str = option("auto", "augmentation implementation", choices=AUGMENT_BACKENDS)
    augment_in: str = option(
        "auto",
        "where the views are finished: workers: the stream loader's decode workers crop, "
        "resize and augment each view in one native pass from the decoded image; main: the "
        "workers crop and resize, the training process augments; auto: workers with --loader "
        "stream, the native augmentation backend and a CPU device, else main",
        choices=AUGMENT_IN,
    )
    augment_preset: str = option(
        "auto",
        "augmentation recipe; auto: digits for --data digits, else by view size: small "
        "(< 32 px: crops >= 30%), cifar (<= 64 px), imagenet; '-grey' (no flips) when the "
        "images are grayscale",
        choices=AUGMENT_PRESETS,
    )
    loss_backend: BackendName = option(
        "auto", "NT-Xent implementation", choices=LOSS_BACKENDS.names
    )
    out: str = option("runs/simclr", "run folder (checkpoint, CSV logs, loss plot)")
    seed: int = option(
        0, "random seed (weights, data order, augmentation)", at_least=0, at_most=2**32 - 1
    )
    resume: str | None = option(
        None,
        "checkpoint file or run folder to resume (alone: the --out folder); options not "
        "given are the checkpoint's",
        unset="start afresh",
    )
    overwrite: bool = option(
        False,
        "replace a run already in --out (deletes the files it wrote there, and nothing else)",
    )
    allow_legacy_checkpoint: bool = options.legacy_option()
    data_changed: Literal["refuse", "ok"] = option(
        "refuse",
        "on --resume, when the data differ from the checkpoint's (files added, removed or "
        "renamed, or the folder moved): refuse, or ok: resume on the data as they are now, the "
        "schedule adapted to the new epoch length (the run says how)",
        choices=("refuse", "ok"),
    )
    compile: bool = option(False, "torch.compile the model")
    num_workers: int | None = options.num_workers_option()
    loader: Loader = option(
        "auto",
        "memory: decode the folder once into RAM; stream: decode each batch in "
        "--num-workers processes; dali: NVIDIA DALI (nvJPEG on CUDA); auto: memory for "
        "digits and small folders of small square images, else dali on CUDA when "
        "installed, else stream",
        choices=LOADERS,
    )
    chunk_size: int | str | None = option(
        None,
        "images per encoder forward on each rank: the loss still sees the whole --batch-size "
        "(exact large batches by gradient caching, about a third more compute); auto: the "
        "largest chunk whose expected memory fits (90% of the GPU's free memory, or half the "
        "CPU's available memory)",
        unset="the rank's whole batch in one forward",
        parse=chunk_value,
    )
    views_forward: str | None = option(
        None,
        "how the two views go through the encoder: joint (one forward of both; BatchNorm "
        "normalises over all 2N views) or separate (one forward per view; BatchNorm statistics "
        "per view, as in lightly's examples); not with --chunk-size",
        unset="joint (SimCLR's own code forwards both views as one batch; separate measured "
        "up to 1.13x faster on the CPU in fp32 with the same quality)",
        choices=VIEWS_FORWARD,
    )
    limit_steps: int | None = option(
        None, "cap on the steps of every epoch", unset="no cap", at_least=1
    )
    stop_after_epochs: int | None = option(
        None, "end this run after N epochs (resume later)", unset="run to the end", at_least=1
    )
    log_every: int = option(10, "steps between log rows (and loss finiteness checks)", at_least=1)
    knn_k: int | None = options.knn_k_option()
    knn_temperature: float = options.knn_temperature_option()
    progress: bool = options.progress_option()
    device: str | None = options.device_option()
    threads: int | None = option(
        None,
        "CPU intra-op threads (0: torch's choice)",
        unset="1 for the digits demo, else torch's choice",
        at_least=0,
    )

    def validate(self) -> None:
        """Raise :class:`~fastclr.errors.UsageError` naming the first flag whose value cannot
        be used (the rules are the fields' :func:`~fastclr.options.option` metadata)."""
        check_options(self)
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other: pass one of them")


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "auto" if name == "num_workers" else "unset"
    return str(value)


#: The run plan's name of a decision that a config field leaves to a rule, where they differ.
_DECISION_OF = {"batch_size": "batch", "augment_preset": "preset", "warmup_epochs": "warmup"}


def _decided(plan: dict[str, Any] | None, name: str, unset: Any) -> Any:
    """The value the saved plan decided for field ``name`` (``unset`` if it has none).

    The warm-up is stored in steps, not the field's epochs: it is not compared.
    """
    if plan is None or name == "warmup_epochs":
        return unset
    entry = plan.get(_DECISION_OF.get(name, name))
    return entry["value"] if isinstance(entry, dict) and "value" in entry else unset


def resumed_config(
    given: dict[str, Any],
    saved: dict[str, Any],
    checkpoint: str,
    plan: dict[str, Any] | None = None,
) -> tuple[TrainConfig, list[str]]:
    """The configuration of a resumed run and the changes it makes to the saved one.

    Every setting not in ``given`` (the options passed explicitly) is the checkpoint's ``saved``
    one (the default where an older checkpoint lacks it), except those in
    :data:`PER_INVOCATION`. A given setting that differs from the saved one is refused with a
    :class:`~fastclr.errors.UsageError` naming the flag and both values, unless it is in
    :data:`RESUME_MAY_CHANGE`; those are returned as ``--flag old → new`` notes. A setting the
    run left to a rule is compared with the value the rule gave, from the checkpoint's saved
    ``plan``.
    """
    return resumed_options(
        TrainConfig,
        given,
        saved,
        checkpoint,
        plan,
        per_invocation=PER_INVOCATION,
        may_change=lambda name, cfg: (
            name in RESUME_MAY_CHANGE or (name == "data" and cfg.data_changed == "ok")
        ),
        decided=lambda name, old: _decided(plan, name, old) if old in (None, "auto") else old,
        shown=_shown,
    )
