"""The training loop's collectives on 2 CPU processes (gloo), and a clean exit right after them.

A finished gloo collective's tensors are freed by the group's worker thread after the caller has
returned, which takes the GIL; a process that starts shutting down first aborts ("terminate
called without an active exception"). :mod:`fastclr.distributed`'s collectives record their
tensors and :func:`~fastclr.distributed.teardown` waits for them. Here: the objects arrive
intact, the record is emptied, and processes that exit right after many gathers exit cleanly.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fastclr import distributed as fd

REPO = Path(__file__).resolve().parents[1]
WORLD = 2


def _worker(rank: int, out_dir: str) -> None:
    info = fd.DistInfo(rank, WORLD, rank, initialised_here=True)
    # DDP keeps the group (and its worker threads) alive past destroy_process_group, as in training
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))
    model(torch.randn(2, 3)).sum().backward()
    # payloads of different lengths per rank (the gather pads to the longest)
    mine = {"rank": rank, "blob": bytes(range(rank * 7 + 3)), "t": torch.arange(rank + 2)}
    gathered = fd.gather_objects(mine, info)
    after_gather = len(fd._PENDING)  # its own tensors at least (released earlier ones are pruned)
    sent = ("verdict", rank) if rank == 1 else None
    received = fd.broadcast_object(sent, 1, info)
    finite = torch.tensor(rank == 0)  # rank 1 saw a non-finite loss
    stop = fd.agree(finite, interrupt=rank == 1, ddp=info, device=torch.device("cpu"))
    released = fd.release_pending(timeout_s=30.0)
    left = len(fd._PENDING)
    fd.teardown(info)
    result = {
        "gathered": gathered,
        "received": received,
        "finite": bool(finite),
        "stop": stop,
        "after_gather": after_gather,
        "released": released,
        "left": left,
    }
    Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


@pytest.mark.slow
def test_collectives_deliver_and_release_their_tensors(spawn_gloo: Callable[..., None]) -> None:
    with tempfile.TemporaryDirectory() as out:
        spawn_gloo(_worker, WORLD, out)
        results = [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    for r in results:
        assert [g["rank"] for g in r["gathered"]] == [0, 1]
        for k, g in enumerate(r["gathered"]):
            assert g["blob"] == bytes(range(k * 7 + 3))
            assert torch.equal(g["t"], torch.arange(k + 2))
        assert r["received"] == ("verdict", 1)  # rank 1's object, on both ranks
        assert r["finite"] is False and r["stop"] is True  # one rank's flags reach every rank
        assert r["after_gather"] >= 6  # its size, 2 sizes, padded input and 2 parts
        assert r["released"] is True and r["left"] == 0


# Exits right after its last gather. A switch interval of 1000 s keeps the main thread from
# handing the GIL to the worker thread while it runs Python, the worst case for the race: with
# dist.all_gather_object and destroy_process_group instead, about half of such runs abort.
_EXIT_SCRIPT = """
import os, sys
sys.setswitchinterval(1000)
import torch, torch.distributed as dist
from fastclr import distributed as fd
info, device = fd.setup_distributed("cpu")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))
for i in range(20):
    got = fd.gather_objects({"rank": info.rank, "pad": os.urandom(64 + i)}, info)
assert [g["rank"] for g in got] == [0, 1]
fd.teardown(info)
"""


@pytest.mark.slow
def test_ranks_exit_cleanly_right_after_gathering(tmp_path: Path) -> None:
    script = tmp_path / "gather_then_exit.py"
    script.write_text(_EXIT_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           str(WORLD), str(script)]  # fmt: skip
    for attempt in range(3):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "terminate called" not in output, (
            f"launch {attempt}: {output[-3000:]}"
        )
