"""What ``fastclr finetune`` prints when it starts: the facts, then every decision of its plan
(:mod:`fastclr.finetune.plan`) with its reason, in the order it was made (laid out by pretraining's
:func:`~fastclr.train.header.format_header`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastclr.finetune.plan import FinetunePlan
from fastclr.models import Classifier
from fastclr.train.header import HeaderLine, count_parameters

__all__ = ["LABELS", "finetune_header"]


def _network(v: dict[str, Any]) -> str:
    bn = "with" if v["head_bn"] else "without"
    return f"{v['arch']}, width {v['width']:g}, {v['stem']} stem, head {bn} BatchNorm"


def _input(v: dict[str, Any]) -> str:
    mean = ", ".join(f"{m:.3g}" for m in v["mean"])
    std = ", ".join(f"{s:.3g}" for s in v["std"])
    return f"{v['image_size']} px, mean ({mean}), std ({std})"


def _head_layer(v: int) -> str:
    return "0 (the encoder's output)" if v == 0 else f"{v} (projection head layer {v})"


def _optimizer(v: dict[str, Any]) -> str:
    wd = "no weight decay" if v["weight_decay"] == 0 else f"weight decay {v['weight_decay']:g}"
    if v["name"] == "sgd":
        return f"SGD, Nesterov momentum {v['momentum']:g}, {wd}"
    return (
        f"LARS at {v['lars_lr']:g} (trust ratio 0.001) on the conv and linear weights, SGD at "
        f"the lr on the classifier, biases and BatchNorm; momentum {v['momentum']:g}, {wd}"
    )


#: How each decision is shown: its label and how its value reads.
LABELS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "source": ("checkpoint", str),
    "network": ("network", _network),
    "input": ("input", _input),
    "init": ("weights", str),
    "head_layer": ("from layer", _head_layer),
    "validation": ("validation", lambda v: f"{v['images']:,} images"),
    "labels": ("labelled", str),
    "loader": ("loader", str),
    "workers": ("workers", lambda v: f"{v} decode worker{'s' if v != 1 else ''}" if v else "0"),
    "batch": ("batch", str),
    "steps": ("steps", lambda v: f"{v} per epoch and rank"),
    "lr": ("lr", lambda v: f"{v:.4g}"),
    "epochs": ("epochs", str),
    "optimizer": ("optimizer", _optimizer),
    "schedule": ("schedule", str),
    "augment": ("augment", str),
    "crop": ("crop", lambda v: f"area {v[0]:g} to {v[1]:g}"),
    "classifier": ("classifier", str),
    "precision": ("precision", str),
    "threads": ("threads", lambda v: "torch's choice" if v in (None, 0) else str(v)),
}


def finetune_header(
    plan: FinetunePlan,
    classifier: Classifier,
    device: torch.device,
    out: str,
    resume_from: tuple[str, int, int] | None = None,
) -> list[HeaderLine]:
    """The lines printed at the start of a run: data, device, size, output, then the plan.

    ``resume_from`` is ``(checkpoint, epoch, global_step)`` when resuming.
    """
    data = plan.data
    threads = torch.get_num_threads()
    where = f"{device} ({threads} thread{'s' if threads != 1 else ''})"
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    if plan.world_size > 1:
        where += f", {plan.world_size} ranks"
    notes = data.summary.lines()
    images = f"{data.n_train:,} training images, {len(data.classes)} classes"
    lines = [
        HeaderLine("data", f"{data.name} ({data.layout})"),
        HeaderLine("images", images + (f" ({'; '.join(notes)})" if notes else "")),
        HeaderLine("device", where),
        HeaderLine("parameters", f"{count_parameters(classifier) / 1e6:.2f} M trained"),
        HeaderLine("out", str(Path(out))),
    ]
    if resume_from is not None:
        path, epoch, step = resume_from
        lines.append(HeaderLine("resume", f"{path} (epoch {epoch}, step {step})"))
    for name, decision in plan.decisions.items():
        label, show = LABELS.get(name, (name, str))
        lines.append(HeaderLine(label, f"{show(decision.value)} ({decision.reason})"))
    return lines
