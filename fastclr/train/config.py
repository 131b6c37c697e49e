"""The configuration of a pretraining run: :class:`TrainConfig`, the one source of defaults.

Every field carries :func:`meta` in its metadata, which records its command-line help, its choices
(for closed sets), what an unset (``None``) value means, and the defaults ``fastclr pretrain``
uses instead of the dataclass one, by dataset: ``digits=`` for the embedded digits demo and
``other_data=`` for everything else. ``fastclr pretrain`` is generated from these fields
(:mod:`fastclr.cli`), so a default is written once, here. Rules that derive one setting from
another (the CIFAR recipe for small images) live here too, so that every user of them agrees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from fastclr.augment import BACKENDS as AUGMENT_BACKENDS
from fastclr.augment.presets import PRESETS
from fastclr.evaluate import KNN_K, KNN_TEMPERATURE
from fastclr.loss import BackendName
from fastclr.models import ARCHS, STEMS
from fastclr.optim import BASE_LR, MOMENTUM, WEIGHT_DECAY

__all__ = [
    "AUGMENT_PRESETS",
    "CIFAR_MAX_SIZE",
    "LOADERS",
    "MAX_WARMUP_FRACTION",
    "PER_INVOCATION",
    "PRECISIONS",
    "RESUME_MAY_CHANGE",
    "Precision",
    "TrainConfig",
    "cli_defaults",
    "meta",
    "recipe_for_size",
    "resumed_config",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENT_PRESETS = ("auto", *PRESETS)
# Data loaders (fastclr.data.select): auto, the in-memory tensor, DataLoader workers, DALI.
LOADERS = ("auto", "memory", "stream", "dali")
Stem = Literal["auto", "cifar", "imagenet"]
# Warm-up never takes more than this fraction of a run: the paper's 10 epochs assume >= 100.
MAX_WARMUP_FRACTION = 0.1
# Images up to this size get the CIFAR recipe (3×3 stem without max-pool, CIFAR augmentation);
# larger ones the ImageNet recipe.
CIFAR_MAX_SIZE = 64
_UNSET: Any = object()
#: Settings a resumed run may change without losing exactness: the length of the schedule (to
#: extend a run), how and where it computes (workers, threads, device, compilation, the loss
#: implementation, numerically equal up to rounding) and what it reports. Every other setting
#: shapes the batches, the model or the optimisation, so a resume must keep the saved value.
RESUME_MAY_CHANGE = frozenset(
    {"epochs", "num_workers", "threads", "device", "compile", "loss_backend", "log_every",
     "progress", "knn_k", "knn_temperature"}
)  # fmt: skip
#: Settings of this invocation only, never taken from a checkpoint.
PER_INVOCATION = frozenset({"out", "resume", "overwrite", "stop_after_epochs"})


def recipe_for_size(image_size: int) -> Literal["cifar", "imagenet"]:
    """``"cifar"`` for images of at most :data:`CIFAR_MAX_SIZE` px, else ``"imagenet"``."""
    return "cifar" if image_size <= CIFAR_MAX_SIZE else "imagenet"


def meta(
    help: str,
    *,
    choices: Sequence[str] | None = None,
    unset: str | None = None,
    digits: Any = _UNSET,
    other_data: Any = _UNSET,
) -> dict[str, Any]:
    """The metadata of a :class:`TrainConfig` field: how the command line presents it.

    Args:
        help: one line for ``--help`` (without the default; that is appended from here).
        choices: the accepted values, for a closed set.
        unset: what ``None`` means, for fields that may be left unset.
        digits: the command line's default for ``--data digits``, where it differs.
        other_data: the command line's default for any other ``--data``, where it differs.
    """
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if unset is not None:
        meta["unset"] = unset
    if digits is not _UNSET:
        meta["digits"] = digits
    if other_data is not _UNSET:
        meta["other_data"] = other_data
    return meta


# The digits demo (1,438 training images, 8×8 originals stored at 32 px) uses 16-px views of a
# quarter-width ResNet-18, which keeps the whole run near a minute on two CPU cores. The paper's
# LARS rate (0.3 × 128/256) moves the weights by ~0.005% a step, made for thousands of steps;
# the ~165-step demo uses lr 6 so that the loss visibly falls. One intra-op thread: on ops this
# small OpenMP barriers cost more than the work, and on a shared (oversubscribed) CPU two threads
# made each step 5-10× slower in our measurements.


@dataclass
class TrainConfig:
    """Everything a pretraining run depends on (``fastclr pretrain`` has one flag per field).

    ``batch_size`` is the global batch (all ranks together). ``batch_size``, ``lr``,
    ``warmup_epochs`` and ``knn_k`` left at ``None``, and ``augment_preset="auto"``, are chosen
    by the recipe (:mod:`fastclr.train.recipe`: 256 or smaller for a small data set, the
    paper's square-root or linear lr rule, 10% warm-up, a preset from the view size, k from the
    class sizes), which the run prints with its reasons.
    ``limit_steps`` caps the steps of every epoch (tests, smoke runs);
    ``stop_after_epochs`` ends this process after that many epochs while the schedule still
    spans ``epochs`` (for time-limited jobs that resume). ``stem="auto"`` is resolved when the
    config is made: ``cifar`` for images of at most 64 px, else ``imagenet``.
    """

    arch: str = field(
        default="resnet18", metadata=meta("encoder architecture", choices=sorted(ARCHS))
    )
    stem: Stem = field(
        default="cifar",
        metadata=meta(
            "encoder stem; auto: cifar for images <= 64 px, else imagenet",
            choices=("auto", *STEMS),
            digits="auto",
            other_data="auto",
        ),
    )
    width: float = field(
        default=1.0, metadata=meta("channel multiplier of the encoder", digits=0.25)
    )
    data: str = field(default="digits", metadata=meta("'digits' (embedded) or an image folder"))
    image_size: int = field(
        default=32, metadata=meta("size of the training views in px", digits=16, other_data=224)
    )
    batch_size: int | None = field(
        default=None,
        metadata=meta(
            "global batch (all ranks together)",
            unset="256, halved (down to 32) while an epoch would have fewer than 8 steps "
            "(fastclr.train.recipe)",
            digits=128,
        ),
    )
    epochs: int = field(default=100, metadata=meta("epochs of the schedule", digits=15))
    lr: float | None = field(
        default=None,
        metadata=meta(
            "peak learning rate",
            unset="the paper's rule: 0.3 × batch / 256 when batch >= 4096 and epochs >= 100, "
            "else 0.075 × √batch (fastclr.train.recipe)",
            digits=6.0,
        ),
    )
    base_lr: float = field(
        default=BASE_LR,
        metadata=meta("learning rate per 256 images of the linear rule (when it applies)"),
    )
    weight_decay: float = field(default=WEIGHT_DECAY, metadata=meta("LARS weight decay"))
    momentum: float = field(default=MOMENTUM, metadata=meta("LARS momentum"))
    warmup_epochs: float | None = field(
        default=None,
        metadata=meta(
            "linear warm-up epochs (at most 10% of the run)",
            unset="10% of the run, at most 10 epochs",
        ),
    )
    temperature: float = field(default=0.5, metadata=meta("NT-Xent temperature"))
    proj_dim: int = field(default=128, metadata=meta("output size of the projection head"))
    # BatchNorm after the head's hidden layer, as SimCLR's own implementation and solo-learn's
    # projector have it. On the 28-px digits folder (3 seeds, 40 epochs, bench/results/
    # quality.md) it gave kNN 97.49 ± 0.28% against 96.66 ± 0.00% without, linear 98.70 against
    # 98.61. The hand-tuned demo recipe was measured without it and keeps it off.
    head_bn: bool = field(
        default=True,
        metadata=meta("BatchNorm in the projection head", digits=False),
    )
    precision: Precision = field(
        default="auto",
        metadata=meta("auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU", choices=PRECISIONS),
    )
    augment_backend: str = field(
        default="auto", metadata=meta("augmentation implementation", choices=AUGMENT_BACKENDS)
    )
    augment_preset: str = field(
        default="auto",
        metadata=meta(
            "augmentation recipe; auto: digits for --data digits, else by view size: small "
            "(< 32 px: crops >= 30%), cifar (<= 64 px), imagenet; '-grey' (no flips) when the "
            "images are grayscale",
            choices=AUGMENT_PRESETS,
        ),
    )
    loss_backend: BackendName = field(
        default="auto", metadata=meta("NT-Xent implementation", choices=get_args(BackendName))
    )
    out: str = field(
        default="runs/simclr", metadata=meta("run folder (checkpoint, CSV logs, loss plot)")
    )
    seed: int = field(default=0, metadata=meta("random seed (weights, data order, augmentation)"))
    resume: str | None = field(
        default=None,
        metadata=meta(
            "checkpoint file or run folder to resume (alone: the --out folder); options not "
            "given are the checkpoint's",
            unset="start afresh",
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=meta("replace a run already in --out (deletes its checkpoint and logs)"),
    )
    compile: bool = field(default=False, metadata=meta("torch.compile the model"))
    num_workers: int | None = field(
        default=None,
        metadata=meta(
            "image-decoding worker processes (0: inline)",
            unset="auto: min(8, usable CPUs per local rank - 1) for the stream loader, 0 for "
            "memory and dali",
        ),
    )
    loader: Literal["auto", "memory", "stream", "dali"] = field(
        default="auto",
        metadata=meta(
            "memory: decode the folder once into RAM; stream: decode each batch in "
            "--num-workers processes; dali: NVIDIA DALI (nvJPEG on CUDA); auto: memory for "
            "digits and small folders of small square images, else dali on CUDA when "
            "installed, else stream",
            choices=LOADERS,
        ),
    )
    limit_steps: int | None = field(
        default=None, metadata=meta("cap on the steps of every epoch", unset="no cap")
    )
    stop_after_epochs: int | None = field(
        default=None,
        metadata=meta("end this run after N epochs (resume later)", unset="run to the end"),
    )
    log_every: int = field(
        default=10, metadata=meta("steps between log rows (and loss finiteness checks)")
    )
    knn_k: int | None = field(
        default=None,
        metadata=meta(
            "neighbours of the kNN monitor",
            unset=f"15% of the smallest class's training images, at most {KNN_K}",
        ),
    )
    knn_temperature: float = field(
        default=KNN_TEMPERATURE, metadata=meta("temperature of the kNN monitor's vote")
    )
    progress: bool = field(default=True, metadata=meta("progress bar"))
    device: str | None = field(
        default=None, metadata=meta("cpu, cuda, cuda:1, ...", unset="cuda if present, else cpu")
    )
    threads: int | None = field(
        default=None,
        metadata=meta("CPU intra-op threads (0: torch's choice)", unset="torch's choice", digits=1),
    )

    def __post_init__(self) -> None:
        if self.stem == "auto":
            self.stem = recipe_for_size(self.image_size)

    def batch(self) -> int:
        """The global batch; the recipe resolves an unset one before a run builds anything."""
        if self.batch_size is None:
            raise RuntimeError("the batch size is not resolved yet (fastclr.train.recipe)")
        return self.batch_size

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first flag whose value cannot be used
        (:func:`fastclr.train.validation.check_config`)."""
        from fastclr.train.validation import check_config

        check_config(self)


