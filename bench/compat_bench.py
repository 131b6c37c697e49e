"""Peers' losses against fastclr.compat's drop-ins, at the batch sizes each peer's users run.

Each pair is the peer's own implementation (where it is importable here) and the fastclr.compat
entry point that replaces it, called the same way; both are first checked against the float64
definition of the peer's loss (value and input gradients), then timed (forward+backward, median
over rounds that call each implementation once, interleaved so that a shared machine's load hits
both alike) and their peak extra memory measured. The speed-up column is peer time / fastclr time.

Cases (D = 128, float32 on CPU, bfloat16 on CUDA):

* lightly ``NTXentLoss`` without a bank: SimCLR at N = 256 and 512 samples (M = 2N rows);
* lightly ``NTXentLoss`` with a memory bank (MoCo form): N = 256 against K = 4096 and 65536 keys;
* pytorch-metric-learning ``NTXentLoss`` (two views as labels) at M = 512 rows and ``SupConLoss``
  (100 classes) at M = 512 and 1024 (``--quick``: 256 and 512).

solo-learn and SupContrast are not timed: neither installs here (solo-learn's only PyPI release
pins a 2021 Lightning stack; SupContrast is not a package).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from measure import peak_extra_mb, time_fn

from fastclr.compat import lightly as fc_lightly
from fastclr.compat import pml as fc_pml
from fastclr.reference import (
    lightly_memory_bank_reference,
    ntxent_reference,
    pml_ntxent_reference,
    views_to_batch,
)
from fastclr.testing import assert_close_to_reference

TAU_LIGHTLY = 0.5
TAU_PML_NTXENT = 0.07
TAU_PML_SUPCON = 0.1
MAX_SECONDS_PER_CASE = 60.0  # PML's NTXentLoss takes ~10 s a call at M = 512


@dataclass
class CompatRow:
    case: str
    impl: str
    rows: int
    keys: int
    fwdbwd_ms: float | None = None
    mem_mb: float | None = None
    speedup: float | None = None
    status: str = "ok"


Pair = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _peer(name: str) -> object | None:
    try:
        if name == "lightly":
            from lightly.loss import NTXentLoss

            return NTXentLoss
        from pytorch_metric_learning import losses

        return losses
    except Exception:  # not installed (lightly needs torchvision: see `make test-peers`)
        return None


def _cases(quick: bool) -> list[tuple[str, int, int]]:
    """(case, N or M, K): the batch sizes the peers' users run, cut down for --quick."""
    out = [("lightly SimCLR", n, 0) for n in ((256,) if quick else (256, 512))]
    out += [("lightly MoCo bank", 256, k) for k in ((4096,) if quick else (4096, 65536))]
    # PML's NTXentLoss materialises every (positive, negative) pair: ~17 s and 2 GB at M = 512
    out += [("PML NTXentLoss", 256 if quick else 512, 0)]
    out += [("PML SupConLoss", m, 0) for m in ((512,) if quick else (512, 1024))]
    return out


