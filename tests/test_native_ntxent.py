"""The native CPU NT-Xent kernel (kernels/cpu/ntxent.*, fastclr/ops/native_ntxent.py) against the
float64 references in fastclr.reference: values and gradients, both sides of the constant-shift
switch, threads and determinism, low precision, layouts, degenerate rows, torch.compile, and the
fallback when the library is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastclr import NTXentLoss, _native, ntxent
from fastclr.reference import ntxent_lse_reference, ntxent_reference, views_to_batch
from fastclr.testing import assert_close_to_reference

pytestmark = pytest.mark.skipif(
    not _native.available(), reason=f"native library unavailable: {_native.load_error()}"
)

if _native.available():
    from fastclr.ops import native_ntxent as ops
    from fastclr.ops.native_ntxent import native_lse_rect, native_lse_sym

# The constant-shift path runs for τ ≥ 2/80 = 0.025; these temperatures cover both sides.
TAUS_SHIFT = (0.03, 0.07, 0.2, 0.5, 1.0, 3.0)
TAUS_ONLINE = (0.01, 0.015, 0.024)
TAUS = TAUS_SHIFT + TAUS_ONLINE

# (n_views, N, D): an odd shape (41 rows of 130 features), a multi-tile one, V > 2.
VIEW_SHAPES = [(2, 41, 130), (2, 100, 33), (3, 17, 8), (4, 30, 128), (2, 1, 5)]

# Low-precision dtypes: the kernel's error must be ≤ 2× torch's own error in that dtype + atol,
# atol = one unit of rounding of the dtype (the loss is returned in it) relative to the value.
LOWP = [
    (torch.bfloat16, torch.finfo(torch.bfloat16).eps),
    (torch.float16, torch.finfo(torch.float16).eps),
]


@contextmanager
def threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def unit_rows(m: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def tangent(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient seen through normalisation at unit rows z: (I − ẑẑᵀ) grad, row by row.

    ``ntxent_lse_reference`` normalises its inputs; the native op treats its rows as free, so the
    two gradients agree after this projection.
    """
    return grad - z * (z * grad).sum(dim=1, keepdim=True)


def lse_tol(tau: float) -> float:
    # fp32 logits of size ≤ 1/τ carry ~1e-7/τ rounding; 20× margin
    return 2e-6 / tau + 1e-6


def assert_grad_close(
    got: torch.Tensor, want: torch.Tensor, rel: float = 1e-4, atol: float = 1e-6
) -> None:
    """Max error ≤ rel · max|want| + atol (atol covers fp32 cancellation where want ≈ 0)."""
    assert_close_to_reference(got, want, rtol=rel, atol=atol, name="gradient")


# ------------------------------------------------------------------------------------------------
# the ops against ntxent_lse_reference


@given(
    m=st.integers(2, 200),
    d=st.integers(1, 140),
    tau=st.sampled_from(TAUS),
    n_threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_lse_sym_values_and_grads(m: int, d: int, tau: float, n_threads: int, seed: int) -> None:
    z = unit_rows(m, d, seed)
    g = torch.rand(m, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1)) + 0.1
    zr = z.clone().requires_grad_()
    want = ntxent_lse_reference(zr, zr, tau)
    (want * g).sum().backward()
    zn = z.float().requires_grad_()
    with threads(n_threads):
        got = native_lse_sym(zn, tau)
        (got * g.float()).sum().backward()
    assert got.dtype == torch.float32 and got.shape == (m,)
    assert_close_to_reference(got, want.detach(), rtol=1e-6, atol=lse_tol(tau), elementwise=True)
    assert zr.grad is not None and zn.grad is not None
    assert_grad_close(tangent(z, zn.grad.double()), zr.grad)


