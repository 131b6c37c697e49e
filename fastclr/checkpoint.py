"""Checkpoint files: the format, atomic writing, reading, and the architecture check.

A leaf module (torch only) so that both training (:mod:`fastclr.train`) and evaluation
(:mod:`fastclr.evaluate`) can read checkpoints without importing each other. What goes *into* a
training checkpoint (optimiser, RNG streams, position) is decided by
:class:`fastclr.train.checkpoint.CheckpointSaver`; this module only knows the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "check_spec",
    "load_checkpoint",
    "load_model_state",
    "model_spec",
    "save_checkpoint_atomic",
]

CHECKPOINT_FORMAT = "fastclr-simclr-v1"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


class ModelFields(Protocol):
    """The architecture fields of a run's configuration (``TrainConfig`` has them)."""

    @property
    def arch(self) -> str: ...
    @property
    def stem(self) -> str: ...
    @property
    def width(self) -> float: ...
    @property
    def proj_dim(self) -> int: ...
    @property
    def head_bn(self) -> bool: ...


def save_checkpoint_atomic(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A crash at any point leaves either the previous checkpoint or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a fastclr checkpoint (a file, or a run folder holding ``checkpoint.pt``)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"could not read checkpoint {p}: {type(e).__name__}: {e}".split("\n")[0]
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{p} is not a fastclr SimCLR checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    return state


def model_spec(cfg: ModelFields) -> dict[str, Any]:
    """The architecture fields a checkpoint must agree on to be loaded into a model."""
    return {
        "arch": cfg.arch,
        "stem": cfg.stem,
        "width": float(cfg.width),
        "proj_dim": cfg.proj_dim,
        "head_bn": cfg.head_bn,
    }


def _describe(spec: dict[str, Any]) -> str:
    return (
        f"{spec['arch']} (stem={spec['stem']}, width={spec['width']}, "
        f"proj_dim={spec['proj_dim']}, head_bn={spec['head_bn']})"
    )


def check_spec(
    ckpt_spec: dict[str, Any], want: dict[str, Any], path: str | os.PathLike[str]
) -> None:
    """Raise :class:`CheckpointError` naming both architectures when they differ."""
    if any(ckpt_spec.get(k) != v for k, v in want.items()):
        raise CheckpointError(
            f"checkpoint {path} is for {_describe(ckpt_spec)} but the model is {_describe(want)}"
        )


def load_model_state(model: nn.Module, state: dict[str, Tensor], desc: str) -> None:
    """``model.load_state_dict(state)``, a mismatch raised as :class:`CheckpointError`."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{desc}: {str(e).splitlines()[0]}") from e
