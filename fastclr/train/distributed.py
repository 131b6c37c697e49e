"""Data-parallel set-up for training: process group, rank information, DDP wrapping, agreement.

Under torchrun (``RANK``/``WORLD_SIZE`` in the environment) the process group is initialised
(NCCL on CUDA, gloo on CPU) and torn down again if this process created it; the model is wrapped
in DDP (SyncBatchNorm on CUDA); :func:`agree` makes every rank take the same stop decisions.
Without torchrun everything here is a no-op on one rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistInfo", "agree", "setup_distributed", "teardown", "unwrap", "wrap_model"]


@dataclass
class DistInfo:
    """This process's place in the run (one rank of one when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0


def setup_distributed(device_pref: str | None) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group if there is one; return the rank info and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device_pref is None or device_pref.startswith("cuda"))
    if world <= 1:
        return DistInfo(), torch.device(device_pref or ("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return DistInfo(rank, world, local_rank, created), device


def teardown(ddp: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ddp.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ddp: DistInfo, device: torch.device, compile: bool) -> nn.Module:
    """The module the loop trains: DDP (SyncBatchNorm on CUDA) on several ranks, then compiled."""
    train_model: nn.Module = model
    if ddp.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return train_model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` and DDP wrappers."""
    inner: nn.Module = getattr(model, "_orig_mod", model)
    outer: nn.Module = getattr(inner, "module", inner)
    return outer


def agree(finite: Tensor, interrupt: bool, ddp: DistInfo, device: torch.device) -> bool:
    """Make every rank agree on "finite so far" (in place) and on "stop requested"."""
    if ddp.world_size == 1:
        return interrupt
    flags = torch.tensor([0.0 if bool(finite) else 1.0, float(interrupt)], device=device)
    dist.all_reduce(flags)
    finite.fill_(bool(flags[0] == 0))
    return bool(flags[1] > 0)