@given(
    mk=st.integers(2, 200),
    d=st.integers(1, 70),
    tau=st.sampled_from(TAUS),
    n_threads=st.sampled_from([1, 2]),
    data=st.data(),
)
def test_lse_rect_values_and_grads(
    mk: int, d: int, tau: float, n_threads: int, data: st.DataObject
) -> None:
    mq = data.draw(st.integers(1, mk), label="mq")
    off = data.draw(st.integers(0, mk - mq), label="q_offset")
    k = unit_rows(mk, d, seed=mk * 1000 + d)
    q = k[off : off + mq].clone()
    g = torch.rand(mq, dtype=torch.float64) - 0.3  # mixed signs
    qr, kr = q.clone().requires_grad_(), k.clone().requires_grad_()
    want = ntxent_lse_reference(qr, kr, tau, q_offset=off)
    (want * g).sum().backward()
    qn, kn = q.float().requires_grad_(), k.float().requires_grad_()
    with threads(n_threads):
        got = native_lse_rect(qn, kn, off, tau)
        (got * g.float()).sum().backward()
    assert_close_to_reference(got, want.detach(), rtol=1e-6, atol=lse_tol(tau), elementwise=True)
    assert qr.grad is not None and kr.grad is not None
    assert qn.grad is not None and kn.grad is not None
    assert_grad_close(tangent(q, qn.grad.double()), qr.grad)
    assert_grad_close(tangent(k, kn.grad.double()), kr.grad)


def test_rect_equals_sym_on_the_whole_batch() -> None:
    z = unit_rows(150, 40, seed=3, dtype=torch.float32)
    for tau in (0.5, 0.01):
        torch.testing.assert_close(
            native_lse_rect(z, z, 0, tau), native_lse_sym(z, tau), rtol=1e-6, atol=lse_tol(tau)
        )


def test_switch_rule_and_both_sides() -> None:
    """2/τ ≤ 80 takes the constant shift; just either side of τ = 0.025 both paths are right."""
    assert ops.uses_constant_shift(0.025) and ops.uses_constant_shift(0.5)
    assert not ops.uses_constant_shift(0.0249) and not ops.uses_constant_shift(0.01)
    # clustered rows: logits near −1/τ and +1/τ, where a wrong shift would underflow
    base = unit_rows(2, 64, seed=5)
    z = F.normalize(torch.cat([base[0] + 0.05 * unit_rows(40, 64, 6), -base[0].expand(40, 64)]))
    for tau in (0.026, 0.024, 0.01, 0.005):
        zr = z.clone().requires_grad_()
        want = ntxent_lse_reference(zr, zr, tau)
        want.sum().backward()
        zn = z.float().requires_grad_()
        got = native_lse_sym(zn, tau)
        got.sum().backward()
        assert torch.isfinite(got).all()
        assert_close_to_reference(
            got, want.detach(), rtol=1e-6, atol=lse_tol(tau), elementwise=True
        )
        assert zr.grad is not None and zn.grad is not None
        assert_grad_close(tangent(z, zn.grad.double()), zr.grad)


def test_large_upstream_gradient_near_the_switch() -> None:
    """|g|·exp(c − LSE) beyond fp32 range switches the backward to its two-exp form."""
    z = unit_rows(60, 16, seed=8)
    tau = 0.026
    g = torch.full((60,), 1e6, dtype=torch.float64)
    zr = z.clone().requires_grad_()
    (ntxent_lse_reference(zr, zr, tau) * g).sum().backward()
    zn = z.float().requires_grad_()
    (native_lse_sym(zn, tau) * g.float()).sum().backward()
    assert zr.grad is not None and zn.grad is not None
    assert torch.isfinite(zn.grad).all()
    assert_grad_close(tangent(z, zn.grad.double()), zr.grad)


def test_single_row_has_no_pair() -> None:
    z = unit_rows(1, 8, seed=0, dtype=torch.float32).requires_grad_()
    out = native_lse_sym(z, 0.5)
    assert out.item() == float("-inf")
    out.sum().backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


# ------------------------------------------------------------------------------------------------
# the loss through the public API against ntxent_reference (float64)


def loss_and_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, upstream: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    zz = z.clone().requires_grad_()
    out = fn(zz)
    (out * upstream).sum().backward()
    assert zz.grad is not None
    return out.detach(), zz.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("tau", [0.5, 0.1, 0.01])
