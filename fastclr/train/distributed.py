"""Data-parallel set-up for training: process group, rank information, DDP wrapping, agreement.

Under torchrun (``RANK``/``WORLD_SIZE`` in the environment) the process group is initialised
(NCCL on CUDA, gloo on CPU) and torn down again if this process created it; the model is wrapped
in DDP (SyncBatchNorm on CUDA); :func:`agree` makes every rank take the same stop decisions, and
:func:`gather_objects` / :func:`broadcast_object` move small Python objects between ranks.
Without torchrun everything here is a no-op on one rank.

Why the loop does not call ``dist.all_gather_object`` and friends: a finished collective's tensors
are freed by the process group's worker thread (gloo) or watchdog (NCCL) shortly *after* the
caller has returned, and freeing a tensor that Python knows takes the GIL. If the interpreter is
already shutting down by then, that thread is killed inside a destructor and the process aborts
with "terminate called without an active exception" (seen in about 1 % of 2-rank CPU runs under
load, and in most runs of a script that exits right after a gather). ``destroy_process_group``
does not prevent it, because DDP's reducer keeps the group and its threads alive to the end. So
every collective here records its tensors, and :func:`teardown` waits until the group's threads
have let go of them (:func:`release_pending`) before the process may exit.
"""

from __future__ import annotations

import os
import pickle
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "agree",
    "broadcast_object",
    "gather_objects",
    "release_pending",
    "setup_distributed",
    "teardown",
    "unwrap",
    "wrap_model",
]

#: Tensors handed to this module's collectives that the group's threads may still hold.
_PENDING: list[Tensor] = []


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
    """Let the collectives' tensors go, then destroy the process group if this process made it."""
    release_pending()
    if ddp.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def _held_elsewhere(t: Tensor) -> bool:
    """True while something besides Python (a finished collective's work) holds ``t``."""
    use_count = getattr(t, "_use_count", None)  # the TensorImpl's reference count
    return use_count is not None and int(use_count()) > 1


def _track(*tensors: Tensor) -> None:
    """Record a collective's tensors for :func:`release_pending` (forgetting released ones)."""
    _PENDING[:] = [t for t in _PENDING if _held_elsewhere(t)]
    _PENDING.extend(tensors)


def release_pending(timeout_s: float = 10.0) -> bool:
    """Wait until the process group's threads have freed every tensor :func:`_track` recorded.

    Called by :func:`teardown` so that no worker thread frees a tensor (taking the GIL) while the
    interpreter shuts down; see the module docstring. It sleeps in 1 ms steps, which hands the GIL
    to the thread that needs it, and normally returns at once. Returns False if ``timeout_s``
    passed first (a collective that never finished); the process then exits as it would have.
    """
    deadline = time.monotonic() + timeout_s
    while any(_held_elsewhere(t) for t in _PENDING):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    _PENDING.clear()
    return True


def _comm_device() -> torch.device:
    """Where the default group's tensors must live (NCCL: this rank's GPU; gloo: the CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_bytes_tensor(obj: Any, device: torch.device) -> Tensor:
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)


def _from_bytes_tensor(t: Tensor, n: int) -> Any:
    return pickle.loads(t[:n].cpu().numpy().tobytes())


def gather_objects(obj: Any, ddp: DistInfo) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (collective).

    ``dist.all_gather_object`` with its tensors recorded for :func:`release_pending`.
    """
    if ddp.world_size == 1:
        return [obj]
    device = _comm_device()
    data = _to_bytes_tensor(obj, device)
    size = torch.tensor([data.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(ddp.world_size)]
    dist.all_gather(sizes, size)
    n = [int(s) for s in sizes]
    padded = torch.zeros(max(n), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = [torch.empty_like(padded) for _ in range(ddp.world_size)]
    dist.all_gather(parts, padded)
    _track(size, *sizes, padded, *parts)
    return [_from_bytes_tensor(p, k) for p, k in zip(parts, n, strict=True)]


def broadcast_object(obj: Any, src: int, ddp: DistInfo) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (collective; others pass anything).

    ``dist.broadcast_object_list`` with its tensors recorded for :func:`release_pending`.
    """
    if ddp.world_size == 1:
        return obj
    device = _comm_device()
    data = _to_bytes_tensor(obj, device) if ddp.rank == src else None
    size = torch.tensor([0 if data is None else data.numel()], dtype=torch.long, device=device)
    dist.broadcast(size, src=src)
    if data is None:
        data = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=src)
    _track(size, data)
    return _from_bytes_tensor(data, int(size))


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
    _track(flags)
    finite.fill_(bool(flags[0] == 0))
    return bool(flags[1] > 0)
