"""Peers' losses against fastclr.compat's drop-ins, at the batch sizes each peer's users run.

    python bench/compat_bench.py --supcontrast-src DIR --solo-learn-src DIR   # record
    python bench/compat_bench.py --quick --no-save                           # a quick look

Each pair is the peer's own implementation (where it is importable here) and the fastclr.compat
entry point that replaces it, called the same way; both are first checked against the float64
definition of the peer's loss (value and input gradients), then timed and their peak extra memory
measured. The speed-up column is peer time / fastclr time.

How it is timed, so that a shared machine's load does not move the ratios: one intra-op thread
(``--threads``), the CPU time of the process per call (``time.process_time``: time spent waiting
for a core is not counted), forward+backward, in rounds that call each implementation of a case
once, in alternating order; the time is the median over ``--rounds`` rounds (7), and the
per-round ratios give the range shown beside the speed-up. On CUDA, wall time with
synchronisation.

Cases (D = 128, float32 on CPU, bfloat16 on CUDA):

* lightly ``NTXentLoss`` without a bank: SimCLR at N = 256 and 512 samples (M = 2N rows);
* lightly ``NTXentLoss`` with a memory bank (MoCo form): N = 256 against K = 4096 and 65536 keys;
* pytorch-metric-learning ``NTXentLoss`` (two views as labels) at M = 256 and 512 rows and
  ``SupConLoss`` (100 classes) at M = 512 and 1024;
* solo-learn ``simclr_loss_func`` (two crops) at M = 512 and 1024;
* SupContrast ``SupConLoss`` (two views, 100 classes, unit features as its models give) at
  bsz = 256 and 512 (M = 512 and 1024).

lightly needs the ``.venv-peers`` environment (``make setup-peers``). solo-learn and SupContrast
do not install from PyPI here: pass a checkout of each (``--solo-learn-src``, the root of
vturrisi/solo-learn; ``--supcontrast-src``, the root of HobbitLong/SupContrast). SupContrast's
``losses.py`` is imported from the checkout as it is. solo-learn's ``solo/losses/simclr.py`` is
imported from the file (its package imports Lightning, timm and omegaconf), with the two helpers
it takes from ``solo.utils.misc`` given what they return in one process: ``gather(X)`` the
concatenation of the one rank's ``X``, ``get_rank()`` 0. Without a checkout the peer's row says
"skipped".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from measure import peak_extra_mb

from fastclr.compat import lightly as fc_lightly
from fastclr.compat import pml as fc_pml
from fastclr.compat import solo as fc_solo
from fastclr.compat import supcon as fc_supcon
from fastclr.reference import (
    lightly_memory_bank_reference,
    ntxent_reference,
    pml_ntxent_reference,
    solo_simclr_reference,
    supcontrast_reference,
    views_to_batch,
)
from fastclr.testing import assert_close_to_reference

TAU_LIGHTLY = 0.5
TAU_PML_NTXENT = 0.07
TAU_PML_SUPCON = 0.1
TAU_SOLO = 0.1
TAU_SUPCONTRAST = 0.07
N_CLASSES = 100  # supervised cases: labels i mod 100
ROUNDS = 7
THREADS = 1
RESULTS = Path(__file__).resolve().parent / "results" / "compat-cpu.md"


@dataclass
class CompatRow:
    case: str
    impl: str
    rows: int
    keys: int
    fwdbwd_ms: float | None = None
    mem_mb: float | None = None
    speedup: float | None = None
    speedup_range: tuple[float, float] | None = None
    status: str = "ok"
    round_ms: list[float] = field(default_factory=list)


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Impl:
    """One implementation of a case: ``fn(a, b)`` and the float64 definition it must match."""

    name: str
    fn: Loss
    definition: Loss


@dataclass
class PeerSources:
    """Checkouts of the peers that do not install from PyPI (None: not timed)."""

    supcontrast: Path | None = None
    solo_learn: Path | None = None


# --------------------------------------------------------------------------------------------
# the peers


def _import_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _solo_from_checkout(root: Path) -> Loss:
    """solo-learn's simclr_loss_func from its file, its two misc helpers at one-process values."""
    if "solo.utils.misc" not in sys.modules:
        misc = types.ModuleType("solo.utils.misc")
        misc.gather = lambda x, dim=0: torch.cat((x,), dim=dim)  # type: ignore[attr-defined]
        misc.get_rank = lambda: 0  # type: ignore[attr-defined]
        for name in ("solo", "solo.utils"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["solo.utils.misc"] = misc
    module = _import_file("solo_learn_simclr", root / "solo" / "losses" / "simclr.py")
    return module.simclr_loss_func  # type: ignore[no-any-return]


def _peer(name: str, sources: PeerSources) -> Any:
    """The peer's loss class / module / function, or None where it is not importable here."""
    try:
        if name == "lightly":
            from lightly.loss import NTXentLoss

            return NTXentLoss
        if name == "pml":
            from pytorch_metric_learning import losses

            return losses
        if name == "solo":
            try:
                from solo.losses.simclr import simclr_loss_func  # an installed solo-learn

                return simclr_loss_func
            except ImportError:
                return _solo_from_checkout(sources.solo_learn) if sources.solo_learn else None
        if sources.supcontrast is None:
            return None
        return _import_file("supcontrast_losses", sources.supcontrast / "losses.py").SupConLoss
    except Exception:  # not installed, or a checkout that does not import
        return None


def _cases(quick: bool) -> list[tuple[str, int, int]]:
    """(case, N or M, K): the batch sizes the peers' users run, cut down for --quick."""
    out = [("lightly SimCLR", n, 0) for n in ((256,) if quick else (256, 512))]
    out += [("lightly MoCo bank", 256, k) for k in ((4096,) if quick else (4096, 65536))]
    # PML's NTXentLoss materialises every (positive, negative) pair: O(M³) time and memory
    out += [("PML NTXentLoss", m, 0) for m in ((256,) if quick else (256, 512))]
    out += [("PML SupConLoss", m, 0) for m in ((512,) if quick else (512, 1024))]
    out += [("solo-learn SimCLR", m, 0) for m in ((512,) if quick else (512, 1024))]
    out += [("SupContrast SupCon", m, 0) for m in ((512,) if quick else (512, 1024))]
    return out


def _labels(case: str, m: int) -> torch.Tensor:
    if case in ("PML NTXentLoss", "solo-learn SimCLR"):
        return torch.arange(m // 2).repeat(2)  # two views of m/2 samples
    return torch.arange(m) % N_CLASSES


def _build(case: str, n: int, k: int, d: int, backend: str, sources: PeerSources) -> list[Impl]:
    """The peer (if importable) then fastclr, each with the float64 definition of its loss.

    Every ``fn(a, b)`` takes two (N, D) views for lightly, and (M, D) rows + labels for the
    others (SupContrast's (bsz, 2, D) features are the two halves of the rows, stacked).
    """
    ours = f"fastclr.compat[{backend}]"
    if case.startswith("lightly"):
        size = (k, d) if k else 0
        peer = _peer("lightly", sources)
        impls = []
        torch.manual_seed(0)
        if peer is not None:
            theirs = peer(TAU_LIGHTLY, size)
            impls.append(Impl("lightly", theirs, partial(_lightly_definition, theirs)))
        torch.manual_seed(0)  # the same initial bank for both
        mine = fc_lightly.NTXentLoss(TAU_LIGHTLY, size, backend=backend)  # type: ignore[arg-type]
        return [*impls, Impl(ours, mine, partial(_lightly_definition, mine))]
    if case.startswith("PML"):
        which = "NTXentLoss" if "NTXent" in case else "SupConLoss"
        if which == "NTXentLoss":
            definition = partial(pml_ntxent_reference, temperature=TAU_PML_NTXENT)
        else:
            definition = partial(ntxent_reference, temperature=TAU_PML_SUPCON)
        tau = definition.keywords["temperature"]
        pml = _peer("pml", sources)
        impls = (
            []
            if pml is None
            else [Impl("pytorch-metric-learning", getattr(pml, which)(tau), definition)]
        )
        return [*impls, Impl(ours, getattr(fc_pml, which)(tau, backend=backend), definition)]
    if case.startswith("solo"):
        solo_def = partial(solo_simclr_reference, temperature=TAU_SOLO)
        solo = _peer("solo", sources)
        impls = (
            []
            if solo is None
            else [Impl("solo-learn", partial(solo, temperature=TAU_SOLO), solo_def)]
        )
        mine_fn = partial(fc_solo.simclr_loss_func, temperature=TAU_SOLO, backend=backend)
        return [*impls, Impl(ours, mine_fn, solo_def)]
    sc_def = partial(_as_supcontrast, partial(supcontrast_reference, temperature=TAU_SUPCONTRAST))
    supcontrast = _peer("supcontrast", sources)
    impls = []
    if supcontrast is not None:
        impls.append(
            Impl("SupContrast", partial(_as_supcontrast, supcontrast(TAU_SUPCONTRAST)), sc_def)
        )
    mine_sc = fc_supcon.SupConLoss(TAU_SUPCONTRAST, backend=backend)  # type: ignore[arg-type]
    return [*impls, Impl(ours, partial(_as_supcontrast, mine_sc), sc_def)]


def _as_supcontrast(
    loss: Callable[..., torch.Tensor], rows: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Call a SupContrast-style loss on (2·bsz, D) rows and their labels: features (bsz, 2, D),
    view v of sample i being row v·bsz + i, and the bsz samples' labels."""
    return loss(_views(rows), labels[: len(labels) // 2])


def _views(rows: torch.Tensor) -> torch.Tensor:
    """(2·bsz, D) rows → SupContrast's (bsz, 2, D) features (view v of sample i is row v·bsz+i)."""
    return torch.stack(rows.chunk(2), dim=1)


def _lightly_definition(loss: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """lightly's float64 loss for ``loss``'s state: NT-Xent, or the MoCo form on its bank as it
    is before the call (the definition is evaluated before the call)."""
    if loss.memory_bank.size[0] == 0:
        return ntxent_reference(*views_to_batch([a, b]), TAU_LIGHTLY)
    bank = loss.memory_bank.bank.detach().clone()
    return lightly_memory_bank_reference(a, b, bank, TAU_LIGHTLY)


def _inputs(case: str, n: int, d: int, device: torch.device, dtype: torch.dtype) -> tuple:
    g = torch.Generator().manual_seed(n)
    if case.startswith("lightly"):
        a = torch.randn(n, d, generator=g)
        b = a + 0.5 * torch.randn(n, d, generator=g)
        return a.to(device, dtype), b.to(device, dtype)
    z = torch.randn(n, d, generator=g)
    if case.startswith("SupContrast"):
        z = F.normalize(z, dim=1)  # SupContrast's models hand its loss unit features
    return z.to(device, dtype), _labels(case, n).to(device)


# --------------------------------------------------------------------------------------------
# checking and timing


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (None: leave it)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def call_seconds(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call: the process's CPU time on CPU, wall time with a sync on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _leaves(case: str, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype | None) -> list:
    """Fresh leaves (``dtype``: a float64 copy for the definition); labels stay as they are."""
    first = a.detach().to(dtype or a.dtype).clone().requires_grad_()
    if case.startswith("lightly"):
        return [first, b.detach().to(dtype or b.dtype).clone().requires_grad_()]
    return [first, b]


def _check(case: str, impl: Impl, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> str:
    """'ok', or why the implementation's value or input gradients miss the definition."""
    refs = _leaves(case, a, b, torch.float64)
    want = impl.definition(*refs)  # before the call: a bank is read before it is updated
    want.backward()
    leaves = _leaves(case, a, b, None)
    got = impl.fn(*leaves)
    got.backward()
    rtol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    try:
        assert_close_to_reference(got.float(), want, rtol=rtol, name=f"{case} {impl.name} loss")
        grads = [t.grad for t in leaves if isinstance(t, torch.Tensor) and t.grad is not None]
        ref_grads = [t.grad for t in refs if isinstance(t, torch.Tensor) and t.grad is not None]
        assert_close_to_reference(grads, ref_grads, rtol=10 * rtol, name="gradient")
    except AssertionError as exc:
        return f"CHECK FAILED: {exc}"
    return "ok"


def _time_rounds(
    calls: list[tuple[CompatRow, Callable[[], None]]], device: torch.device, rounds: int
) -> None:
    """Interleaved rounds: each implementation once per round, in alternating order."""
    for i in range(rounds):
        for row, call in calls if i % 2 == 0 else calls[::-1]:
            row.round_ms.append(call_seconds(call, device) * 1e3)
    for row, _ in calls:
        row.fwdbwd_ms = statistics.median(row.round_ms)


def _speedups(case_rows: list[CompatRow]) -> None:
    """Peer median / fastclr median, and the range of the per-round ratios (paired rounds)."""
    peer = next((r for r in case_rows if not r.impl.startswith("fastclr")), None)
    if peer is None or not peer.round_ms:
        return
    for r in case_rows:
        if r.round_ms and r.fwdbwd_ms:
            r.speedup = peer.fwdbwd_ms / r.fwdbwd_ms  # type: ignore[operator]
            ratios = [p / m for p, m in zip(peer.round_ms, r.round_ms, strict=True)]
            r.speedup_range = (min(ratios), max(ratios))


def run(
    device: torch.device,
    dtype: torch.dtype,
    quick: bool,
    progress: Callable[[str], None],
    d: int = 128,
    rounds: int = ROUNDS,
    threads: int | None = THREADS,
    sources: PeerSources | None = None,
) -> list[CompatRow]:
    """Check, then time every case (see the module docstring); one row per implementation."""
    backend = "triton" if device.type == "cuda" else "native"
    sources = sources or PeerSources()
    rows: list[CompatRow] = []
    with intra_op_threads(threads if device.type == "cpu" else None):
        for case, n, k in _cases(quick):
            a, b = _inputs(case, n, d, device, dtype)
            m = 2 * n if case == "lightly SimCLR" else n
            case_rows, calls = [], []
            for impl in _build(case, n, k, d, backend, sources):
                progress(f"compat {case} {impl.name} N={n} K={k}")
                row = CompatRow(case, impl.name, m, k, status=_check(case, impl, a, b, dtype))
                case_rows.append(row)
                if row.status != "ok":
                    continue
                x, y = _leaves(case, a, b, None)

                def fwdbwd(fn: Loss = impl.fn, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
                    x.grad = None
                    fn(x, y).backward()

                row.mem_mb = peak_extra_mb(fwdbwd, device)  # doubles as the warm-up call
                calls.append((row, fwdbwd))
            _time_rounds(calls, device, rounds)
            _speedups(case_rows)
            if not any(not r.impl.startswith("fastclr") for r in case_rows):
                case_rows.insert(0, CompatRow(case, "peer", m, k, status="skipped: not here"))
            rows += case_rows
    return rows


def table(rows: list[CompatRow], rounds: int = ROUNDS, threads: int | None = THREADS) -> list[str]:
    """Markdown lines: a one-line note on how it was timed, then one row per implementation."""

    def f(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    how = f"{threads} thread{'s' if threads != 1 else ''}, " if threads else ""
    lines = [
        f"Forward+backward per call: {how}median of {rounds} interleaved rounds (CPU time on "
        "CPU); the range is that of the per-round speed-ups.",
        "",
        "| case | impl | rows | bank K | fwd+bwd ms | peak extra MB | speed-up vs peer | "
        "range over rounds | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = "—" if r.speedup_range is None else "{:.2f}–{:.2f}×".format(*r.speedup_range)
        lines.append(
            f"| {r.case} | {r.impl} | {r.rows} | {r.keys or '—'} | {f(r.fwdbwd_ms, '.1f')} | "
            f"{f(r.mem_mb, '.0f')} | {f(r.speedup, '.2f')}{'×' if r.speedup else ''} | "
            f"{spread} | {r.status} |"
        )
    return lines


# --------------------------------------------------------------------------------------------
# the record


def _peer_versions(sources: PeerSources) -> dict[str, str]:
    """Versions of the installed peers and commits of the checkouts, for the record."""
    import subprocess
    from importlib import metadata

    out = {}
    for dist in ("lightly", "pytorch-metric-learning", "solo-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    for name, root in (("SupContrast", sources.supcontrast), ("solo-learn", sources.solo_learn)):
        if root is None or name in out:
            continue
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        out[name] = f"checkout {rev.stdout.strip() or '(not a git checkout)'}"
    return out


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small sizes of `make bench-quick`")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds (default 7)")
    p.add_argument("--threads", type=int, default=THREADS, help="intra-op threads (default 1)")
    p.add_argument("--supcontrast-src", type=Path, help="a checkout of HobbitLong/SupContrast")
    p.add_argument("--solo-learn-src", type=Path, help="a checkout of vturrisi/solo-learn")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS, help="the Markdown record to write")
    p.add_argument("--no-save", action="store_true", help="print only, write no file")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        p.error("--rounds and --threads must be at least 1")
    for flag, root in (
        ("--supcontrast-src", args.supcontrast_src),
        ("--solo-learn-src", args.solo_learn_src),
    ):
        if root is not None and not root.is_dir():
            p.error(f"{flag}: {root} is not a folder")
    device = torch.device(args.device)
    if device.type == "cpu" and "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        # as bench/throughput.py: a fixed glibc mmap threshold, so that the resident-set peaks
        # see the memory of small implementations (freed blocks are not kept for reuse)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 17)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    sources = PeerSources(args.supcontrast_src, args.solo_learn_src)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from throughput import machine_tag  # the shared machine record (imports this module)

    tag = {**machine_tag(device), "threads": args.threads, "peers": _peer_versions(sources)}
    rows = run(
        device,
        dtype,
        args.quick,
        _stderr,
        rounds=args.rounds,
        threads=args.threads,
        sources=sources,
    )
    lines = table(rows, args.rounds, args.threads)
    exe = os.path.relpath(sys.executable)
    command = " ".join([exe if not exe.startswith("..") else "python", *(argv or sys.argv)])
    md = [
        f"# fastclr.compat against the peers — {tag['device']}",
        "",
        f"`{json.dumps(tag)}`",
        "",
        f"Command: `{command}`",
        "",
        f"## Switching from a peer: its loss vs fastclr.compat, D = 128, {dtype}",
        "",
        *lines,
    ]
    print("\n".join(md))
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(md) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any(r.status.startswith("CHECK FAILED") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