@pytest.mark.parametrize(("n_views", "n", "d"), VIEW_SHAPES)
def test_loss_views(n_views: int, n: int, d: int, tau: float, reduction: str) -> None:
    g = torch.Generator().manual_seed(n * 7 + d)
    views = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(n_views)]
    z, labels = views_to_batch(views)
    m = z.shape[0]
    upstream = torch.rand(m if reduction == "none" else (), dtype=torch.float64) + 0.5
    loss_fn = NTXentLoss(temperature=tau, reduction=reduction, backend="native")  # type: ignore[arg-type]

    def native(zz: torch.Tensor) -> torch.Tensor:
        return loss_fn(*zz.float().split(n))

    def reference(zz: torch.Tensor) -> torch.Tensor:
        return ntxent_reference(zz, labels, tau, reduction)

    got, got_grad = loss_and_grad(native, z, upstream)
    want, want_grad = loss_and_grad(reference, z, upstream)
    assert_close_to_reference(got, want, rtol=2e-5, atol=lse_tol(tau) * 4, elementwise=True)
    assert_grad_close(got_grad, want_grad, rel=2e-4, atol=lse_tol(tau))


@pytest.mark.parametrize("tau", [0.3, 0.02])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_labels(tau: float, reduction: str) -> None:
    """SupCon labels, M = 41 and D = 130, with a class that has a single row (no positive)."""
    z = torch.randn(41, 130, dtype=torch.float64)
    labels = torch.randint(0, 6, (41,))
    labels[0] = 99
    upstream = torch.rand(41 if reduction == "none" else (), dtype=torch.float64) + 0.5
    loss_fn = NTXentLoss(temperature=tau, reduction=reduction, backend="native")  # type: ignore[arg-type]
    got, got_grad = loss_and_grad(lambda zz: loss_fn(zz.float(), labels=labels), z, upstream)
    want, want_grad = loss_and_grad(
        lambda zz: ntxent_reference(zz, labels, tau, reduction), z, upstream
    )
    assert_close_to_reference(got, want, rtol=2e-5, atol=lse_tol(tau) * 4, elementwise=True)
    assert_grad_close(got_grad, want_grad, rel=2e-4, atol=lse_tol(tau))


@pytest.mark.parametrize(("dtype", "atol"), LOWP)
@pytest.mark.parametrize("tau", [0.5, 0.1, 0.01])
def test_loss_low_precision(dtype: torch.dtype, atol: float, tau: float) -> None:
    """bf16/fp16 inputs: error ≤ 2× torch's own error in that dtype + atol; finite at τ = 0.01."""
    n, d = 40, 64
    z64 = torch.randn(2 * n, d, dtype=torch.float64)
    z_low = z64.to(dtype)
    labels = torch.arange(n).repeat(2)
    exact_in = z_low.double()  # the reference sees exactly the low-precision numbers
    want, want_grad = loss_and_grad(lambda zz: ntxent_reference(zz, labels, tau), exact_in, 1.3)
    torch_out, torch_grad = loss_and_grad(
        lambda zz: ntxent_reference(zz, labels, tau, upcast=False), z_low, torch.tensor(1.3)
    )
    loss_fn = NTXentLoss(temperature=tau, backend="native")
    got, got_grad = loss_and_grad(lambda zz: loss_fn(zz[:n], zz[n:]), z_low, torch.tensor(1.3))
    assert got.dtype == dtype and got_grad.dtype == dtype
    assert torch.isfinite(got) and torch.isfinite(got_grad).all()
    assert_close_to_reference(got, want, torch_out, atol=atol * max(1.0, abs(want.item())))
    assert_close_to_reference(got_grad, want_grad, torch_grad, rtol=atol, name="gradient")


def test_fp16_tiny_temperature_is_finite_and_right() -> None:
    z = torch.randn(64, 32).half()
    labels = torch.arange(32).repeat(2)
    got = NTXentLoss(temperature=0.01, backend="native")(z[:32], z[32:])
    want = ntxent_reference(z.double(), labels, 0.01)
    assert torch.isfinite(got)
    assert_close_to_reference(got, want, rtol=2e-3, atol=2e-2, elementwise=True)


def test_fp64_input_gives_fp64_gradient() -> None:
    z = unit_rows(30, 20, seed=2).requires_grad_()
    out = native_lse_sym(z, 0.4)
    out.sum().backward()
    assert out.dtype == torch.float32 and z.grad is not None and z.grad.dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# layouts, degenerate rows, threads


