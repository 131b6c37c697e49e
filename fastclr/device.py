"""The ``--device`` argument: parsed and checked against what this process can use.

Shared by training and evaluation (a leaf module: torch only), so that ``--device cuda`` on a
torch without CUDA, or ``cuda:7`` on a machine with one GPU, is one sentence naming the flag for
both commands instead of an assertion deep inside torch.
"""

from __future__ import annotations

import torch

__all__ = ["check_device", "resolve_device"]


def check_device(device: str | None) -> None:
    """Raise ``ValueError`` naming ``--device`` when this process cannot use it."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"--device must be cpu, cuda or cuda:N, got {device!r} ({str(e).splitlines()[0]})"
        ) from e
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        reason = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise ValueError(f"--device {device}: {reason}; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )


def resolve_device(device: str | None) -> torch.device:
    """``device`` checked by :func:`check_device`; None → CUDA when present, else the CPU."""
    check_device(device)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
