"""``fastclr.contrastive_backward`` against K data-parallel ranks, each holding one chunk.

Two gloo processes run fastclr's ResNet (BatchNorm) in DDP without SyncBatchNorm, the loss with
``gather_distributed=True``, in one spawn (starting the processes and DDP's first import
dominate the cost):

- one process chunking the 8 samples by 4 equals the 2 ranks each holding 4: gradients within
  ``fastclr.testing``'s rule, running statistics as the ranks' updates one after the other;
- ranks that chunk their own share (2 chunks each) give the gradients of the 4 chunks in one
  process, with as many all-reduce calls as the unchunked step (``no_sync`` for all but the
  last chunk), and start the next step from rank 0's buffers (DDP's broadcast kept).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

import fastclr
from fastclr.loss import NTXentLoss
from fastclr.models import build_model
from fastclr.testing import assert_close_to_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet() -> nn.Module:
    """fastclr's default encoder (ResNet-18, BatchNorm) at width 1/16 with an 8-d head."""
    torch.manual_seed(0)
    return build_model("resnet18", "cifar", width=1 / 16, proj_dim=8)


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _plain_step(model: nn.Module, views: list[Tensor], loss_fn: nn.Module) -> Tensor:
    """The unchunked step, written out: one forward of every view, the loss, one backward."""
    z = model(torch.cat(views))[1].float()
    loss = loss_fn(*z.split(views[0].shape[0]))
    loss.backward()
    return loss.detach()


WORLD = 2
PER_RANK = 4  # samples per rank; the single process chunks the 8 samples by 4 (or by 2)
BN_MOMENTUM = 0.1  # torch's BatchNorm default, which fastclr's ResNet keeps


def _global_views(seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(WORLD * PER_RANK, 3, 8, 8, generator=g) for _ in range(2)]


def _shard(views: list[Tensor], rank: int) -> list[Tensor]:
    return [v[rank * PER_RANK : (rank + 1) * PER_RANK] for v in views]


