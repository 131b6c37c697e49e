"""What a pretraining run prints when it starts: the facts, then the plan, one line each.

:func:`run_header` returns the lines; :func:`format_header` lays them out. The facts are what a
user needs to know the run is the one they meant (which data and how many images, the device,
the model and its size, where the run is written and from where it resumes); then every decision
of the run plan (:mod:`fastclr.train.plan`) with its reason, in the order it was made. A new
decision appears here by being added to the plan (and, for its label, to :data:`LABELS`).

:func:`resuming_line` and :func:`finished_line` are the lines ``fastclr pretrain`` and
``fastclr finetune`` both print around a ``--resume``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from fastclr.data.select import TrainData
    from fastclr.train.config import TrainConfig
    from fastclr.train.plan import RunPlan

__all__ = [
    "LABELS",
    "HeaderLine",
    "count_parameters",
    "finished_line",
    "format_header",
    "resuming_line",
    "run_header",
]


@dataclass(frozen=True)
class HeaderLine:
    """One fact of the run header: ``key: value``."""

    key: str
    value: str


def _onoff(v: Any) -> str:
    return "on" if v else "off"


_AUGMENT_IN_SHOWN = {"workers": "the loader's workers", "main": "the training process"}
#: How each decision of the plan is shown: its label and how its value reads.
LABELS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "image_size": ("view size", lambda v: f"{v} px"),
    "width": ("width", lambda v: f"{v:g}"),
    "epochs": ("epochs", str),
    "head_bn": ("head BN", _onoff),
    "stem": ("stem", str),
    "threads": ("threads", lambda v: "torch's choice" if v in (None, 0) else str(v)),
    "loader": ("loader", str),
    "workers": ("workers", lambda v: f"{v} decode worker{'s' if v != 1 else ''}" if v else "0"),
    "batch": ("batch", str),
    "steps": ("steps", lambda v: f"{v} per epoch and rank"),
    "preset": ("augment", str),
    "rule_lr": ("lr rule", lambda v: f"{v:.4g}"),
    "lr": ("lr", lambda v: f"{v:.4g}"),
    "warmup": ("warm-up", lambda v: f"{v} steps"),
    "data_change": ("data", str),
    "total": ("steps", lambda v: f"{v} in all"),
    "rebase": ("schedule", lambda v: f"cosine from step {v[0]}"),
    "knn_k": ("kNN k", lambda v: "none" if v is None else str(v)),
    "precision": ("precision", str),
    "chunk": ("chunk", lambda v: f"{v} images per forward"),
    "views_forward": ("views", lambda v: f"{v} forward"),
    "augment_in": ("augment in", lambda v: _AUGMENT_IN_SHOWN.get(v, str(v))),
}
#: Decisions left out of the header (shown inside another line).
_HIDDEN = ("rule_lr",)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}"


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"{device} ({n} thread{'s' if n != 1 else ''})"


def _facts(
    plan: RunPlan, cfg: TrainConfig, train_data: TrainData, device: torch.device, model: nn.Module
) -> list[HeaderLine]:
    images = f"{train_data.n_images:,} training images"
    if train_data.classes:
        images += f", {len(train_data.classes)} classes"
    notes = train_data.summary.lines()
    if notes:
        images += f" ({'; '.join(notes)})"
    size = _millions(count_parameters(model))
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        size += f" (encoder {_millions(count_parameters(encoder))})"
    feature = getattr(model, "feature_dim", None)
    ranks = f", {plan.world_size} ranks" if plan.world_size > 1 else ""
    arch = f"{cfg.arch}" + (f", {feature}-d features" if feature else "")
    arch += f", head → {cfg.proj_dim}"
    return [
        HeaderLine("data", f"{plan.data.name} ({plan.data.layout})"),
        HeaderLine("images", images),
        HeaderLine("device", _device_text(device) + ranks),
        HeaderLine("arch", arch),
        HeaderLine("parameters", size),
        HeaderLine("out", str(Path(cfg.out))),
    ]


def run_header(
    plan: RunPlan,
    cfg: TrainConfig,
    train_data: TrainData,
    device: torch.device,
    model: nn.Module,
    *,
    resume_from: tuple[str, int, int] | None = None,
) -> list[HeaderLine]:
    """The lines printed at the start of a run (module docstring).

    ``resume_from`` is ``(checkpoint, epoch, global_step)`` when resuming.
    """
    lines = _facts(plan, cfg, train_data, device, model)
    if resume_from is not None:
        path, epoch, step = resume_from
        lines.append(HeaderLine("resume", f"{path} (epoch {epoch}, step {step})"))
    for name, decision in plan.decisions.items():
        if name in _HIDDEN:
            continue
        label, show = LABELS.get(name, (name, str))
        lines.append(HeaderLine(label, f"{show(decision.value)} ({decision.reason})"))
    return lines


def format_header(lines: list[HeaderLine], title: str = "fastclr pretrain") -> str:
    """The header as text: a title line, then ``  key:  value`` lines with aligned values."""
    width = max((len(line.key) for line in lines), default=0) + 1
    body = [f"  {(line.key + ':').ljust(width)}  {line.value}" for line in lines]
    return "\n".join([title, *body])


def resuming_line(resume: str, changes: list[str]) -> str:
    """What ``fastclr pretrain`` / ``fastclr finetune`` print first on ``--resume``."""
    changed = f"; changed: {', '.join(changes)}" if changes else ""
    return f"resuming {resume} with the settings it was started with{changed}"


def finished_line(out: Path, epochs_done: int, global_step: int) -> str:
    """What they print when the resumed run had already reached its last epoch."""
    return (
        f"the run in {out} is already finished ({epochs_done} epochs, "
        f"{global_step} steps); nothing to do. Pass a larger --epochs to train it "
        "further."
    )
