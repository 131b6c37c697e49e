"""What a pretraining run prints when it starts: one ``key: value`` line per fact.

:func:`run_header` returns the lines; :func:`format_header` lays them out. The facts are what a
user needs to know the run is the one they meant: which data and how many images, how they are
loaded, the device and precision, the model and its size, the schedule, and where the run is
written (and from where it resumes). To add a fact, append a :class:`HeaderLine` in
:func:`run_header` (or to its result); the layout needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from fastclr.data.select import TrainData
    from fastclr.train.config import TrainConfig

__all__ = ["HeaderLine", "count_parameters", "format_header", "run_header"]


@dataclass(frozen=True)
class HeaderLine:
    """One fact of the run header: ``key: value``."""

    key: str
    value: str


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


def run_header(
    cfg: TrainConfig,
    train_data: TrainData,
    device: torch.device,
    precision: str,
    model: nn.Module,
    *,
    data_name: str,
    steps_per_epoch: int,
    lr: float,
    world_size: int = 1,
    resume_from: tuple[str, int, int] | None = None,
) -> list[HeaderLine]:
    """The facts printed at the start of a run (module docstring).

    Args:
        data_name: what ``--data`` named (``digits`` or a folder).
        steps_per_epoch: steps of one epoch on one rank (after ``limit_steps``).
        lr: the peak learning rate.
        resume_from: ``(checkpoint, epoch, global_step)`` when resuming.
    """
    images = f"{train_data.n_images:,} training images"
    if train_data.classes:
        images += f", {len(train_data.classes)} classes"
    notes = train_data.summary.lines()
    if notes:
        images += f" ({'; '.join(notes)})"
    loader = f"{train_data.loader_name}, {steps_per_epoch} steps/epoch per rank"
    if train_data.loader_name == "stream":
        n, why = train_data.num_workers, train_data.num_workers_reason
        loader += f", {n} decode worker{'s' if n != 1 else ''}" if n else ", decoded inline"
        loader += f" ({why})" if why else ""
    params = count_parameters(model)
    size = _millions(params)
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        size += f" (encoder {_millions(count_parameters(encoder))})"
    prec = precision
    if precision == "fp16" and device.type == "cpu":
        prec += " (emulated on the CPU: slow)"
    feature = getattr(model, "feature_dim", None)
    ranks = f", {world_size} ranks" if world_size > 1 else ""
    lines = [
        HeaderLine("data", data_name),
        HeaderLine("images", images),
        HeaderLine("loader", loader),
        HeaderLine("device", _device_text(device) + ranks),
        HeaderLine("precision", prec),
        HeaderLine(
            "arch",
            f"{cfg.arch}, {cfg.stem} stem, width {cfg.width:g}"
            + (f", {feature}-d features" if feature else "")
            + f", head → {cfg.proj_dim}"
            + (" (BatchNorm in the head)" if cfg.head_bn else ""),
        ),
        HeaderLine("parameters", size),
        HeaderLine(
            "schedule",
            f"{cfg.epochs} epochs × {steps_per_epoch} steps, batch {cfg.batch()}, "
            f"{cfg.image_size}-px views, lr {lr:.4g}",
        ),
        HeaderLine("out", str(Path(cfg.out))),
    ]
    if resume_from is not None:
        path, epoch, step = resume_from
        lines.append(HeaderLine("resume", f"{path} (epoch {epoch}, step {step})"))
    return lines


def format_header(lines: list[HeaderLine], title: str = "fastclr pretrain") -> str:
    """The header as text: a title line, then ``  key:  value`` lines with aligned values."""
    width = max((len(line.key) for line in lines), default=0) + 1
    body = [f"  {(line.key + ':').ljust(width)}  {line.value}" for line in lines]
    return "\n".join([title, *body])