# Any finite scale (issue 24): F.normalize squared the entries, so float32 rows with norm above
# ~1.8e19 became ẑ = 0 and the loss the constant log(M − 1) with zero gradient. The loss is
# scale-invariant: z · c must give z's float64 loss, and gradients that are z's divided by c.
@given(
    n=st.integers(1, 41),
    d=st.integers(1, 130),
    tau=st.sampled_from([0.5, 0.1, 0.01]),
    log2_scale=st.integers(-60, 120),
    labels=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_loss_is_exact_at_any_scale(
    n: int, d: int, tau: float, log2_scale: int, labels: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n, d, generator=g, dtype=torch.float64)
    lab = torch.randint(0, max(1, n // 2), (2 * n,), generator=g) if labels else None
    lab_ref = lab if lab is not None else torch.arange(n).repeat(2)
    ref = z.clone().requires_grad_()
    want = ntxent_reference(ref, lab_ref, tau)
    want.backward()
    scale = 2.0**log2_scale
    leaf = (z * scale).float().requires_grad_()
    views = (leaf,) if lab is not None else (leaf[:n], leaf[n:])
    # eps = 1e-30 keeps every scaled row above it (below eps, ẑ = z / eps by definition)
    got = ntxent(*views, labels=lab, temperature=tau, backend="native", eps=1e-30)
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=2e-5, abs=4e-7 / tau)
    assert ref.grad is not None and leaf.grad is not None
    floor = 1e-6 / (tau * float(z.norm(dim=1).min()))
    assert_grad_close(leaf.grad.double() * scale, ref.grad, atol=floor)


def test_memory_bank_keeps_huge_rows_as_unit_keys() -> None:
    """The queued keys go through the same normalisation: rows of norm ~1e25 enter the bank as
    unit rows (they were zeros), and the next loss sees them as negatives."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    loss_fn = NTXentLoss(temperature=0.5, backend="native", memory_bank_size=6)
    loss_fn((a * 1e25).requires_grad_(), (b * 1e25).requires_grad_())
    torch.testing.assert_close(loss_fn.bank, F.normalize(b, dim=1))
    got = loss_fn(a * 1e25, b * 1e25)
    want = ntxent_reference(*views_to_batch([a.double(), b.double()]), 0.5, negatives=b.double())
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_non_contiguous_inputs() -> None:
    base = torch.randn(130, 2 * 60, dtype=torch.float64)
    strided = base[:, ::2].T  # (60, 130), neither dimension contiguous
    assert not strided.is_contiguous()
    z = F.normalize(strided, dim=1)
    zc = z.contiguous()
    torch.testing.assert_close(native_lse_sym(z, 0.2), native_lse_sym(zc, 0.2), rtol=0, atol=0)
    torch.testing.assert_close(
        native_lse_rect(z[10:20], z, 10, 0.2), native_lse_rect(zc[10:20], zc, 10, 0.2)
    )
    labels = torch.arange(30).repeat(2)
    got = NTXentLoss(temperature=0.2, backend="native")(strided[:30], strided[30:])
    want = ntxent_reference(strided, labels, 0.2)
    assert_close_to_reference(got, want, rtol=1e-5, atol=1e-5, elementwise=True)


@pytest.mark.parametrize("tau", [0.5, 0.01])
def test_zero_rows_no_nan(tau: float) -> None:
    z = torch.randn(40, 16, dtype=torch.float64)
    z[3] = 0.0
    z[27] = 0.0
    labels = torch.arange(20).repeat(2)
    got, got_grad = loss_and_grad(
        lambda zz: NTXentLoss(temperature=tau, backend="native")(*zz.float().split(20)), z, 0.7
    )
    want, want_grad = loss_and_grad(lambda zz: ntxent_reference(zz, labels, tau), z, 0.7)
    assert torch.isfinite(got) and torch.isfinite(got_grad).all()
    assert_close_to_reference(got, want, rtol=2e-5, atol=lse_tol(tau) * 4, elementwise=True)
    assert_grad_close(got_grad, want_grad, rel=2e-4, atol=lse_tol(tau))


@pytest.mark.parametrize("tau", [0.5, 0.01])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_deterministic_per_thread_count(n_threads: int, tau: float) -> None:
    """Bitwise equal across runs for a thread count; 1 and 2 threads agree to rounding."""
    z = unit_rows(500, 48, seed=11, dtype=torch.float32)  # 6 tiles of 96: 21 symmetric tile pairs
    g = torch.rand(500)

    def run() -> tuple[torch.Tensor, ...]:
        zz = z.clone().requires_grad_()
        lse = native_lse_sym(zz, tau)
        (lse * g).sum().backward()
        q, k = z[100:300].clone().requires_grad_(), z.clone().requires_grad_()
        rect = native_lse_rect(q, k, 100, tau)
        (rect * g[:200]).sum().backward()
        assert zz.grad is not None and q.grad is not None and k.grad is not None
        return lse, zz.grad, rect, q.grad, k.grad

    with threads(n_threads):
        first = run()
        for _ in range(2):
            for a, b in zip(first, run(), strict=True):
                assert torch.equal(a, b)
    with threads(3 - n_threads):
        other = run()
    for a, b in zip(first, other, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# validation, torch.compile, fallback


def test_validation_errors() -> None:
    z = unit_rows(10, 4, seed=0, dtype=torch.float32)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        native_lse_sym(z.to(torch.int32), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        native_lse_sym(z[0], 0.5)
    with pytest.raises(ValueError, match="q_offset"):
        native_lse_rect(z[:4], z, 7, 0.5)
    with pytest.raises(ValueError, match="same dim"):
        native_lse_rect(z[:, :3], z, 0, 0.5)
    with pytest.raises(ValueError, match="temperature"):
        native_lse_sym(z, 0.0)


def test_device_check_names_the_device() -> None:
    """Non-CPU tensors are refused with a clear error (a meta tensor stands in for CUDA here: the
    op itself would route it to the fake kernel)."""
    with pytest.raises(ValueError, match=r"CPU tensors only, but zhat is on meta"):
        ops._check_rows("zhat", torch.empty(4, 3, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA tensor to pass in")
def test_cuda_tensor_rejected_clearly() -> None:
    z = unit_rows(10, 4, seed=0, dtype=torch.float32).cuda()
    with pytest.raises(ValueError, match="CPU tensors only"):
        native_lse_sym(z, 0.5)


class _Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(12, 8)
        self.loss = NTXentLoss(temperature=0.2, backend="native", check_finite=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.loss(self.proj(a), self.proj(b))


@pytest.mark.parametrize(
    "compile_backend",
    # aot_eager traces with fake tensors through register_fake and register_autograd; inductor
    # also generates code (about a minute of C++ compilation on 2 busy cores)
    ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)],
)
def test_torch_compile_fullgraph(compile_backend: str) -> None:
    torch._dynamo.reset()
    model = _Head()
    a, b = torch.randn(16, 12), torch.randn(16, 12)
    want = model(a, b)
    want.backward()
    want_grad = model.proj.weight.grad.clone()  # type: ignore[union-attr]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    got = compiled(a, b)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(model.proj.weight.grad, want_grad)


_MEMORY_SCRIPT = """
import resource
import torch
import fastclr
m, d = 6144, 64
loss_fn = fastclr.NTXentLoss(temperature=0.2, backend="native")
small = torch.randn(2, 32, d, requires_grad=True)
loss_fn(small[0], small[1]).backward()  # warm-up: one-time allocations are not counted
z = torch.randn(2, m // 2, d, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss_fn(z[0], z[1]).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_no_quadratic_memory() -> None:
    """Peak extra RSS of fwd+bwd at M = 6144 stays under half of one M×M fp32 matrix.

    (It measures about 20 MiB here; one M×M fp32 matrix is 144 MiB.)
    """
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    extra = int(proc.stdout.strip().splitlines()[-1])
    assert extra < 6144 * 6144 * 4 // 2, f"peak extra {extra / 2**20:.0f} MiB"


_FALLBACK_SCRIPT = """
import json, warnings
import torch
import fastclr
from fastclr.reference import ntxent_reference
z = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loss_fn = fastclr.NTXentLoss(temperature=0.3)
    first = loss_fn(z[0], z[1])
    second = loss_fn(z[0], z[1])
want = ntxent_reference(torch.cat([z[0], z[1]]), torch.arange(16).repeat(2), 0.3, upcast=False)
runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(json.dumps({"warnings": runtime, "first": first.item(), "second": second.item(),
                  "want": want.item(), "available": fastclr.available_backends()}))
"""


def test_fallback_without_native_library() -> None:
    env = {**os.environ, "FASTCLR_DISABLE_NATIVE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "native" not in result["available"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "pip install -e ." in result["warnings"][0]
    assert result["first"] == result["want"] == result["second"]
