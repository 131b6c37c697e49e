"""The options of ``fastclr finetune``: :class:`FinetuneConfig`, what the user asked for.

Every field is declared with :func:`fastclr.options.option`, so the command line is generated
from it and :meth:`FinetuneConfig.validate` checks it by the same metadata. ``None`` means
"decided by the fine-tuning plan's rule" (:mod:`fastclr.finetune.plan`), which the run prints
with its reason. A resumed run takes every option not given from its checkpoint
(:func:`resumed_finetune_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastclr import options
from fastclr.errors import UsageError
from fastclr.finetune.recipe import LARS_LR, OPTIMIZERS
from fastclr.models import ARCHS
from fastclr.options import check_options, option, resumed_options
from fastclr.train.precision import PRECISIONS, Precision

__all__ = [
    "FINETUNE_LOADERS",
    "PER_INVOCATION",
    "RESUME_MAY_CHANGE",
    "FinetuneConfig",
    "resumed_finetune_config",
]

#: Loaders of the labelled images (DALI, pretraining's GPU decoder, is not offered: the labelled
#: subset is small, and streaming in DataLoader workers serves every device).
FINETUNE_LOADERS = ("auto", "memory", "stream")
Loader = Literal["auto", "memory", "stream"]
#: Settings a resumed fine-tuning run may change: its length and how and where it computes.
RESUME_MAY_CHANGE = frozenset(
    {"epochs", "num_workers", "threads", "device", "log_every", "progress"}
)
#: Settings of this invocation only, never taken from a checkpoint.
PER_INVOCATION = frozenset(
    {"out", "resume", "overwrite", "stop_after_epochs", "allow_legacy_checkpoint"}
)


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on (``fastclr finetune`` has one flag per field).

    ``batch_size`` is the global batch (all ranks together); ``limit_steps`` caps the steps of
    every epoch and ``stop_after_epochs`` ends this process early while the schedule still spans
    ``epochs`` (tests, time-limited jobs that resume).
    """

    checkpoint: str | None = option(
        None,
        "the pretraining run (folder or checkpoint.pt) whose network is fine-tuned; with "
        "--from-scratch only its architecture and input size are used",
        unset="required unless --resume",
    )
    data: str = option(
        "digits",
        "'digits' (embedded) or a labelled image folder: ROOT/<class>/... (10% of each "
        "class held out for validation) or ROOT/train + ROOT/val",
    )
    labels: str | None = option(
        None,
        "the labelled images: P% of the training images (1%, 10%, 100%), drawn "
        "class-balanced from --seed, or N-per-class",
        unset="required unless --subset or --resume",
    )
    subset: str | None = option(
        None,
        "a labelled.txt of an earlier run (or a file in its format): exactly those images "
        "are labelled, instead of a draw by --labels",
        unset="drawn by --labels and --seed",
    )
    arch: str | None = options.expected_arch_option(ARCHS)
    from_scratch: bool = option(
        False,
        "train the same network from random weights with the same recipe and labels (the "
        "supervised baseline a fine-tuning result is shown beside)",
    )
    from_head_layer: int = option(
        0,
        "fine-tune from the K-th layer of the projection head (0: the encoder's output; "
        "SimCLRv2 found 1 better with 1% of the labels)",
        at_least=0,
    )
    seed: int = option(
        0, "seed of the labelled draw, the new weights, the data order and the crops", at_least=0
    )
    epochs: int | None = option(
        None,
        "epochs over the labelled images",
        unset="the paper's 60 at 1%, 30 at 10%, raised to its number of steps (188 at 1%, "
        "939 at 10%) on small folders (fastclr.finetune.recipe)",
        at_least=1,
    )
    batch_size: int | None = option(
        None,
        "global batch (all ranks together)",
        unset="the largest power of two <= 256 giving >= 8 steps an epoch, at least 16",
        at_least=1,
    )
    lr: float | None = option(
        None,
        "peak learning rate (cosine decay to 0, no warm-up)",
        unset="0.0125 × √batch, the paper's 0.8 at its batch 4096 (fastclr.finetune.recipe)",
        positive=True,
    )
    crop_min: float | None = option(
        None,
        "smallest crop as a fraction of the image's area (crops of crop-min to all of it)",
        unset="the pretraining preset's (0.08 at 224 px), 0.8 under 32 px",
        positive=True,
        at_most=1,
        why="a fraction of the image's area",
    )
    optimizer: str | None = option(
        None,
        "lars: LARS (trust ratio 0.001, --lars-lr) on the conv and linear weights, momentum "
        "SGD at --lr on the classifier, biases and BatchNorm; sgd: the paper's Nesterov SGD at "
        "--lr on all of them (B.5)",
        choices=OPTIMIZERS,
        unset="lars (the paper's sgd did worse on the digits: fastclr.finetune.recipe)",
    )
    lars_lr: float | None = option(
        None,
        "LARS's learning rate for the conv and linear weights (--optimizer lars)",
        unset=f"{LARS_LR:g}: a step of at most 0.1% of a layer's norm before momentum",
        positive=True,
    )
    momentum: float = option(
        0.9, "momentum (Nesterov with --optimizer sgd; paper, B.5)", non_negative=True, below=1.0
    )
    weight_decay: float = option(
        0.0, "weight decay (paper, B.5: no regularisation)", non_negative=True
    )
    precision: Precision = option(
        "auto", "auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU", choices=PRECISIONS
    )
    loader: Loader = option(
        "auto",
        "memory: decode the labelled images once; stream: crop them from the files in "
        "--num-workers processes every epoch; auto: memory for small square images that fit "
        "in 1 GiB, else stream",
        choices=FINETUNE_LOADERS,
    )
    num_workers: int | None = options.num_workers_option()
    out: str = option(
        "runs/finetune", "run folder (checkpoint, labelled.txt, CSV logs, curves.png)"
    )
    resume: str | None = option(
        None,
        "checkpoint file or run folder to resume (alone: the --out folder); options not "
        "given are the checkpoint's",
        unset="start afresh",
    )
    overwrite: bool = option(False, "replace a run already in --out (deletes the files it wrote)")
    allow_legacy_checkpoint: bool = options.legacy_option()
    limit_steps: int | None = option(
        None, "cap on the steps of every epoch", unset="no cap", at_least=1
    )
    stop_after_epochs: int | None = option(
        None, "end this run after N epochs (resume later)", unset="run to the end", at_least=1
    )
    log_every: int = option(10, "steps between log rows (and loss finiteness checks)", at_least=1)
    progress: bool = options.progress_option()
    device: str | None = options.device_option()
    threads: int | None = option(
        None, "CPU intra-op threads (0: torch's choice)", unset="torch's choice", at_least=0
    )

    def validate(self) -> None:
        """Raise :class:`~fastclr.errors.UsageError` naming the first flag that cannot be used."""
        check_options(self)
        if self.resume and self.overwrite:
            raise UsageError("--resume and --overwrite contradict each other: pass one of them")
        if self.resume:
            return
        if self.checkpoint is None:
            raise UsageError(
                "--checkpoint is required: the pretraining run (folder or checkpoint.pt) to "
                "fine-tune"
            )
        if self.labels is None and self.subset is None:
            raise UsageError(
                "--labels is required: how many training images are labelled, e.g. 1%, 10% "
                "or 4-per-class (or --subset FILE, a labelled.txt of an earlier run)"
            )
        if self.labels is not None and self.subset is not None:
            raise UsageError(
                f"--labels {self.labels} and --subset {self.subset} both say which images are "
                "labelled: pass one of them"
            )


def resumed_finetune_config(
    given: dict[str, Any],
    saved: dict[str, Any],
    checkpoint: str,
    plan: dict[str, Any] | None = None,
) -> tuple[FinetuneConfig, list[str]]:
    """The configuration of a resumed run, and the changes it makes to the saved one.

    Every option not in ``given`` is the checkpoint's ``saved`` one (except
    :data:`PER_INVOCATION`). A given option that differs from the saved one is refused with a
    :class:`~fastclr.errors.UsageError` naming the flag and both values, unless it is in
    :data:`RESUME_MAY_CHANGE`; those come back as ``--flag old → new`` notes. The data folder is
    the saved ``plan``'s (absolute, as the run saw it, whatever the working directory now).
    """
    return resumed_options(
        FinetuneConfig,
        given,
        saved,
        checkpoint,
        plan,
        per_invocation=PER_INVOCATION,
        may_change=lambda name, _: name in RESUME_MAY_CHANGE,
        paths=("checkpoint", "data", "subset"),
    )