def cli_defaults(data: str) -> dict[str, Any]:
    """The default of every field for ``fastclr pretrain --data <data>``."""
    key = "digits" if data == "digits" else "other_data"
    return {f.name: f.metadata.get(key, f.default) for f in fields(TrainConfig)}


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "auto" if name == "num_workers" else "unset"
    return str(value)


def _same(name: str, a: Any, b: Any) -> bool:
    if a == b:
        return True
    if name == "data" and isinstance(a, str) and isinstance(b, str) and "digits" not in (a, b):
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def resumed_config(
    given: dict[str, Any], saved: dict[str, Any], checkpoint: str
) -> tuple[TrainConfig, list[str]]:
    """The configuration of a resumed run and the changes it makes to the saved one.

    Every setting not in ``given`` (the options passed explicitly) is the checkpoint's ``saved``
    one (the command line's default where an older checkpoint lacks it), except those in
    :data:`PER_INVOCATION`. A given setting that differs from the saved one is refused with a
    ``ValueError`` naming the flag and both values, unless it is in :data:`RESUME_MAY_CHANGE`;
    those are returned as ``--flag old → new`` notes.
    """
    names = {f.name for f in fields(TrainConfig)}
    inherited = {k: v for k, v in saved.items() if k in names and k not in PER_INVOCATION}
    base = cli_defaults(str(inherited.get("data", given.get("data", TrainConfig.data))))
    cfg = TrainConfig(**{**base, **inherited, **given})
    notes = []
    for name in sorted(given):
        if name in PER_INVOCATION or name not in inherited:
            continue
        old, new = inherited[name], getattr(cfg, name)
        if _same(name, old, new):
            continue
        flag = "--" + name.replace("_", "-")
        if name in RESUME_MAY_CHANGE:
            notes.append(f"{flag} {_shown(name, old)} → {_shown(name, new)}")
            continue
        raise ValueError(
            f"{flag} {_shown(name, new)} differs from the {_shown(name, old)} that checkpoint "
            f"{checkpoint} was trained with; an exact resume keeps it: leave {flag} out (the "
            "saved value is used), or start a new run with --out elsewhere"
        )
    return cfg, notes
