"""The memory bank of :class:`~fastclr.loss.NTXentLoss`: a queue of past samples' keys.

The newest ``size`` normalised rows of the last view of each training call are kept (every
rank's under ``gather_distributed``) and added to every anchor's denominator as negatives. The
queue fills first (rows appended), then becomes a ring whose oldest row is at ``ptr``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastclr.distributed import all_gather_no_grad, world_size
from fastclr.reference import l2_normalize

__all__ = ["push_keys"]


@torch.no_grad()
def push_keys(
    bank: Tensor, ptr: int, keys: Tensor, size: int, eps: float, gather: bool
) -> tuple[Tensor, int]:
    """The bank and ring position after pushing ``keys`` (normalised here; gathered from every
    rank when ``gather`` and distributed); only the newest ``size`` rows are kept."""
    keys = l2_normalize(keys.detach().float(), eps)
    if gather and world_size() > 1:
        keys = all_gather_no_grad(keys)
    keys = keys[-size:]
    if bank.shape[0] < size:  # still filling: append, then the ring starts at row 0
        return torch.cat([bank.to(keys).reshape(-1, keys.shape[1]), keys])[-size:], 0
    idx = (ptr + torch.arange(keys.shape[0], device=keys.device)) % size
    bank[idx] = keys
    return bank, (ptr + keys.shape[0]) % size
