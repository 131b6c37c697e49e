"""Exact contrastive batches larger than memory: gradient caching (Gao et al. 2021).

NT-Xent couples every row of a batch, so accumulating gradients over K small batches optimises a
different loss (K times fewer negatives per anchor). Gradient caching computes the large-batch
gradient exactly, in three steps:

1. embed every chunk of the batch without a graph (``torch.no_grad``), keeping only the (M, D)
   embeddings;
2. evaluate the loss once on all M embeddings, with the embeddings as leaves, and back-propagate it
   to them: the cached gradient dL/dz (M, D);
3. per chunk, forward again with a graph and back-propagate the cached dL/dz of its rows; each
   parameter's ``.grad`` accumulates the chunks' contributions, which sum to dL/dθ.

Memory is one chunk's activations plus O(M·D); the cost is one extra forward (about a third of a
training step). :func:`contrastive_backward` is the public entry point.

Exact semantics of :func:`contrastive_backward`:

- One chunk (``chunk_size >= N``) IS the unchunked step: one forward of ``cat(views)``, one
  backward, bit for bit, with no extra forward.
- Several chunks: the loss sees every embedding at once (all V·N rows as negatives), so its value
  and the gradients equal those of the step whose forward is split into the same chunks, up to
  floating-point rounding. For a model whose rows do not interact (GroupNorm, LayerNorm,
  BatchNorm in eval mode) that is the unchunked step. BatchNorm in train mode normalises each
  chunk by that chunk's statistics: what K data-parallel ranks without SyncBatchNorm compute when
  each holds one chunk (with SyncBatchNorm under DDP, a chunk's statistics are over that chunk on
  every rank). :func:`contrastive_backward_reference` is this computation done the plain way
  (every chunk forwarded with its graph kept, one backward), for tests and benchmarks.
- The first pass over a chunk leaves no trace: every buffer of the model is restored after it,
  and the random-number state (CPU, and the CUDA devices of the inputs and parameters) is rewound
  before the second pass, so both passes see the same statistics and the same dropout masks.
  Running statistics after a step hold one momentum update per chunk, in chunk order (as K
  consecutive steps of ``chunk_size`` samples would leave them), and ``num_batches_tracked``
  grows by K. The random numbers drawn are those of the chunks in order, not those of one forward
  of the whole batch; the state after the step is where that leaves it.
- The loss is called once per step, on embeddings that require grad: a memory bank
  (``NTXentLoss(memory_bank_size=K)``) is pushed exactly once, as in the unchunked step.
- DDP: every chunk but the last runs under the model's ``no_sync()``, so parameter gradients are
  all-reduced once per step; each rank chunks its own rows; a loss with
  ``gather_distributed=True`` gathers the embeddings once per step. DDP's buffer broadcast (rank
  0's buffers to every rank, at a step's first forward) happens once, before the first pass.
  Every rank must make the same number of chunks.
- A step that raises leaves the model's buffers as they were; if it raises during the second
  pass, ``.grad`` may hold part of the step's gradient (zero it before retrying).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["contrastive_backward", "contrastive_backward_reference", "default_embed"]

Embed = Callable[[Any], Tensor]
Autocast = AbstractContextManager[Any] | Callable[[], AbstractContextManager[Any]]


def default_embed(out: Any) -> Tensor:
    """The embedding in a model's output: the output itself if it is a tensor, else the last
    element of a tuple or list (fastclr's ``SimCLR`` returns ``(h, z)``: this picks ``z``)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[-1], Tensor):
        return out[-1]
    raise TypeError(
        f"the model returned {type(out).__name__}, not a tensor or a tuple/list ending in one: "
        "pass embed= (a function from the model's output to the (rows, D) embedding)"
    )


# --------------------------------------------------------------------------------------------
# validation


def _check_views(views: object) -> list[Tensor]:
    if isinstance(views, Tensor) or not isinstance(views, (list, tuple)):
        got = "a single Tensor" if isinstance(views, Tensor) else type(views).__name__
        raise TypeError(
            f"views must be a list or tuple of tensors (one per view, N rows each), got {got}; "
            "pass [x] for one view"
        )
    if len(views) == 0:
        raise ValueError("views is empty: pass one tensor per view, each with N rows")
    for i, v in enumerate(views):
        if not isinstance(v, Tensor):
            raise TypeError(f"views[{i}] must be a torch.Tensor, got {type(v).__name__}")
        if v.dim() < 1 or v.shape[0] < 1:
            raise ValueError(f"views[{i}] must have at least one row, got shape {tuple(v.shape)}")
        first = views[0]
        if v.shape[0] != first.shape[0]:
            raise ValueError(
                f"views[{i}] has {v.shape[0]} rows but views[0] has {first.shape[0]}: every view "
                "holds the same N samples, row i of each view being sample i"
            )
        if v.shape != first.shape or v.dtype != first.dtype or v.device != first.device:
            raise ValueError(
                f"views[{i}] is {tuple(v.shape)} {v.dtype} on {v.device} but views[0] is "
                f"{tuple(first.shape)} {first.dtype} on {first.device}: the views of a chunk are "
                "concatenated into one forward, so they need one shape, dtype and device"
            )
    return list(views)


def _check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(
            f"chunk_size must be an int (samples per forward), got {type(chunk_size).__name__}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (samples per forward), got {chunk_size}")
    return chunk_size


def _check_args(
    model: object, loss_fn: object, labels: object, embed: object, scaler: object, amp: object
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
    if embed is not None and not callable(embed):
        raise TypeError(f"embed must be callable or None, got {type(embed).__name__}")
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(
            f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}"
        )
    if amp is not None and not (isinstance(amp, AbstractContextManager) or callable(amp)):
        raise TypeError(
            "autocast must be a reusable context manager (torch.autocast(...)), a function "
            f"returning one, or None; got {type(amp).__name__}"
        )


def _embedding(embed: Embed, out: Any, rows: int) -> Tensor:
    z = embed(out)
    if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[0] != rows:
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(
            f"embed(model(x)) must be a tensor with one row per input row ({rows}), got {got}: "
            "pass embed= to pick the embedding from the model's output"
        )
    return z


def _scalar_loss(loss: object) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor (reduction 'mean' or 'sum'), got {got}"
        )
    return loss


