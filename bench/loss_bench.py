"""NT-Xent section of the benchmark: fastclr's backends against the reference and peer losses.

Every implementation is first checked against the float64 definition (the whole loss and its
gradients where the M×M reference fits, else per-anchor losses of the first rows), then timed
(forward, forward+backward; backward is their difference) and its peak extra memory measured.
A size whose estimated memory would not fit is reported as "OOM" without being run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from measure import ntxent_work, peak_extra_mb, time_fn

import fastclr
from fastclr.reference import ntxent_reference, ntxent_reference_rows, views_to_batch
from fastclr.testing import assert_close_to_reference, error_ratio

TAU = 0.5
ROWS_CHECKED = 128  # anchors checked against the definition when the full reference does not fit


@dataclass
class LossRow:
    impl: str
    m: int
    d: int
    dtype: str
    fwd_ms: float | None = None
    bwd_ms: float | None = None
    fwdbwd_ms: float | None = None
    mem_mb: float | None = None
    status: str = "ok"  # "ok", "OOM", "error: ...", "skipped: ..."
    check: str = ""
    speedup: float | None = None
    mem_ratio: float | None = None
    tflops: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def implementations(device: torch.device) -> dict[str, LossFn]:
    """name -> loss(z_i, z_j); fastclr's backends usable here, the reference, and peers."""
    impls: dict[str, LossFn] = {}

    def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z, labels = views_to_batch([a, b])
        return ntxent_reference(z, labels, TAU, upcast=False)

    impls["reference"] = reference
    for backend in fastclr.available_backends():
        if backend == "reference":
            continue
        if backend == "triton" and device.type != "cuda":
            continue  # the interpreter is a correctness tool, not a speed one
        loss = fastclr.NTXentLoss(temperature=TAU, backend=backend)  # type: ignore[arg-type]
        impls[f"fastclr[{backend}]"] = loss
    try:
        from lightly.loss import NTXentLoss as LightlyNTXent

        lightly_loss = LightlyNTXent(temperature=TAU)
        impls["lightly"] = lambda a, b: lightly_loss(a, b)
    except Exception:
        pass
    try:
        from pytorch_metric_learning.losses import NTXentLoss as PMLNTXent

        pml_loss = PMLNTXent(temperature=TAU)

        def pml(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            z, labels = views_to_batch([a, b])
            return pml_loss(z, labels)

        impls["pytorch-metric-learning"] = pml
    except Exception:
        pass
    return impls


def _mem_available_mb(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _check(
    fn: LossFn, a: torch.Tensor, b: torch.Tensor, full_reference: bool, is_fastclr: bool
) -> str:
    """Compare with the float64 definition; raise AssertionError on a mismatch."""
    z, labels = views_to_batch([a.detach(), b.detach()])
    # relative floors on top of 2× the rounding of the reference to the input dtype: the loss is a
    # sum of ~M terms, its gradient a difference of two nearly cancelling ones (hence 10× looser)
    low = a.dtype in (torch.bfloat16, torch.float16)
    rtol = 2e-2 if low else 1e-4
    if full_reference:
        a64 = a.detach().double().requires_grad_()
        b64 = b.detach().double().requires_grad_()
        ref = ntxent_reference(*views_to_batch([a64, b64]), TAU)
        ref.backward()
        x = a.detach().clone().requires_grad_()
        y = b.detach().clone().requires_grad_()
        got = fn(x, y)
        got.backward()
        assert x.grad is not None and y.grad is not None
        assert a64.grad is not None and b64.grad is not None
        grads, ref_grads = [x.grad, y.grad], [a64.grad, b64.grad]
        assert_close_to_reference(got, ref, rtol=rtol, name="loss")
        assert_close_to_reference(grads, ref_grads, rtol=10 * rtol, name="gradient")
        v = error_ratio(got, ref, rtol=rtol)
        g = error_ratio(grads, ref_grads, rtol=10 * rtol)
        return f"error/bound: loss {v:.2g}, grad {g:.2g}"
    if not is_fastclr:
        raise AssertionError("peer rows are only run where the full reference fits")
    rows = slice(0, ROWS_CHECKED)
    expected = ntxent_reference_rows(z, labels, rows, TAU)
    per_anchor = fastclr.ntxent(a.detach(), b.detach(), temperature=TAU, reduction="none")
    assert_close_to_reference(per_anchor[rows], expected, rtol=rtol, name="per-anchor loss")
    ratio = error_ratio(per_anchor[rows], expected, rtol=rtol)
    return f"first {ROWS_CHECKED} anchors error/bound {ratio:.2g}"


def _measure(
    row: LossRow, fn: LossFn, a: torch.Tensor, b: torch.Tensor, device: torch.device, reps: int
) -> None:
    """Peak extra memory (which doubles as the warm-up), forward and forward+backward times."""
    x = a.detach().clone().requires_grad_()
    y = b.detach().clone().requires_grad_()

    def fwd() -> None:
        with torch.no_grad():
            fn(x, y)

    def fwdbwd() -> None:
        x.grad = None
        y.grad = None
        fn(x, y).backward()

    row.mem_mb = peak_extra_mb(fwdbwd, device)
    row.fwd_ms = time_fn(fwd, device, warmup=0, reps=reps).ms
    row.fwdbwd_ms = time_fn(fwdbwd, device, warmup=0, reps=reps).ms
    row.bwd_ms = max(0.0, row.fwdbwd_ms - row.fwd_ms)
    if device.type == "cuda":
        flops, _, limit_ms = ntxent_work(row.m, row.d, torch.cuda.get_device_name(device))
        row.tflops = flops / (row.fwdbwd_ms * 1e-3) / 1e12
        if limit_ms is not None:
            row.extra["fraction_of_limit"] = limit_ms / row.fwdbwd_ms


def _relative_to_reference(rows: list[LossRow]) -> None:
    """Speed-up and memory ratio of each measured row of one size against the reference's."""
    ref = next((r for r in rows if r.impl == "reference"), None)
    if ref is None or ref.status != "ok":
        return
    for row in rows:
        if row.status != "ok":
            continue
        if row.fwdbwd_ms and ref.fwdbwd_ms:
            row.speedup = ref.fwdbwd_ms / row.fwdbwd_ms
        if row.mem_mb is not None and ref.mem_mb:
            row.mem_ratio = row.mem_mb / ref.mem_mb


def run(
    device: torch.device,
    dtype: torch.dtype,
    sizes: list[int],
    d: int,
    reps: int,
    progress: Callable[[str], None],
    peer_max_m: int | None = None,
) -> list[LossRow]:
    """Check, time and measure every implementation at every size (peers up to ``peer_max_m``)."""
    impls = implementations(device)
    rows: list[LossRow] = []
    per_impl_mem: dict[str, tuple[int, float]] = {}  # impl -> (m, MB) at the last size measured
    budget_mb = 0.6 * _mem_available_mb(device)
    for m in sizes:
        n = m // 2
        g = torch.Generator(device="cpu").manual_seed(m)
        a = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
        b = (a.float() + 0.5 * torch.randn(n, d, generator=g).to(device)).to(dtype)
        ref_fits = True
        for name, fn in impls.items():
            progress(f"loss {name} M={m}")
            row = LossRow(name, m, d, str(dtype).replace("torch.", ""))
            rows.append(row)
            is_fastclr = name.startswith("fastclr")
            if name in per_impl_mem:
                m0, mb0 = per_impl_mem[name]
                # fastclr grows as M, the reference as M²; peers are extrapolated pessimistically
                # as M³ (pytorch-metric-learning measured 2.2 GB at M = 512, 17 GB at M = 1024)
                power = 1 if is_fastclr else 2 if name == "reference" else 3
                scale = (m / m0) ** power
                if mb0 * scale > budget_mb:
                    row.status = f"OOM (est. {mb0 * scale / 1024:.1f} GB)"
                    ref_fits = ref_fits and name != "reference"
                    continue
            if not is_fastclr and not ref_fits:
                row.status = "skipped: no reference to check against"
                continue
            if not is_fastclr and name != "reference" and peer_max_m and m > peer_max_m:
                row.status = "skipped (quick run)"
                continue
            try:
                row.check = _check(fn, a, b, full_reference=ref_fits, is_fastclr=is_fastclr)
            except AssertionError as exc:
                row.status = f"CHECK FAILED: {exc}"
                continue
            except (RuntimeError, MemoryError) as exc:  # allocation failure
                row.status = "OOM" if "memory" in str(exc).lower() else f"error: {exc}"[:80]
                continue
            _measure(row, fn, a, b, device, reps)
            if row.mem_mb is not None:
                per_impl_mem[name] = (m, row.mem_mb)
        _relative_to_reference([r for r in rows if r.m == m])
    return rows


def matmul_ms(device: torch.device, dtype: torch.dtype, m: int, d: int) -> float:
    """Median time of one M×M×D matmul (the unit the loss's cost is stated in)."""
    x = torch.randn(m, d, device=device, dtype=dtype)
    return time_fn(lambda: x @ x.T, device, warmup=1, reps=5).ms


def default_threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