def _build(case: str, n: int, k: int, d: int, backend: str) -> list[tuple[str, Pair, Pair]]:
    """[(impl, loss(a, b), float64 definition(a, b))] for the peer (if importable) and fastclr.

    ``a, b`` are two (N, D) views for lightly, and (M, D) embeddings + their labels (passed as
    the second argument) for PML.
    """
    impls: list[tuple[str, object]] = []
    if case.startswith("lightly"):
        peer = _peer("lightly")
        size = (k, d) if k else 0
        torch.manual_seed(0)
        if peer is not None:
            impls.append(("lightly", peer(TAU_LIGHTLY, size)))  # type: ignore[operator]
        torch.manual_seed(0)  # the same initial bank for both
        ours = fc_lightly.NTXentLoss(TAU_LIGHTLY, size, backend=backend)  # type: ignore[arg-type]
        impls.append((f"fastclr.compat[{backend}]", ours))
    else:
        peer = _peer("pml")
        which = "NTXentLoss" if "NTXent" in case else "SupConLoss"
        tau = TAU_PML_NTXENT if which == "NTXentLoss" else TAU_PML_SUPCON
        if peer is not None:
            impls.append(("pytorch-metric-learning", getattr(peer, which)(temperature=tau)))
        impls.append((f"fastclr.compat[{backend}]", getattr(fc_pml, which)(tau, backend=backend)))
    out = []
    for name, fn in impls:
        if case == "lightly MoCo bank":
            bank_of = fn.memory_bank if name == "lightly" else fn  # type: ignore[attr-defined]

            def definition(a: torch.Tensor, b: torch.Tensor, src: object = bank_of) -> torch.Tensor:
                return lightly_memory_bank_reference(a, b, src.bank.detach().clone(), TAU_LIGHTLY)  # type: ignore[attr-defined]

        elif case == "lightly SimCLR":

            def definition(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return ntxent_reference(*views_to_batch([a, b]), TAU_LIGHTLY)

        elif "NTXent" in case:

            def definition(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return pml_ntxent_reference(a, b, TAU_PML_NTXENT)

        else:

            def definition(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return ntxent_reference(a, b, TAU_PML_SUPCON)

        out.append((name, fn, definition))  # type: ignore[arg-type]
    return out


def _inputs(case: str, n: int, d: int, device: torch.device, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(n)
    if case.startswith("lightly"):
        a = torch.randn(n, d, generator=g)
        b = a + 0.5 * torch.randn(n, d, generator=g)
        return a.to(device, dtype), b.to(device, dtype)
    z = torch.randn(n, d, generator=g).to(device, dtype)
    labels = torch.arange(n // 2).repeat(2) if "NTXent" in case else torch.arange(n) % 100
    return z, labels.to(device)


def run(
    device: torch.device,
    dtype: torch.dtype,
    quick: bool,
    progress: Callable[[str], None],
    d: int = 128,
    reps: int = 9,
) -> list[CompatRow]:
    backend = "triton" if device.type == "cuda" else "native"
    rows: list[CompatRow] = []
    for case, n, k in _cases(quick):
        a, b = _inputs(case, n, d, device, dtype)
        is_lightly = case.startswith("lightly")
        m = 2 * n if case == "lightly SimCLR" else n
        case_rows = []
        timed: list[tuple[CompatRow, Callable[[], None]]] = []
        for name, fn, definition in _build(case, n, k, d, backend):
            progress(f"compat {case} {name} N={n} K={k}")
            row = CompatRow(case, name, m, k)
            case_rows.append(row)
            leaves = [a.detach().clone().requires_grad_()]
            leaves.append(b.detach().clone().requires_grad_() if is_lightly else b)
            refs = [a.detach().double().requires_grad_()]
            refs.append(b.detach().double().requires_grad_() if is_lightly else b)
            want = definition(*refs)  # before the call: a bank is read before it is updated
            want.backward()
            got = fn(*leaves)
            got.backward()
            try:
                rtol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
                assert_close_to_reference(got, want, rtol=rtol, name=f"{case} {name} loss")
                grads = [
                    t.grad for t in leaves if isinstance(t, torch.Tensor) and t.grad is not None
                ]
                ref_grads = [
                    t.grad for t in refs if isinstance(t, torch.Tensor) and t.grad is not None
                ]
                assert_close_to_reference(grads, ref_grads, rtol=10 * rtol, name="gradient")
            except AssertionError as exc:
                row.status = f"CHECK FAILED: {exc}"
                continue
            x = a.detach().clone().requires_grad_()
            y = b.detach().clone().requires_grad_() if is_lightly else b

            def fwdbwd(fn: Pair = fn, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
                x.grad = None
                fn(x, y).backward()

            row.mem_mb = peak_extra_mb(fwdbwd, device)  # doubles as the warm-up run
            timed.append((row, fwdbwd))
        # Interleaved: one call of each implementation per round, so that the load of a shared
        # machine hits both alike; each time is the median over the rounds.
        times: dict[int, list[float]] = {id(r): [] for r, _ in timed}
        spent = 0.0
        for _ in range(reps):
            for r, call in timed:
                ms = time_fn(call, device, warmup=0, reps=1).ms
                times[id(r)].append(ms)
                spent += ms / 1e3
            if spent > MAX_SECONDS_PER_CASE:
                break
        for r, _ in timed:
            r.fwdbwd_ms = statistics.median(times[id(r)])
        peer = next((r for r in case_rows if not r.impl.startswith("fastclr")), None)
        for r in case_rows:
            if peer is not None and peer.fwdbwd_ms and r.fwdbwd_ms:
                r.speedup = peer.fwdbwd_ms / r.fwdbwd_ms
        if peer is None:
            case_rows.insert(0, CompatRow(case, "peer", m, k, status="skipped: not installed"))
        rows += case_rows
    return rows


def table(rows: list[CompatRow]) -> list[str]:
    def f(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    lines = [
        "| case | impl | rows | bank K | fwd+bwd ms | peak extra MB | speed-up vs peer | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.impl} | {r.rows} | {r.keys or '—'} | {f(r.fwdbwd_ms, '.1f')} | "
            f"{f(r.mem_mb, '.0f')} | {f(r.speedup, '.2f')}{'×' if r.speedup else ''} | {r.status} |"
        )
    return lines