# --------------------------------------------------------------------------------------------
# the pieces of a step


def _rows(views: list[Tensor], start: int, stop: int) -> Tensor:
    """The model input of samples [start, stop): their rows of every view, view after view."""
    if len(views) == 1:
        return views[0][start:stop]
    return torch.cat([v[start:stop] for v in views])


def _amp_context(amp: Autocast | None) -> AbstractContextManager[Any]:
    if amp is None:
        return contextlib.nullcontext()
    if isinstance(amp, AbstractContextManager):  # anything with __enter__ and __exit__
        return amp
    return amp()


def _forward(
    model: nn.Module, embed: Embed, amp: Autocast | None, views: list[Tensor], start: int, stop: int
) -> Tensor:
    """``embed(model(x))`` for samples [start, stop) under the autocast context."""
    with _amp_context(amp):
        return _embedding(embed, model(_rows(views, start, stop)), len(views) * (stop - start))


def _call_loss(
    loss_fn: Callable[..., Tensor], zs: Sequence[Tensor], labels: Tensor | None
) -> Tensor:
    loss = loss_fn(*zs) if labels is None else loss_fn(*zs, labels=labels)
    return _scalar_loss(loss)


def _backward_loss(loss: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _no_grad_reaches() -> ValueError:
    return ValueError(
        "the embedding does not require grad: nothing to back-propagate through model (no "
        "trainable parameter reaches the embedding)"
    )


def _check_trainable(model: nn.Module) -> None:
    if not torch.is_grad_enabled():
        raise RuntimeError(
            "gradients are disabled (called under torch.no_grad()?): nothing to back-propagate "
            "through model"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "no parameter of model requires grad: nothing to back-propagate through model"
        )


# --------------------------------------------------------------------------------------------
# state the first pass must not change: buffers, random numbers, DDP's buffer broadcast


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (``_orig_mod``), if any."""
    inner = getattr(model, "_orig_mod", model)
    return inner if isinstance(inner, nn.Module) else model


def _ddp(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    inner = _unwrap(model)
    return inner if isinstance(inner, nn.parallel.DistributedDataParallel) else None


BufferState = list[tuple[nn.Module, str, Tensor, Tensor]]


def _save_buffers(model: nn.Module) -> BufferState:
    """(module, name, buffer, copy) of every buffer: what the first pass must leave unchanged."""
    saved: BufferState = []
    for mod in model.modules():
        for name, buf in mod.named_buffers(recurse=False):
            if buf is not None:
                saved.append((mod, name, buf, buf.detach().clone()))
    return saved


@torch.no_grad()
def _restore_buffers(saved: BufferState) -> None:
    """Put every buffer back: in place, and re-registered where a module replaced it."""
    for mod, name, buf, copy in saved:
        buf.copy_(copy)
        if getattr(mod, name) is not buf:
            setattr(mod, name, buf)


@contextlib.contextmanager
def _restored_on_error(saved: BufferState) -> Iterator[None]:
    """Put the buffers back when the block raises (anything, Ctrl-C included), then re-raise."""
    try:
        yield
    except BaseException:
        _restore_buffers(saved)
        raise


def _rng_devices(model: nn.Module, views: list[Tensor]) -> list[torch.device]:
    """The CUDA devices whose generators the model may draw from (the inputs' and parameters')."""
    found = [views[0].device]
    p = next(model.parameters(), None)
    if p is not None:
        found.append(p.device)
    index = {
        d.index if d.index is not None else torch.cuda.current_device()
        for d in found
        if d.type == "cuda"
    }
    return [torch.device("cuda", i) for i in sorted(index)]


RngState = tuple[Tensor, list[Tensor]]


def _get_rng(cuda: list[torch.device]) -> RngState:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def _set_rng(cuda: list[torch.device], state: RngState) -> None:
    cpu, per_device = state
    torch.set_rng_state(cpu)
    for d, s in zip(cuda, per_device, strict=True):
        torch.cuda.set_rng_state(s, d)


def _sync_ddp_buffers_once(model: nn.Module) -> None:
    """Do now the buffer broadcast DDP does at a step's first forward, and skip it there.

    DDP (``broadcast_buffers=True``) copies rank 0's buffers to every rank at the first forward
    of a step. That forward is now in the first pass, whose effect on buffers is undone; doing the
    broadcast before the buffers are saved keeps DDP's semantics (every rank starts the step from
    rank 0's running statistics) and gives both passes the same buffers.
    """
    ddp = _ddp(model)
    if ddp is None or not ddp.will_sync_module_buffers() or hasattr(ddp, "buffer_hook"):
        return
    ddp._sync_buffers()
    ddp.require_forward_param_sync = False


def _no_sync(model: nn.Module, last: bool) -> AbstractContextManager[Any]:
    """DDP's (or FSDP's) ``no_sync()`` for every chunk but the last: one all-reduce per step."""
    no_sync = getattr(model, "no_sync", None)
    if last or not callable(no_sync):
        return contextlib.nullcontext()
    ctx: AbstractContextManager[Any] = no_sync()
    return ctx


def _bounds(n: int, chunk: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


# --------------------------------------------------------------------------------------------
# the step


def _plain_step(
    model: nn.Module,
    views: list[Tensor],
    loss_fn: Callable[..., Tensor],
    labels: Tensor | None,
    embed: Embed,
    scaler: torch.amp.GradScaler | None,
    amp: Autocast | None,
) -> Tensor:
    """One chunk: the unchunked step itself (one forward, one backward)."""
    n = views[0].shape[0]
    # a step that fails before its backward leaves no statistics behind
    with _restored_on_error(_save_buffers(_unwrap(model))):
        z = _forward(model, embed, amp, views, 0, n)
        if not z.requires_grad:
            raise _no_grad_reaches()
        loss = _call_loss(loss_fn, z.split(n), labels)
    _backward_loss(loss, scaler)
    return loss.detach()


def _embed_chunks(
    model: nn.Module,
    views: list[Tensor],
    chunk: int,
    embed: Embed,
    amp: Autocast | None,
    cuda: list[torch.device],
) -> tuple[list[Tensor], list[RngState]]:
    """Pass 1: every view's (N, D) embeddings without a graph, and the random-number state each
    chunk started from."""
    n, n_views = views[0].shape[0], len(views)
    zs: list[Tensor] = []
    states: list[RngState] = []
    with torch.no_grad():
        for start, stop in _bounds(n, chunk):
            states.append(_get_rng(cuda))
            z = _forward(model, embed, amp, views, start, stop)
            if not zs:
                zs = [z.new_empty((n, *z.shape[1:])) for _ in range(n_views)]
            for v, part in enumerate(z.split(stop - start)):
                zs[v][start:stop] = part
    return zs, states


def _backward_chunks(
    model: nn.Module,
    views: list[Tensor],
    chunk: int,
    embed: Embed,
    amp: Autocast | None,
    grads: list[Tensor],
    cuda: list[torch.device],
    states: list[RngState],
) -> None:
    """Pass 3: per chunk, forward with a graph (same random numbers as pass 1) and back-propagate
    the cached embedding gradients of its rows."""
    n = views[0].shape[0]
    bounds = list(_bounds(n, chunk))
    for c, (start, stop) in enumerate(bounds):
        _set_rng(cuda, states[c])
        with _no_sync(model, last=c == len(bounds) - 1):
            z = _forward(model, embed, amp, views, start, stop)
            if not z.requires_grad:
                raise _no_grad_reaches()
            g = (
                torch.cat([gv[start:stop] for gv in grads])
                if len(grads) > 1
                else grads[0][start:stop]
            )
            torch.autograd.backward(z, g.to(z.dtype))


def _cached_step(
    model: nn.Module,
    views: list[Tensor],
    chunk: int,
    loss_fn: Callable[..., Tensor],
    labels: Tensor | None,
    embed: Embed,
    scaler: torch.amp.GradScaler | None,
    amp: Autocast | None,
) -> Tensor:
    """Several chunks: embed without a graph, loss and dL/dz once, then chunk by chunk backward."""
    cuda = _rng_devices(model, views)
    _sync_ddp_buffers_once(model)
    saved = _save_buffers(_unwrap(model))
    try:
        zs, states = _embed_chunks(model, views, chunk, embed, amp, cuda)
    finally:  # also when the model or embed raises: a failed step leaves no statistics behind
        _restore_buffers(saved)
    leaves = [z.requires_grad_() for z in zs]
    with torch.enable_grad():
        loss = _call_loss(loss_fn, leaves, labels)
        _backward_loss(loss, scaler)
    after = _get_rng(cuda)  # where the unchunked step leaves it: after the forward and the loss
    grads = [z.grad if z.grad is not None else torch.zeros_like(z) for z in leaves]
    del zs, leaves
    # on failure .grad may hold part of the step's gradient: zero it before retrying
    with _restored_on_error(saved):
        _backward_chunks(model, views, chunk, embed, amp, grads, cuda, states)
    _set_rng(cuda, after)
    return loss.detach()


def contrastive_backward(
    model: nn.Module,
    views: Sequence[Tensor],
    loss_fn: Callable[..., Tensor],
    *,
    chunk_size: int,
    labels: Tensor | None = None,
    embed: Embed | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast: Autocast | None = None,
) -> Tensor:
    """Back-propagate a contrastive loss over a batch larger than one forward can hold, exactly.

    Computes, chunk by chunk, the gradient of ::

        loss_fn(*[z[v] for v in views], labels=labels)      # labels only when given

    where ``z = embed(model(cat(chunk's rows of every view)))`` for chunks of ``chunk_size``
    samples, and ADDS it to every parameter's ``.grad`` as ``loss.backward()`` does (zero the
    gradients before, step the optimiser after). Gradient caching (Gao et al. 2021): embed all
    chunks without a graph, take the loss and dL/dz once, then forward each chunk again with a
    graph and back-propagate its rows of dL/dz. Memory is one chunk's activations plus the
    (V·N, D) embeddings and their gradient; the cost is one extra forward.

    Exact semantics (one chunk is the unchunked step bit for bit; BatchNorm, running
    statistics, random numbers, memory banks, DDP): see the module docstring.

    Args:
        model: any ``nn.Module`` (DDP- and ``torch.compile``-wrapped ones included).
        views: V tensors of N rows each (images: (N, C, H, W)); row i of every view is sample
            i. One forward takes the rows of a chunk of every view, concatenated view after
            view; for one view with ``labels`` pass ``[x]``.
        loss_fn: called once as ``loss_fn(z_1, ..., z_V)`` (or with ``labels=labels``) on the
            (N, D) embeddings of each view; must return a scalar tensor.
        chunk_size: samples per forward (a forward sees V·chunk_size rows); the last chunk may
            be smaller. ``>= N`` gives the unchunked step.
        labels: passed to ``loss_fn`` as ``labels=`` unchanged (not split).
        embed: picks the embedding from the model's output, called inside the autocast
            context; default :func:`default_embed` (the output, or its last element: ``z`` of
            fastclr's ``SimCLR``). fastclr's training step uses ``lambda out: out[1].float()``.
        scaler: a ``torch.amp.GradScaler``: ``scaler.scale(loss)`` is back-propagated, as in the
            unchunked step; call ``scaler.step`` / ``scaler.update`` after.
        autocast: wraps every forward (not the loss): a reusable context manager such as
            ``torch.autocast("cuda", dtype=torch.bfloat16)``, or a function returning one.

    Returns:
        The loss, detached (the value ``loss_fn`` returned, unscaled).

    Raises:
        TypeError / ValueError: one message naming the argument at fault (``views`` of unequal
            rows or shapes, ``chunk_size`` not an int >= 1, a non-scalar loss, an ``embed``
            output without one row per input row, an embedding no parameter reaches).

    Example:
        >>> model = fastclr.models.build_model("resnet18", "cifar")
        >>> loss_fn = fastclr.NTXentLoss(temperature=0.5)
        >>> optimizer.zero_grad()
        >>> loss = fastclr.contrastive_backward(model, [v1, v2], loss_fn, chunk_size=256)
        >>> optimizer.step()
    """
    views = _check_views(views)
    chunk = _check_chunk_size(chunk_size)
    _check_args(model, loss_fn, labels, embed, scaler, autocast)
    _check_trainable(model)
    pick = default_embed if embed is None else embed
    if chunk >= views[0].shape[0]:
        return _plain_step(model, views, loss_fn, labels, pick, scaler, autocast)
    return _cached_step(model, views, chunk, loss_fn, labels, pick, scaler, autocast)


def contrastive_backward_reference(
    model: nn.Module,
    views: Sequence[Tensor],
    loss_fn: Callable[..., Tensor],
    *,
    chunk_size: int,
    labels: Tensor | None = None,
    embed: Embed | None = None,
    autocast: Autocast | None = None,
) -> Tensor:
    """What :func:`contrastive_backward` equals, computed the plain way: every chunk forwarded
    with its graph kept (memory of the whole batch), then one backward of the loss.

    Row interactions inside a forward (BatchNorm), running statistics and random numbers are those
    of the chunks in order, as in :func:`contrastive_backward`. For tests and benchmarks.

    Returns:
        The loss, detached.
    """
    views = _check_views(views)
    chunk = _check_chunk_size(chunk_size)
    pick = default_embed if embed is None else embed
    n, n_views = views[0].shape[0], len(views)
    parts = [_forward(model, pick, autocast, views, a, b) for a, b in _bounds(n, chunk)]
    per_view = [
        torch.cat([p.split(p.shape[0] // n_views)[v] for p in parts]) for v in range(n_views)
    ]
    loss = _call_loss(loss_fn, per_view, labels)
    loss.backward()
    return loss.detach()
