"""Checks of a pretraining configuration, each failure one sentence naming the flag.

Two stages, both before anything is loaded or built:

* :func:`check_config` — the values alone: counts >= 1 (``--batch-size`` >= 2: with one image per
  batch NT-Xent has no negatives and its loss is the constant 0), finite positive rates and
  temperatures, non-negative decay and warm-up, closed sets;
* :func:`check_environment` — what this process can do: the ``--device`` exists here (CUDA
  requested on a torch without CUDA is refused, not crashed on), and the requested loss and
  augmentation backends run on that device.

Errors are :class:`ValueError` whose message starts with the flag (``--batch-size ...``), the
name a command-line user typed; the flag of field ``x_y`` is ``--x-y``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import TYPE_CHECKING

import torch

from fastclr.device import check_device

if TYPE_CHECKING:
    from fastclr.train.config import TrainConfig

__all__ = ["check_config", "check_device", "check_environment", "flag"]


def flag(field_name: str) -> str:
    """The command-line flag of a :class:`TrainConfig` field (``batch_size`` → ``--batch-size``)."""
    return "--" + field_name.replace("_", "-")


def _bad(name: str, rule: str, value: object) -> ValueError:
    return ValueError(f"{flag(name)} must be {rule}, got {value!r}")


def _int_at_least(cfg: object, name: str, low: int, optional: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _bad(name, f"an integer >= {low}", v)


def _float(cfg: object, name: str, *, positive: bool, optional: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None and optional:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (positive and v <= 0) or (not positive and v < 0):
        raise _bad(name, "a finite number " + ("> 0" if positive else ">= 0"), v)


def check_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first flag whose value cannot be used (module docstring)."""
    from fastclr.augment import BACKENDS as AUGMENT_BACKENDS
    from fastclr.models import ARCHS, STEMS
    from fastclr.train.config import AUGMENT_PRESETS, LOADERS, PRECISIONS

    closed = {
        "arch": tuple(sorted(ARCHS)),
        "stem": tuple(STEMS),
        "precision": PRECISIONS,
        "augment_preset": AUGMENT_PRESETS,
        "augment_backend": AUGMENT_BACKENDS,
        "loss_backend": ("auto", "reference", "native", "triton"),
        "loader": LOADERS,
    }
    for name, choices in closed.items():
        v = getattr(cfg, name)
        if v not in choices and not (name == "stem" and v == "auto"):
            raise ValueError(f"{flag(name)} must be one of {', '.join(choices)}; got {v!r}")
    _int_at_least(cfg, "batch_size", 1, optional=True)
    if cfg.batch_size is not None and cfg.batch_size < 2:
        raise ValueError(
            f"--batch-size must be >= 2, got {cfg.batch_size}: with one image per batch NT-Xent "
            "has no negatives and its loss is always 0"
        )
    for name in ("epochs", "image_size", "log_every", "proj_dim"):
        _int_at_least(cfg, name, 1)
    for name in ("limit_steps", "stop_after_epochs", "knn_k"):
        _int_at_least(cfg, name, 1, optional=True)
    _int_at_least(cfg, "num_workers", 0, optional=True)

    _int_at_least(cfg, "seed", 0)
    _int_at_least(cfg, "threads", 0, optional=True)
    for name in ("width", "temperature", "base_lr", "knn_temperature"):
        _float(cfg, name, positive=True)
    _float(cfg, "lr", positive=True, optional=True)
    _float(cfg, "weight_decay", positive=False)
    _float(cfg, "warmup_epochs", positive=False, optional=True)
    _float(cfg, "momentum", positive=False)
    if cfg.momentum >= 1:
        raise _bad("momentum", "in [0, 1)", cfg.momentum)
    if not isinstance(cfg.out, str) or not cfg.out.strip():
        raise _bad("out", "a folder path", cfg.out)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def check_environment(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse loss/augmentation backends that cannot run on ``device`` in this process."""
    from fastclr.loss import available_backends

    on_cuda = device.type == "cuda"
    loss = cfg.loss_backend
    if loss != "auto" and loss not in available_backends():
        raise ValueError(f"--loss-backend {loss} is not available in this process (not built)")
    if loss == "triton" and not on_cuda and not _interpreting():
        raise ValueError(
            f"--loss-backend triton runs on CUDA devices, and the run is on {device}; use "
            "--loss-backend auto (native on the CPU)"
        )
    if loss == "native" and on_cuda:
        raise ValueError(
            f"--loss-backend native runs on the CPU, and the run is on {device}; use "
            "--loss-backend auto (triton on CUDA)"
        )
    aug = cfg.augment_backend
    if aug == "triton" and not on_cuda and not _interpreting():
        raise ValueError(
            f"--augment-backend triton runs on CUDA devices, and the run is on {device}; use "
            "--augment-backend auto"
        )
    if aug == "native" and on_cuda:
        raise ValueError(
            f"--augment-backend native runs on the CPU, and the run is on {device}; use "
            "--augment-backend auto"
        )
    if aug == "native":
        from fastclr.augment.native_backend import available

        if not available():
            raise ValueError("--augment-backend native is not available (native library not built)")
    if aug == "dali" and importlib.util.find_spec("nvidia") is None:
        raise ValueError("--augment-backend dali needs NVIDIA DALI: pip install 'fastclr[dali]'")