def _ddp(counter: list[int]) -> nn.parallel.DistributedDataParallel:
    """fastclr's ResNet in DDP (no SyncBatchNorm), counting its all-reduce calls."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    model = nn.parallel.DistributedDataParallel(_resnet())

    def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
        counter[0] += 1
        return allreduce_hook(state, bucket)

    model.register_comm_hook(None, hook)
    return model


def _snapshot(model: nn.Module, loss: Tensor, calls: list[int]) -> dict[str, Any]:
    return {
        "loss": loss,
        "grads": _grads(model),
        "buffers": [b.clone() for b in model.buffers()],
        "allreduces": calls[0],
    }


def _ddp_worker(rank: int, out_dir: str) -> None:
    mine = _shard(_global_views(1), rank)
    out: dict[str, Any] = {}
    # one chunk per rank: the plain DDP step, embeddings gathered by the loss
    calls = [0]
    plain = _ddp(calls)
    loss = _plain_step(plain, mine, NTXentLoss(gather_distributed=True))
    out["plain"] = _snapshot(plain.module, loss, calls)
    # each rank chunks its own share in two: no_sync, one all-reduce per step
    calls = [0]
    chunked = _ddp(calls)
    loss_fn = NTXentLoss(gather_distributed=True)
    loss = fastclr.contrastive_backward(chunked, mine, loss_fn, chunk_size=PER_RANK // 2)
    out["chunked"] = _snapshot(chunked.module, loss, calls)
    # a second step starts from rank 0's running statistics (DDP's buffer broadcast)
    chunked.zero_grad(set_to_none=True)
    step2 = _shard(_global_views(2), rank)
    loss = fastclr.contrastive_backward(chunked, step2, loss_fn, chunk_size=PER_RANK // 2)
    out["step2"] = _snapshot(chunked.module, loss, calls)
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_ranks(spawn_gloo: Callable[..., None]) -> list[dict[str, Any]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    with tempfile.TemporaryDirectory() as tmp:
        spawn_gloo(_ddp_worker, WORLD, tmp)
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]


def test_equals_ranks_each_holding_one_chunk(
    ddp_ranks: list[dict[str, Any]], chunked_references: Callable[..., Any]
) -> None:
    """One process, chunks of PER_RANK samples == WORLD DDP ranks without SyncBatchNorm each
    holding one (loss with gather_distributed=True): loss, gradients (DDP's average), and the
    running statistics, which hold the ranks' updates one after the other."""
    ranks = [r["plain"] for r in ddp_ranks]
    model = _resnet()
    initial = [b.clone() for b in model.buffers()]
    loss = fastclr.contrastive_backward(model, _global_views(1), NTXentLoss(), chunk_size=PER_RANK)
    ref64, ref32 = map(_grads, chunked_references(_resnet, _global_views(1), PER_RANK))
    ddp_grads = ranks[0]["grads"]
    assert all(torch.equal(a, b) for a, b in zip(ddp_grads, ranks[1]["grads"], strict=True))
    # DDP agrees with the exact value as well as fp32 can, and the chunked step as well as DDP
    assert_close_to_reference(ddp_grads, ref64, ref32, name="DDP ranks vs fp64")
    assert_close_to_reference(_grads(model), ref64, ddp_grads, name="chunked vs fp64")
    torch.testing.assert_close(loss, torch.stack([r["loss"] for r in ranks]).mean())
    # rank r updated r0 with its chunk once: R_r = (1-m)·r0 + m·s_r. One process, K = 2 updates
    # in chunk order: (1-m)·R_0 + m·s_1 = (1-m)·R_0 + R_1 − (1-m)·r0.
    keep = 1 - BN_MOMENTUM
    for got, r0, b0, b1 in zip(
        model.buffers(), initial, ranks[0]["buffers"], ranks[1]["buffers"], strict=True
    ):
        if got.dtype == torch.long:  # num_batches_tracked: one per chunk, one per rank
            assert (int(got - r0), int(b0 - r0), int(b1 - r0)) == (WORLD, 1, 1)
        else:
            torch.testing.assert_close(got, keep * b0 + b1 - keep * r0)


def test_ddp_ranks_chunking_their_share(
    ddp_ranks: list[dict[str, Any]], chunked_references: Callable[..., Any]
) -> None:
    """Under DDP each rank chunks its own rows (2 chunks per rank): the gradients are those of
    the 4 chunks in one process, with one all-reduce per step, as many as the unchunked step."""
    ranks = [r["chunked"] for r in ddp_ranks]
    ref64, ref32 = map(_grads, chunked_references(_resnet, _global_views(1), PER_RANK // 2))
    assert_close_to_reference(ranks[0]["grads"], ref64, ref32, name="DDP + chunks vs fp64")
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["grads"], ranks[1]["grads"], strict=True))
    model = _resnet()
    want = fastclr.contrastive_backward(
        model, _global_views(1), NTXentLoss(), chunk_size=PER_RANK // 2
    )
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), want)
    plain_calls = ddp_ranks[0]["plain"]["allreduces"]
    assert plain_calls >= 1
    assert [r["allreduces"] for r in ranks] == [plain_calls] * WORLD


def test_ddp_buffer_broadcast_kept(ddp_ranks: list[dict[str, Any]]) -> None:
    """DDP copies rank 0's buffers to every rank at a step's start; the chunked step keeps that:
    after step 2, rank 1 holds rank 0's statistics after step 1 updated by its own two chunks."""
    r0_step1 = ddp_ranks[0]["chunked"]["buffers"]
    r1_step1, r1_step2 = ddp_ranks[1]["chunked"]["buffers"], ddp_ranks[1]["step2"]["buffers"]
    assert not all(torch.equal(a, b) for a, b in zip(r0_step1, r1_step1, strict=True))
    model = _resnet()
    with torch.no_grad():
        for b, want in zip(model.buffers(), r0_step1, strict=True):
            b.copy_(want)
        v1, v2 = _shard(_global_views(2), 1)
        for start in range(0, PER_RANK, PER_RANK // 2):
            model(torch.cat([v1[start : start + 2], v2[start : start + 2]]))
    for got, want in zip(r1_step2, model.buffers(), strict=True):
        torch.testing.assert_close(got, want)
