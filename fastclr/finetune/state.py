"""What a fine-tuning run trains and saves: the network, its optimiser and schedule, and the
checkpoint that both resumes the run and serves the finished classifier.

The checkpoint is an ordinary fastclr checkpoint (:mod:`fastclr.checkpoint`: atomic, digest
verified) with ``kind: "finetune"``. Its ``model`` entry is the whole SimCLR network with the
fine-tuned weights (the projection head's layers above ``--from-head-layer`` as they were), so
``fastclr.load_encoder``, ``fastclr linear-eval`` and ``fastclr export`` read the fine-tuned
encoder from it unchanged; ``classifier`` holds the head layer, the class names and the linear
layer, which :func:`fastclr.load_classifier` puts back on top. Besides, as a pretraining
checkpoint does: the optimiser, schedule, scaler, every rank's random state and the position, so
that ``--resume`` continues bit-identically on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastclr.checkpoint import (
    CheckpointError,
    first_non_finite,
    load_checkpoint,
    load_model_state,
    model_spec,
)
from fastclr.distributed import DistInfo
from fastclr.errors import NonFiniteLossError
from fastclr.finetune.config import FinetuneConfig
from fastclr.finetune.plan import FinetunePlan
from fastclr.models import Classifier, SimCLR
from fastclr.optim import LARS, lars_param_groups, warmup_cosine_schedule
from fastclr.train.checkpoint import Position, SaverBase, follow_schedule, resumed_at
from fastclr.train.rundir import Manifest

__all__ = [
    "FINETUNE_KIND",
    "FinetuneSaver",
    "FinetuneState",
    "build_optimizer",
    "build_state",
    "resume_state",
]

#: The ``kind`` entry of a fine-tuning checkpoint (pretraining checkpoints have none).
FINETUNE_KIND = "finetune"


@dataclass
class FinetuneState:
    """The objects whose state a fine-tuning checkpoint holds."""

    model: SimCLR
    classifier: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: Any


def build_optimizer(
    classifier: Classifier, plan: FinetunePlan, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The plan's optimiser over ``classifier``'s parameters.

    ``sgd``: Nesterov SGD at ``plan.lr`` on every parameter (paper, B.5). ``lars``:
    :class:`~fastclr.optim.LARS` with two groups, first the classifier's linear layer and every
    1-D parameter (biases, BatchNorm) at ``plan.lr`` without the trust ratio, then the encoder's
    and head's conv and linear weights at ``plan.lars_lr`` with it. The linear layer stays out
    of LARS because it starts at zero, where the trust ratio has no norm to scale by.
    """
    if plan.optimizer == "sgd":
        return torch.optim.SGD(
            classifier.parameters(),
            lr=plan.lr,
            momentum=momentum,
            nesterov=momentum > 0,
            weight_decay=weight_decay,
        )
    fc = {id(p) for p in classifier.fc.parameters()}
    adapted = [p for p in lars_param_groups(classifier)[0]["params"] if id(p) not in fc]
    chosen = {id(p) for p in adapted}
    rest = [p for p in classifier.parameters() if p.requires_grad and id(p) not in chosen]
    assert plan.lars_lr is not None
    return LARS(
        [
            {"params": rest, "lr": plan.lr, "lars": False, "weight_decay": 0.0},
            {"params": adapted, "lr": plan.lars_lr, "lars": True, "weight_decay": weight_decay},
        ],
        lr=plan.lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )


def build_state(
    plan: FinetunePlan,
    cfg: FinetuneConfig,
    weights: dict[str, Tensor] | None,
    augment: Any,
    device: torch.device,
) -> FinetuneState:
    """The network of the plan (random weights drawn from torch's current stream, then the
    pretrained ``weights`` when given: the plan starts from them and the run is not resumed),
    its classifier, and its optimiser (:func:`build_optimizer`) with a cosine schedule over the
    whole run."""
    model = plan.architecture.build()
    if weights is not None:
        load_model_state(model, weights, f"checkpoint {plan['source']}")
    classifier = Classifier(model, plan.head_layer, len(plan.classes))
    model.to(device)
    optimizer = build_optimizer(classifier, plan, cfg.momentum, cfg.weight_decay)
    scheduler = warmup_cosine_schedule(optimizer, 0, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=plan.precision == "fp16")
    return FinetuneState(model, classifier, optimizer, scheduler, scaler, augment)


class FinetuneSaver(SaverBase):
    """Writes ``out/checkpoint.pt`` of a fine-tuning run (collective: call it on every rank)."""

    cfg: FinetuneConfig
    plan: FinetunePlan

    def __init__(
        self,
        out: Path,
        cfg: FinetuneConfig,
        plan: FinetunePlan,
        ddp: DistInfo,
        device: Any,
        manifest: Manifest,
    ) -> None:
        super().__init__(out, cfg, plan, ddp, device, manifest)
        self.last: dict[str, float] | None = None

    def save(self, state: FinetuneState, at: Position, accuracy: Any = None) -> None:
        """Refuse NaN/Inf weights (the last good checkpoint stays), gather every rank's random
        state, and write the checkpoint atomically on rank 0. ``accuracy``: the validation
        :class:`~fastclr.finetune.validate.Accuracy` of the epoch just finished (None mid-epoch:
        the previous one is kept)."""
        weights = state.model.state_dict()
        bad = first_non_finite(weights) or first_non_finite(state.classifier.fc.state_dict())
        if bad is not None:
            kept = "the last good checkpoint was kept" if self.path.exists() else "none was saved"
            raise NonFiniteLossError(
                f"the weights became NaN or Inf ({bad}) by step {at.global_step}; fine-tuning "
                f"stopped and {kept}. Lower --lr (now {self.plan.lr:.4g})."
            )
        plan = self.plan
        classifier = {
            "head_layer": plan.head_layer,
            "classes": plan.classes,
            "fc": state.classifier.fc.state_dict(),
        }
        extra = {
            "kind": FINETUNE_KIND,
            "classifier": classifier,
            "accuracy": self._accuracy(accuracy),
        }
        self._write(state, at, weights, model_spec(plan.architecture), (plan.mean, plan.std), extra)

    def _accuracy(self, accuracy: Any) -> dict[str, float] | None:
        if accuracy is not None:
            self.last = {"top1": accuracy.top1, "top5": accuracy.top5, "n": accuracy.n}
        return self.last


def resume_state(
    path: str | os.PathLike[str],
    state: FinetuneState,
    plan: FinetunePlan,
    ddp: DistInfo,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[Position, dict[str, Any]]:
    """Load a fine-tuning checkpoint into ``state``; return its position and this rank's random
    state (restored last by the caller). The schedule follows the plan (a run extended with a
    larger ``--epochs`` continues on the longer cosine)."""
    ck = checkpoint if checkpoint is not None else load_checkpoint(path)
    if ck.get("kind") != FINETUNE_KIND:
        raise CheckpointError(f"checkpoint {path} is not a fine-tuning run's; nothing to resume")
    load_model_state(state.model, ck["model"], f"checkpoint {path}")
    load_model_state(state.classifier.fc, ck["classifier"]["fc"], f"checkpoint {path}")
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    schedule = state.scheduler.lr_lambdas[0]
    schedule.total_steps = plan.total_steps  # type: ignore[attr-defined]
    follow_schedule(state.scheduler, state.optimizer, schedule)
    state.scaler.load_state_dict(ck["scaler"])
    return resumed_at(ck, ddp, stacklevel=3)
