"""Random state of a training process: capture it into a checkpoint and restore it on resume.

Covers torch CPU (and CUDA when initialised), Python's ``random``, numpy's legacy global stream
and the augmentation's own generator or state. The captured dict holds tensors and plain Python
values only, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from fastclr.checkpoint import CheckpointError

__all__ = ["augment_generator", "capture_rng", "restore_rng", "seed_everything"]


def seed_everything(seed: int, rank: int) -> None:
    """Per-rank Python and numpy streams; the same torch stream (initial weights) on every rank."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)  # noqa: NPY002
    torch.manual_seed(seed)


def augment_generator(aug: object, device: torch.device) -> torch.Generator | None:
    """The augmentation's own generator: an attribute, or ``SimCLRAugmentation.generator(dev)``."""
    g = getattr(aug, "generator", None)
    if callable(g) and not isinstance(g, torch.Generator):
        g = g(device)
    return g if isinstance(g, torch.Generator) else None


def capture_rng(aug: object, device: torch.device) -> dict[str, Any]:
    """Every random stream this process draws from, as checkpoint-safe values."""
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
        g = augment_generator(aug, device)
        if g is not None:
            state["augment_generator"] = g.get_state()
    return state


def restore_rng(state: dict[str, Any], aug: object, device: torch.device) -> None:
    """Put back what :func:`capture_rng` captured (``aug`` must hold the same kind of state)."""
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
        g = augment_generator(aug, device)
        if g is None:
            raise CheckpointError(
                "the checkpoint holds an augmentation generator state but the "
                "augmentation has no .generator"
            )
        g.set_state(state["augment_generator"])
