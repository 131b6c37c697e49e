"""``gather_distributed=True`` on 2 CPU processes (gloo) equals the single-process loss.

The workers turn FutureWarning into an error, so a gather through a deprecated torch API fails.

Each rank holds a shard of the batch; with the usual DDP averaging (mean of the per-rank losses,
gradients divided by the world size) loss and input gradients must equal those of the
single-process loss on the concatenated batch, for every backend, in views and labels mode.
All cases run in one spawn of two processes (starting processes dominates the cost).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import fastclr
from fastclr.compat.lightly import NTXentLoss as LightlyNTXentLoss
from fastclr.compat.solo import simclr_loss_func
from fastclr.reference import (
    lightly_memory_bank_reference,
    ntxent_reference,
    solo_simclr_reference,
    views_to_batch,
)
from fastclr.testing import assert_close_to_reference

WORLD = 2
N_LOCAL = 5  # samples per rank (views mode); rows per rank in labels mode: 2·N_LOCAL
D = 12
SEED = 1234
BANK = 16  # memory bank rows in "lightly-bank" (more than the 10 rows of one gathered step)


def _backends() -> list[str]:
    names = ["reference"]
    available = fastclr.available_backends()
    # The ranks hold CPU tensors (gloo), which the Triton kernels only take under the interpreter.
    if "triton" in available and os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    if "native" in available:
        names.append("native")
    return names


# (backend, mode, temperature); τ = 0.01 exercises the kernels' online (small-τ) path.
# "labels-in": SupCon's L_in (positives="in"); "solo": fastclr.compat.solo, which gathers whenever
# torch.distributed is initialised, as solo-learn does; "lightly-bank": fastclr.compat.lightly with
# a memory bank and gather_distributed=True (local anchors, every rank's out1 enqueued).
def _cases() -> list[tuple[str, str, float]]:
    out = []
    for b in _backends():
        for mode in ("views", "labels", "cross", "labels-in", "solo", "lightly-bank"):
            out.append((b, mode, 0.5))
        out.append((b, "views", 0.01))
    return out


def _global_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (zi, zj) of WORLD·N_LOCAL samples, and a batch z for the labels modes."""
    g = torch.Generator().manual_seed(SEED)
    n = WORLD * N_LOCAL
    zi = torch.randn(n, D, generator=g)
    zj = zi + 0.5 * torch.randn(n, D, generator=g)
    z = torch.randn(2 * n, D, generator=g)
    return zi, zj, z


def _labels(mode: str) -> torch.Tensor:
    """ "labels": every label occurs >= 2 times, within and across ranks; "cross": each rank's
    local labels are distinct, so every positive lives on the other rank (none locally)."""
    n = WORLD * N_LOCAL
    return torch.arange(2 * n) % (n if mode == "cross" else n - 1)


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    rows = t.shape[0] // WORLD
    return t[rank * rows : (rank + 1) * rows]


def _worker(rank: int, port: int, cases: list[tuple[Any, str, float]], out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # the gather must not go through a deprecated torch API (FutureWarning from torch 2.13 on)
    warnings.simplefilter("error", FutureWarning)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        zi, zj, z = _global_data()
        results = []
        for backend, mode, tau in cases:
            extra = None
            if mode == "lightly-bank":
                torch.manual_seed(SEED)  # the same initial bank on every rank
                fn = LightlyNTXentLoss(tau, (BANK, D), gather_distributed=True, backend=backend)
                leaves = [_shard(zi, rank).clone().requires_grad_(), _shard(zj, rank).clone()]
                leaves[1].requires_grad_()
                loss = fn(*leaves)
                extra = fn.bank.clone()
            elif mode == "views":
                leaves = [_shard(zi, rank).clone().requires_grad_(), _shard(zj, rank).clone()]
                leaves[1].requires_grad_()
                loss = fastclr.ntxent(
                    *leaves, temperature=tau, backend=backend, gather_distributed=True
                )
            elif mode == "solo":
                leaves = [_shard(z, rank).clone().requires_grad_()]
                loss = simclr_loss_func(
                    leaves[0], _shard(_labels(mode), rank), temperature=tau, backend=backend
                )
            else:
                leaves = [_shard(z, rank).clone().requires_grad_()]
                loss = fastclr.ntxent(
                    leaves[0],
                    labels=_shard(_labels(mode), rank),
                    temperature=tau,
                    backend=backend,
                    gather_distributed=True,
                    positives="in" if mode == "labels-in" else "out",
                )
            loss.backward()
            grads = [t.grad.detach() for t in leaves]  # type: ignore[union-attr]
            results.append((loss.detach(), grads, extra))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # succeeded: end without the interpreter's shutdown, which sometimes aborts after a gloo
    # group (conftest.exit_quietly says more); a worker that raised never gets here
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def distributed_results(free_port: Callable[[], int]) -> dict[tuple[str, str, float], list]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    cases = _cases()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(free_port(), cases, tmp), nprocs=WORLD, join=True)
        per_rank = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]
    return {case: [per_rank[r][i] for r in range(WORLD)] for i, case in enumerate(cases)}


