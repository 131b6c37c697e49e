"""The triton backend's whole-loss path for V ≥ 2 views (fastclr.ops.triton_fused).

Values and gradients against the float64 reference (any finite input scale included), the launch
count of one forward + backward (≤ 6, counted at the dispatcher, so it runs without a GPU), the
non-finite check, torch.compile, and determinism where several row blocks add into each column.
Under the interpreter (CI) the kernels run on CPU tensors; compiled on a GPU with gpu-check.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastclr
from fastclr.reference import ntxent_reference, views_to_batch
from fastclr.testing import assert_close_to_reference

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1 (CPU interpreter)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# One forward + backward of the views loss, V = 2, D ≤ 256: prep, LSE, finalize, row backward,
# post (5), plus autograd's ones_like for backward() of a scalar (the caller's own launch).
MAX_LAUNCHES = 6


def _fused():  # type: ignore[no-untyped-def]
    from fastclr.ops import triton_fused

    return triton_fused


def _loss_and_grads(
    views: list[torch.Tensor], weights: torch.Tensor | None = None, **kw: object
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [v.detach().clone().to(DEVICE).requires_grad_() for v in views]
    loss = fastclr.ntxent(*leaves, **kw)  # type: ignore[arg-type]
    w = torch.ones(()) if weights is None else weights
    (loss.double() * w.to(DEVICE).double().reshape(loss.shape)).sum().backward()
    return loss.detach().cpu(), [t.grad.detach().cpu() for t in leaves]  # type: ignore[union-attr]


def _reference64(
    views: list[torch.Tensor], temperature: float, reduction: str, weights: torch.Tensor | None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [v.detach().double().requires_grad_() for v in views]
    loss = ntxent_reference(*views_to_batch(leaves), temperature, reduction)
    w = torch.ones((), dtype=torch.float64) if weights is None else weights.double()
    (loss * w.reshape(loss.shape)).sum().backward()
    return loss.detach(), [t.grad.detach() for t in leaves]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# any finite input scale (issue 24): the normalisation never squares z


@pytest.mark.parametrize("scale", [1e-30, 1e-5, 1.0, 1e19, 1e30, 3e37])
@pytest.mark.parametrize("temperature", [0.5, 0.07])
def test_float32_rows_of_any_finite_scale_are_exact(scale: float, temperature: float) -> None:
    """Rows of norm 1.8e19 and above squared to inf in float32 (the loss became log(M − 1) with
    zero gradient); each row is now scaled by its largest entry first. Rows below eps in norm
    (1e-30) follow z / eps exactly as the definition says."""
    g = torch.Generator().manual_seed(int(math.log10(scale)) + 40)
    base = [torch.randn(7, 24, generator=g, dtype=torch.float64) for _ in range(2)]
    views = [(b * scale).float() for b in base]
    assert all(torch.isfinite(v).all() for v in views)
    w = torch.tensor(0.73)
    loss, grads = _loss_and_grads(views, w, temperature=temperature, backend="triton")
    ref, ref_grads = _reference64([v.double() for v in views], temperature, "mean", w)
    assert torch.isfinite(loss) and all(torch.isfinite(gr).all() for gr in grads)
    assert_close_to_reference(loss, ref, atol=2e-5 * max(1.0, float(ref.abs())), name="loss")
    for got, want in zip(grads, ref_grads, strict=True):
        bar = 1e-4 * float(want.abs().max()) + 1e-30
        assert_close_to_reference(got, want, atol=bar, name=f"grad at scale {scale:g}")
    if scale >= 1e19:  # the old failure: the constant log(M − 1)
        assert abs(float(loss) - math.log(13)) > 1e-2


def test_float64_rows_beyond_float32_range_are_exact() -> None:
    """1e300 rows (their squares overflow float64 too): the loss is scale-invariant, so it equals
    the reference on the unscaled rows, and the gradient is that one divided by the scale."""
    g = torch.Generator().manual_seed(5)
    base = [torch.randn(5, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    loss, grads = _loss_and_grads([b * 1e300 for b in base], temperature=0.3, backend="triton")
    ref, ref_grads = _reference64(base, 0.3, "mean", None)
    assert loss.dtype == torch.float64
    assert abs(float(loss - ref)) <= 1e-5 * float(ref.abs())
    for got, want in zip(grads, ref_grads, strict=True):
        assert float((got * 1e300 - want).abs().max()) <= 1e-4 * float(want.abs().max())
        assert float(want.abs().max()) > 0


@settings(max_examples=10)
@given(
    v=st.integers(2, 4),
    n=st.integers(1, 12),
    d=st.sampled_from([1, 3, 16, 45, 130]),
    log_scale=st.floats(-20.0, 37.0),
    temperature=st.sampled_from([0.5, 0.1, 0.02]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_views_against_float64_hypothesis(
    v: int, n: int, d: int, log_scale: float, temperature: float, reduction: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, log_scale / 4, v * n).reshape(v, n, 1) * 10.0 ** (0.75 * log_scale)
    views = [
        (torch.randn(n, d, generator=g, dtype=torch.float64) * scales[i]).float() for i in range(v)
    ]
    w = torch.rand(v * n if reduction == "none" else (), generator=g, dtype=torch.float64) + 0.5
    loss, grads = _loss_and_grads(
        views, w, temperature=temperature, reduction=reduction, backend="triton"
    )
    ref, ref_grads = _reference64([x.double() for x in views], temperature, reduction, w)
    scale = max(1.0, float(ref.abs().max()))
    assert_close_to_reference(loss, ref, atol=2e-5 * scale, name="loss")
    # dz_r·‖z_r‖ is free of the input scale; the floor is 1e-5 of the LSE term's gradient size
    # (the LSE and positive terms cancel exactly for M = 2)
    per_anchor = float(w.max()) / (v * n if reduction == "mean" else 1)
    norms = [x.double().norm(dim=1, keepdim=True) for x in views]
    got_s = torch.cat([gr.double() * nr for gr, nr in zip(grads, norms, strict=True)])
    want_s = torch.cat([gr * nr for gr, nr in zip(ref_grads, norms, strict=True)])
    bar = 2e-4 * float(want_s.abs().max()) + 1e-5 * per_anchor / temperature
    assert float((got_s - want_s).abs().max()) <= bar


# --------------------------------------------------------------------------------------------
# launches, non-finite inputs, compile


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("temperature", [0.2, 0.01])
def test_forward_backward_is_at_most_six_launches(
    dtype: torch.dtype, reduction: str, temperature: float, count_launches: Any
) -> None:
    zi = torch.randn(70, 32, dtype=dtype, device=DEVICE, requires_grad=True)
    zj = torch.randn(70, 32, dtype=dtype, device=DEVICE, requires_grad=True)

    def step() -> None:
        loss = fastclr.ntxent(
            zi,
            zj,
            temperature=temperature,
            reduction=reduction,
            backend="triton",
            check_finite=False,
        )
        (loss.sum() if reduction == "none" else loss).backward()

    names = count_launches(step)
    kernels = [n for n in names if n.startswith("triton:")]
    assert kernels[0] == "triton:ntxent_prep_kernel" and kernels[-1] == "triton:ntxent_post_kernel"
    assert len(kernels) == 5, names
    extra = 1 if reduction == "none" else 0  # the caller's own sum() and its backward
    assert len(names) <= MAX_LAUNCHES + extra, names
    for sync in ("_local_scalar_dense", "item", "nonzero", "masked_select", "unique"):
        assert sync not in names, names
    assert zi.grad is not None and zj.grad is not None


def test_launch_counter_sees_the_unfused_path(count_launches: Any) -> None:
    """Positive control: labels take the general path, whose aten launches the counter must see
    (so a regression of the views path to it would fail the test above)."""
    z = torch.randn(40, 16, device=DEVICE, requires_grad=True)
    labels = torch.arange(40, device=DEVICE) % 10

    def step() -> None:
        fastclr.ntxent(z, labels=labels, backend="triton", check_finite=False).backward()

    assert len(count_launches(step)) > 2 * MAX_LAUNCHES


def test_three_views_add_only_the_concatenation(count_launches: Any) -> None:
    views = [torch.randn(9, 16, device=DEVICE, requires_grad=True) for _ in range(3)]

    def step() -> None:
        fastclr.ntxent(*views, backend="triton", check_finite=False).backward()

    names = count_launches(step)
    assert "cat" in names and len(names) <= MAX_LAUNCHES + 1, names


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_one_clear_error(bad: float) -> None:
    zi, zj = torch.randn(6, 8, device=DEVICE), torch.randn(6, 8, device=DEVICE)
    zj[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastclr.ntxent(zi, zj, backend="triton")
    loss = fastclr.ntxent(zi, zj, backend="triton", check_finite=False)
    assert not torch.isfinite(loss)


def test_custom_ops_pass_opcheck() -> None:
    tf = _fused()
    z0 = torch.randn(6, 8, device=DEVICE, requires_grad=True)
    z1 = torch.randn(12, 8, device=DEVICE, requires_grad=True)
    for reduction in (0, 2):
        torch.library.opcheck(tf.ntxent_views, (z0, z1, 3, 0.5, 1e-8, reduction))


def test_compiles_without_graph_breaks() -> None:
    zi = torch.randn(10, 12, device=DEVICE)
    zj = torch.randn(10, 12, device=DEVICE)

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fastclr.ntxent(a, b, temperature=0.3, backend="triton")

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    a1, b1 = zi.clone().requires_grad_(), zj.clone().requires_grad_()
    a2, b2 = zi.clone().requires_grad_(), zj.clone().requires_grad_()
    compiled(a1, b1).backward()
    f(a2, b2).backward()
    assert a1.grad is not None and a2.grad is not None
    assert float((a1.grad - a2.grad).abs().max()) <= 1e-6


# --------------------------------------------------------------------------------------------
# determinism, at a size where several row blocks add into each column


def _blocks_adding_into_each_column(m: int) -> int:
    """How many programs add atomically into the column sums of the least-covered key block."""
    from fastclr.kernels.triton import ntxent as k

    bm = k.SYM_CONFIGS[0].kwargs["BLOCK_M"]
    t = -(-m // bm)
    into = [0] * t
    for i in range(t):
        count = t // 2 + 1 - ((t + 1) % 2) * (i // max(t // 2, 1))
        for d in range(1, count):  # d = 0 is the diagonal tile: no atomics
            into[(i + d) % t] += 1
    return min(into)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_determinism_as_documented(dtype: torch.dtype) -> None:
    """README "Determinism": with torch.use_deterministic_algorithms(True) the loss and every
    gradient repeat bitwise; by default only the forward's column sums use atomics, so repeats
    agree to rounding (and are bitwise equal where the GPU happens to add in the same order)."""
    from fastclr.kernels.triton import ntxent as k

    m = 7 * k.SYM_CONFIGS[0].kwargs["BLOCK_M"]  # 7 row blocks, whatever the config
    assert _blocks_adding_into_each_column(m) >= 3  # not a one-add-per-column case
    g = torch.Generator().manual_seed(9)
    views = [torch.randn(m // 2, 24, generator=g).to(dtype) for _ in range(2)]

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _loss_and_grads(views, temperature=0.2, backend="triton")

    torch.use_deterministic_algorithms(True)
    try:
        first, again = run(), run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], again[1], strict=True))
    default, default2 = run(), run()
    tol = 1e-6 if dtype == torch.float32 else 2**-7
    for a, b in ((default, default2), (default, first)):
        assert float((a[0].double() - b[0].double()).abs()) <= tol * max(1.0, float(a[0].abs()))
        for ga, gb in zip(a[1], b[1], strict=True):
            assert float((ga.double() - gb.double()).abs().max()) <= 4 * tol * float(gb.abs().max())
