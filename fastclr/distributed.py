"""Collectives the losses use under ``torch.distributed``: row gathers with and without gradient.

``gather_distributed=True`` makes every rank's rows keys of the local anchors. The gather must carry
gradient back to the rank that owns each row. ``torch.distributed.nn.functional.all_gather`` did
that but is deprecated (a FutureWarning on every call from torch 2.13), and the replacement it
names lives in a private module. :class:`_AllGather` below uses only the public, stable
``torch.distributed.all_gather`` / ``all_reduce``:

* forward: the rows of every rank, concatenated in rank order;
* backward: each rank holds the gradient of ITS loss with respect to ALL gathered rows; the gradient
  of the sum of the ranks' losses with respect to this rank's rows is the sum over ranks of that
  block, i.e. an all-reduce (sum) of the gathered gradient followed by taking this rank's block.

With DDP the per-rank losses are averaged (gradients divided by the world size), so the result
equals the single-process loss on the concatenated batch; see ``NTXentLoss``'s docstring.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["all_gather_no_grad", "all_gather_with_grad", "gather_rows", "rank", "world_size"]


def world_size() -> int:
    """Number of processes in the default group, 1 when ``torch.distributed`` is not initialised."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group, 0 when not initialised."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _check_same_rows(t: Tensor) -> None:
    """Every rank must contribute the same number of rows (all_gather needs equal shapes)."""
    import torch.distributed as dist

    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=t.device))
    counts = [int(s.item()) for s in sizes]
    if any(c != t.shape[0] for c in counts):
        raise ValueError(
            f"gather_distributed=True needs the same number of rows on every rank, got {counts}"
        )


class _AllGather(torch.autograd.Function):
    """Concatenate the rows of every rank; the backward sums the ranks' gradients (see module)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rows = t.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(t: Tensor) -> Tensor:
    """(world·R, ...) rows of every rank in rank order; gradients flow back to their owners."""
    if world_size() == 1:
        return t
    _check_same_rows(t)
    out: Tensor = _AllGather.apply(t)
    return out


@torch.no_grad()
def all_gather_no_grad(t: Tensor) -> Tensor:
    """(world·R, ...) rows of every rank in rank order, without gradient (e.g. for a queue)."""
    import torch.distributed as dist

    if world_size() == 1:
        return t
    _check_same_rows(t)
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def gather_rows(t: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows (with gradient) and the offset of this rank's first row in them."""
    return all_gather_with_grad(t), rank() * t.shape[0]