def _single_process(mode: str, tau: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The float64 definition on the concatenated batch, and its input gradients."""
    zi, zj, z = _global_data()
    if mode == "lightly-bank":
        torch.manual_seed(SEED)
        bank = F.normalize(torch.randn(BANK, D), dim=-1)
        leaves = [zi.double().requires_grad_(), zj.double().requires_grad_()]
        loss = lightly_memory_bank_reference(leaves[0], leaves[1], bank, tau)
        loss.backward()
        return loss.detach(), [t.grad.detach() for t in leaves]  # type: ignore[union-attr]
    if mode == "views":
        leaves = [zi.double().requires_grad_(), zj.double().requires_grad_()]
        batch, lab = views_to_batch(leaves)
    else:
        leaves = [z.double().requires_grad_()]
        batch, lab = leaves[0], _labels(mode)
    if mode == "solo":
        loss = solo_simclr_reference(batch, lab, tau)
    else:
        loss = ntxent_reference(batch, lab, tau, positives="in" if mode == "labels-in" else "out")
    loss.backward()
    return loss.detach(), [t.grad.detach() for t in leaves]  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c[0]}-{c[1]}-tau{c[2]}")
def test_gather_distributed_matches_single_process(
    case: tuple[str, str, float], distributed_results: dict
) -> None:
    _, mode, tau = case
    ranks = distributed_results[case]
    want_loss, want_grads = _single_process(mode, tau)
    # DDP averaging: mean of the per-rank losses, per-rank gradients divided by the world size
    got_loss = torch.stack([loss.double() for loss, _, _ in ranks]).mean()
    scale = max(1.0, abs(float(want_loss)))
    assert_close_to_reference(got_loss, want_loss, atol=2e-5 * scale, name=f"{case} loss")
    for v, want in enumerate(want_grads):
        got = torch.cat([grads[v] for _, grads, _ in ranks]) / WORLD
        gscale = max(1e-3, float(want.abs().max()))
        assert_close_to_reference(got, want, atol=5e-5 * gscale, name=f"{case} grad {v}")


def test_lightly_bank_enqueues_every_ranks_keys(distributed_results: dict) -> None:
    """With gather_distributed=True lightly enqueues the gathered out1 of all ranks, in rank
    order, so every rank holds the same bank: the initial one with its first rows replaced."""
    _, zj, _ = _global_data()
    torch.manual_seed(SEED)
    want = F.normalize(torch.randn(BANK, D), dim=-1)
    want[: zj.shape[0]] = F.normalize(zj, dim=1)
    for case, ranks in distributed_results.items():
        if case[1] != "lightly-bank":
            continue
        for _, _, bank in ranks:
            assert_close_to_reference(bank, want, atol=1e-6, name=f"{case} bank")


def test_distributed_cases_cover_every_backend() -> None:
    names = {c[0] for c in _cases()}
    assert "reference" in names
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert "triton" in names
