"""Rank, world size, main process and device: the one place every part of fastclr asks.

Training, evaluation, the command line and the losses all read this module, so that "which rank
am I", "do I write files" and "which device do I use" have one answer each:

* :func:`rank` / :func:`world_size`: the default process group's, or 0 / 1 when
  ``torch.distributed`` is not initialised; :func:`is_main`: rank 0 of the group, or, outside
  one, ``$RANK`` (torchrun sets it, so a process that has left its group still knows its place);
* :func:`resolve_device`: ``--device`` checked against what this process can use (one sentence
  naming the flag instead of an assertion deep inside torch), ``None`` → CUDA when present, else
  the CPU; under torchrun the CUDA device of the local rank;
* :func:`setup_distributed` / :func:`teardown`: join (and leave) torchrun's process group (NCCL on
  CUDA, gloo on CPU) and return a :class:`DistInfo`; :func:`distributed_run` is the two around a
  run (its ``--device`` checked first); :func:`wrap_model` wraps in DDP;
* :func:`gather_objects`, :func:`broadcast_object`, :func:`on_main` (run on rank 0, its result
  or its exception on every rank) and :func:`agree` move small Python objects between ranks;
* :func:`gather_rows` / :func:`all_gather_with_grad` / :func:`all_gather_no_grad`: the row
  gathers of ``gather_distributed=True`` losses.

Why the collectives here record their tensors: a finished collective's tensors are freed by the
process group's worker thread (gloo) or watchdog (NCCL) shortly *after* the caller has returned,
and freeing a tensor that Python knows takes the GIL. If the interpreter is already shutting down
by then, that thread is killed inside a destructor and the process aborts with "terminate called
without an active exception" (seen in about 1 % of 2-rank CPU runs under load). So every
collective records its tensors, and :func:`teardown` waits until the group's threads have let go
of them (:func:`release_pending`) before the process may exit.

The row gather with gradient uses only the public ``all_gather`` / ``all_reduce``
(``torch.distributed.nn.functional.all_gather`` is deprecated): forward, the rows of every rank
in rank order; backward, each rank holds the gradient of ITS loss with respect to ALL gathered
rows, so the gradient of the ranks' summed losses with respect to this rank's rows is an
all-reduce (sum) of that gradient, then this rank's block. With DDP averaging the per-rank losses
this equals the single-process loss on the concatenated batch.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fastclr.errors import UsageError, portable

__all__ = [
    "DistInfo",
    "agree",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "broadcast_object",
    "check_device",
    "distributed_run",
    "gather_objects",
    "gather_rows",
    "is_main",
    "on_main",
    "rank",
    "release_pending",
    "resolve_device",
    "setup_distributed",
    "teardown",
    "unwrap",
    "world_size",
    "wrap_model",
]

T = TypeVar("T")


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the default group; 1 when ``torch.distributed`` is not initialised."""
    return dist.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in the default group; 0 when not initialised."""
    return dist.get_rank() if _initialised() else 0


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0 of the group, or, outside one,
    the process torchrun started as ``RANK=0`` (every process that torchrun did not start)."""
    if _initialised():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


# --------------------------------------------------------------------------------------------
# device


def check_device(device: str | torch.device | None, name: str = "--device") -> None:
    """Raise :class:`~fastclr.errors.UsageError` naming ``name`` (the flag or argument) when this
    process cannot use ``device`` (``None``, the default, always can)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(
            f"{name} must be cpu, cuda or cuda:N, got {device!r} ({str(e).splitlines()[0]})"
        ) from e
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise UsageError(f"{name} must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        reason = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise UsageError(f"{name} {device}: {reason}; use {name} cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(
            f"{name} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )


def resolve_device(device: str | None, local_rank: int | None = None) -> torch.device:
    """The device a process computes on: ``device`` checked by :func:`check_device`; ``None``
    → CUDA when present, else the CPU. ``local_rank`` (torchrun's, for data-parallel runs)
    picks that CUDA device when the choice is CUDA."""
    check_device(device)
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if local_rank is not None:
        return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if device is None:
        return torch.device("cuda" if use_cuda else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------------------------
# the process group


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
    """Join the torchrun process group if there is one; return the rank info and the device
    (:func:`resolve_device`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_pref)
    rank_, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return DistInfo(rank_, world, local_rank, created), device


def teardown(ddp: DistInfo) -> None:
    """Let the collectives' tensors go, then destroy the process group if this process made it."""
    release_pending()
    if ddp.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run(device_pref: str | None) -> Iterator[tuple[DistInfo, torch.device]]:
    """A run's process group and device: ``device_pref`` checked (:func:`check_device`), the
    group joined (:func:`setup_distributed`), and left when the block ends, however it ends."""
    check_device(device_pref)
    ddp, device = setup_distributed(device_pref)
    try:
        yield ddp, device
    finally:
        teardown(ddp)


def wrap_model(model: nn.Module, ddp: DistInfo, device: torch.device, compile: bool) -> nn.Module:
    """The module a loop trains: DDP (SyncBatchNorm on CUDA) on several ranks, then compiled."""
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


# --------------------------------------------------------------------------------------------
# collectives of Python objects

#: Tensors handed to this module's collectives that the group's threads may still hold.
_PENDING: list[Tensor] = []


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

    Sleeps in 1 ms steps, which hands the GIL to the thread that needs it, and normally returns
    at once. Returns False if ``timeout_s`` passed first (a collective that never finished).
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
    """Every rank's picklable ``obj``, in rank order, on every rank (collective)."""
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
    """Rank ``src``'s picklable ``obj`` on every rank (collective; others pass anything)."""
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


def on_main(fn: Callable[[], T], ddp: DistInfo) -> T:
    """``fn()`` run on rank 0 alone; its result on every rank, or its exception raised on every
    rank (the exception object itself, :func:`fastclr.errors.portable`), so that no rank trains
    alone or waits in a collective for a rank that has failed (collective)."""
    if ddp.world_size == 1:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if ddp.is_main:
        try:
            outcome = (True, fn())
        except Exception as e:
            broadcast_object((False, portable(e)), 0, ddp)
            raise
    ok, value = broadcast_object(outcome, 0, ddp)
    if not ok:
        raise value
    return value


def agree(finite: Tensor, interrupt: bool, ddp: DistInfo, device: torch.device) -> bool:
    """Make every rank agree on "finite so far" (in place) and on "stop requested"."""
    if ddp.world_size == 1:
        return interrupt
    flags = torch.tensor([0.0 if bool(finite) else 1.0, float(interrupt)], device=device)
    dist.all_reduce(flags)
    _track(flags)
    finite.fill_(bool(flags[0] == 0))
    return bool(flags[1] > 0)


# --------------------------------------------------------------------------------------------
# row gathers of the losses


def _check_same_rows(t: Tensor) -> None:
    """Every rank must contribute the same number of rows (all_gather needs equal shapes)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=t.device))
    counts = [int(s.item()) for s in sizes]
    if any(c != t.shape[0] for c in counts):
        raise ValueError(
            f"gather_distributed=True needs the same number of rows on every rank, got {counts}"
        )


class _AllGather(torch.autograd.Function):
    """Concatenate the rows of every rank; the backward sums the ranks' gradients (module doc)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rows = t.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
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
    if world_size() == 1:
        return t
    _check_same_rows(t)
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def gather_rows(t: Tensor) -> tuple[Tensor, int]:
    """All ranks' rows (with gradient) and the offset of this rank's first row in them."""
    return all_gather_with_grad(t), rank() * t.shape[0]
