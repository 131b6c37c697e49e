"""The fused Triton NT-Xent kernel (``backend="triton"``) against the float64 reference.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1); with FASTCLR_TEST_COMPILED=1 on a CUDA machine the same tests run compiled.
Low-precision tolerances follow STYLE.md: the kernel's error against the fp64 reference may be at
most about twice torch's own error in that dtype (the reference with ``upcast=False``) + a small
atol. Shapes stay small because the interpreter is slow.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.nn.functional as F
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

# τ on both sides of the constant-shift / online switch (2/τ ≤ 64 ⇔ τ ≥ 1/32).
TAU_CONST = (0.5, 0.1, 0.04)
TAU_ONLINE = (0.03, 0.01)
# dtype -> (relative atol on values, relative atol on gradients); for 16-bit dtypes this is added
# to 2× torch's own error in that dtype.
DTYPES = {
    torch.float32: (2e-5, 5e-5),
    torch.bfloat16: (2**-7, 2**-7),
    torch.float16: (2**-10, 2**-9),
}
# Module-level shape table: (V, N, D), including odd sizes.
SHAPES = [(2, 1, 1), (2, 5, 3), (3, 7, 33), (2, 23, 130), (4, 3, 17), (2, 4, 300)]


def _ops():  # type: ignore[no-untyped-def]
    from fastclr.ops import triton_ntxent

    return triton_ntxent


def _inputs(v: int, n: int, d: int, seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype) for _ in range(v)]


def _run(
    fn_views: list[torch.Tensor],
    labels: torch.Tensor | None,
    weights: torch.Tensor,
    device: str,
    **kw: object,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and input gradients with upstream gradient ``weights`` (never all ones)."""
    leaves = [t.detach().to(device).requires_grad_() for t in fn_views]
    lab = None if labels is None else labels.to(device)
    loss = fastclr.ntxent(*leaves, labels=lab, **kw)  # type: ignore[arg-type]
    (loss.float() * weights.to(device).reshape(loss.shape)).sum().backward()
    return loss.detach().cpu(), [t.grad.detach().cpu() for t in leaves]  # type: ignore[union-attr]


def _reference(
    views: list[torch.Tensor],
    labels: torch.Tensor | None,
    weights: torch.Tensor,
    temperature: float,
    reduction: str,
    upcast: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_() for t in views]
    if labels is None:
        z, lab = views_to_batch(leaves)
    else:
        z, lab = leaves[0], labels
    loss = ntxent_reference(z, lab, temperature, reduction, upcast=upcast)
    (loss.to(weights.dtype) * weights.reshape(loss.shape)).sum().backward()
    return loss.detach(), [t.grad.detach() for t in leaves]  # type: ignore[union-attr]


def _weights(reduction: str, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    if reduction == "none":
        return torch.rand(m, generator=g, dtype=torch.float64) + 0.5
    return torch.tensor(0.37, dtype=torch.float64)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def _scale(t: torch.Tensor) -> float:
    return max(1.0, float(t.detach().double().abs().max()))


def check_against_reference(
    views: list[torch.Tensor],
    labels: torch.Tensor | None,
    temperature: float,
    reduction: str,
    seed: int = 0,
) -> None:
    """Values and gradients of the triton backend against fp64, with STYLE.md's bar."""
    dtype = views[0].dtype
    m = views[0].shape[0] * (len(views) if labels is None else 1)
    w = _weights(reduction, m, seed)
    kw = {"temperature": temperature, "reduction": reduction}
    loss, grads = _run(views, labels, w, DEVICE, backend="triton", **kw)
    assert loss.dtype == dtype
    ref, ref_grads = _reference(views, labels, w, temperature, reduction, upcast=True)
    assert torch.isfinite(loss).all()
    assert all(torch.isfinite(g).all() for g in grads)
    v_atol, g_atol = DTYPES[dtype]
    # gradients: relative to their own size (no floor at 1: SimCLR gradients are often ≪ 1), but
    # at least 1% of the size of the LSE-term gradient, ~ upstream weight per anchor / τ (the
    # LSE and positive terms can cancel exactly, e.g. M = 2)
    per_anchor = float(w.abs().max()) / (m if reduction == "mean" else 1)
    g_scale = max(max(float(g.abs().max()) for g in ref_grads), 1e-2 * per_anchor / temperature)
    # + 2× torch's own error in this dtype (fp32 too: for tiny rows or D = 1 the backward of the
    # fp32 normalisation cancels catastrophically, in torch and in the kernel alike)
    own, own_grads = _reference(views, labels, w, temperature, reduction, upcast=False)
    bar_v, bar_g = v_atol * _scale(ref), g_atol * g_scale
    if dtype == torch.float32:  # fp32 dots go through 3×TF32 on a GPU (exact under the interpreter)
        tv, tg = fp32_dot_bound(temperature, per_anchor, m if reduction == "sum" else 1)
        bar_v, bar_g = bar_v + tv, bar_g + tg
    assert_close_to_reference(loss, ref, own, atol=bar_v, name="loss")
    assert_close_to_reference(grads, ref_grads, own_grads, atol=bar_g, name="grads")


def fp32_dot_bound(temperature: float, per_anchor: float, terms: int) -> tuple[float, float]:
    """Extra error of fp32 inputs from the 3×TF32 tensor-core dots, on the loss and on a gradient.

    Each s_ak = ẑ_a·ẑ_k/τ of unit rows is off by at most ε = FP32_DOT_REL_ERR/τ (the bound per
    product, summed with Σ|a_i||b_i| ≤ 1 by Cauchy–Schwarz; test_tf32x3_emulation_obeys_the_bound
    checks it). Then |ΔLSE_a| ≤ ε, so a loss value summing ``terms`` anchors (1 for a mean or per
    anchor) moves ≤ ε·terms (doubled as a margin for the fp32 exp/log around it). In the
    backward each P_ak = g(e^{s−L_a} + e^{s−L_k})/τ moves by a factor ≤ e^{2ε} − 1 ≈ 2ε relative,
    and Σ_k |P_ak| ≤ 2 max g/τ, so dẑ_a moves ≤ (2ε + FP32_DOT_REL_ERR)·2·max g/τ, with the
    P·ẑ dot's own FP32_DOT_REL_ERR; doubled for the two dots (Z and the normalisation).
    """
    ops = _ops()
    eps = ops.FP32_DOT_REL_ERR / temperature
    value = 2 * eps * terms
    grad = 2 * (2 * eps + ops.FP32_DOT_REL_ERR) * 2 * per_anchor / temperature
    return value, grad


# --------------------------------------------------------------------------------------------
# values and gradients


def test_backend_is_available() -> None:
    assert "triton" in fastclr.available_backends()


@pytest.mark.parametrize(("v", "n", "d"), SHAPES)
@pytest.mark.parametrize("temperature", [0.5, 0.01])
def test_views_fp32_table(v: int, n: int, d: int, temperature: float) -> None:
    check_against_reference(_inputs(v, n, d, 7, torch.float32), None, temperature, "mean")


@settings(max_examples=20)
@given(
    v=st.integers(2, 4),
    n=st.integers(1, 9).map(lambda x: 2 * x - 1),
    d=st.sampled_from([1, 2, 5, 16, 31, 64, 129]),
    temperature=st.sampled_from(TAU_CONST + TAU_ONLINE),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_views_hypothesis(
    v: int, n: int, d: int, temperature: float, reduction: str, seed: int
) -> None:
    check_against_reference(
        _inputs(v, n, d, seed, torch.float32), None, temperature, reduction, seed
    )


@settings(max_examples=15)
@given(
    m=st.integers(2, 45),
    n_classes=st.integers(1, 6),
    d=st.sampled_from([3, 8, 40]),
    temperature=st.sampled_from(TAU_CONST + TAU_ONLINE),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    seed=st.integers(0, 2**16),
)
def test_labels_hypothesis(
    m: int, n_classes: int, d: int, temperature: float, reduction: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (m,), generator=g)
    labels[1] = labels[0]  # at least one anchor has a positive
    z = _inputs(1, m, d, seed, torch.float32)
    check_against_reference(z, labels, temperature, reduction, seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("temperature", [0.5, 0.07, 0.01])
@pytest.mark.parametrize(("v", "n", "d"), [(2, 17, 32), (3, 11, 45)])
def test_low_precision(dtype: torch.dtype, temperature: float, v: int, n: int, d: int) -> None:
    check_against_reference(_inputs(v, n, d, 3, dtype), None, temperature, "mean")


@settings(max_examples=12)
@given(
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    n=st.integers(1, 12).map(lambda x: 2 * x + 1),
    d=st.sampled_from([4, 24, 100]),
    temperature=st.sampled_from(TAU_CONST + TAU_ONLINE),
    reduction=st.sampled_from(["mean", "none"]),
    seed=st.integers(0, 2**16),
)
def test_low_precision_hypothesis(
    dtype: torch.dtype, n: int, d: int, temperature: float, reduction: str, seed: int
) -> None:
    check_against_reference(_inputs(2, n, d, seed, dtype), None, temperature, reduction, seed)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("temperature", [0.2, 0.01])
@pytest.mark.parametrize("deterministic", [False, True])
def test_large_d(dtype: torch.dtype, temperature: float, deterministic: bool) -> None:
    """D ≥ 2048 takes the chunked-D kernels (gradient read-modify-written per chunk)."""
    torch.use_deterministic_algorithms(deterministic)
    try:
        check_against_reference(_inputs(2, 3, 2051, 5, dtype), None, temperature, "mean")
    finally:
        torch.use_deterministic_algorithms(False)


# --------------------------------------------------------------------------------------------
# paths: constant shift vs online, symmetric (atomics) vs deterministic row blocks


def test_switch_rule_is_on_temperature_only() -> None:
    ops = _ops()
    limit = 2.0 / 64.0  # CONST_SHIFT_LIMIT = 64
    assert ops._k.CONST_SHIFT_LIMIT == 64.0
    assert ops.select_path(limit, deterministic=False) == ops.Path(symmetric=True, online=False)
    assert ops.select_path(limit * 0.999, deterministic=False).online
    assert ops.select_path(limit * 1.001, deterministic=False).symmetric
    assert ops.select_path(0.5, deterministic=True) == ops.Path(symmetric=False, online=False)


@pytest.mark.parametrize("temperature", [2.0 / 64.0 * 1.05, 2.0 / 64.0 * 0.95])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_both_sides_of_the_switch(temperature: float, dtype: torch.dtype) -> None:
    # near-antipodal pairs make the smallest exp(s − 1/τ) as small as the rule allows
    z = _inputs(2, 9, 12, 11, dtype)
    z[1][:4] = -z[0][:4]
    check_against_reference(z, None, temperature, "none")


def test_tiny_temperature_fp16_is_finite_and_right() -> None:
    """τ = 0.01 in fp16: exp(−2/τ) = exp(−200) underflows fp32, so only the online path works."""
    z = _inputs(2, 16, 24, 2, torch.float16)
    z[1][:8] = -z[0][:8]
    check_against_reference(z, None, 0.01, "mean")


@pytest.mark.parametrize("temperature", [0.3, 0.01])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_path_matches_symmetric(temperature: float, dtype: torch.dtype) -> None:
    views = _inputs(3, 21, 40, 4, dtype)
    w = _weights("none", 63, 4)
    sym, sym_g = _run(
        views, None, w, DEVICE, backend="triton", temperature=temperature, reduction="none"
    )
    torch.use_deterministic_algorithms(True)
    try:
        det, det_g = _run(
            views, None, w, DEVICE, backend="triton", temperature=temperature, reduction="none"
        )
        det2, det2_g = _run(
            views, None, w, DEVICE, backend="triton", temperature=temperature, reduction="none"
        )
    finally:
        torch.use_deterministic_algorithms(False)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert _err(sym, det) <= tol * _scale(det)
    for a, b in zip(sym_g, det_g, strict=True):
        assert _err(a, b) <= tol * _scale(b)
    # the row-block path has no atomics: bitwise reproducible
    assert torch.equal(det, det2)
    assert all(torch.equal(a, b) for a, b in zip(det_g, det2_g, strict=True))


def test_symmetric_path_is_used_and_uses_atomics_buffer() -> None:
    ops = _ops()
    z = F.normalize(torch.randn(40, 8, dtype=torch.float32), dim=1).to(DEVICE)
    ops.LAST_WORKSPACE.clear()
    ops.BACKEND.lse_sym(z, 0.5)
    assert ops.LAST_WORKSPACE["lse_sym"] == 2 * 40 * 4  # row sums + atomic column sums
    torch.use_deterministic_algorithms(True)
    try:
        ops.BACKEND.lse_sym(z, 0.5)
    finally:
        torch.use_deterministic_algorithms(False)
    assert ops.LAST_WORKSPACE["lse_sym"] == 0


# --------------------------------------------------------------------------------------------
# degenerate and awkward inputs


@pytest.mark.parametrize("temperature", [0.5, 0.01])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zero_rows_give_no_nan(temperature: float, dtype: torch.dtype) -> None:
    views = _inputs(2, 6, 10, 1, dtype)
    views[0][2] = 0
    views[1][2] = 0
    views[1][4] = 0
    check_against_reference(views, None, temperature, "mean")


def test_all_zero_batch_is_log_m_minus_1() -> None:
    # every s_ak = 0: loss_a = log(M − 1) − 0
    z = torch.zeros(2, 5, 7)
    loss, grads = _run([z[0], z[1]], None, torch.tensor(0.5), DEVICE, backend="triton")
    assert abs(float(loss) - float(torch.log(torch.tensor(9.0)))) < 1e-6
    assert all(torch.isfinite(g).all() for g in grads)


def test_identical_views_swap_symmetry() -> None:
    a, b = _inputs(2, 9, 20, 8, torch.float32)
    kw = {"backend": "triton", "temperature": 0.2}
    ab = fastclr.ntxent(a.to(DEVICE), b.to(DEVICE), **kw)  # type: ignore[arg-type]
    ba = fastclr.ntxent(b.to(DEVICE), a.to(DEVICE), **kw)  # type: ignore[arg-type]
    tv, _ = fp32_dot_bound(0.2, 1.0, 1)  # 3×TF32 dots on a GPU; exact under the interpreter
    assert abs(float(ab) - float(ba)) < 1e-6 + 2 * tv
    # identical views: each anchor's positive is itself, s_ap = 1/τ
    same = fastclr.ntxent(a.to(DEVICE), a.clone().to(DEVICE), reduction="none", **kw)  # type: ignore[arg-type]
    zz = F.normalize(torch.cat([a, a]).double(), dim=1)
    s = zz @ zz.T / 0.2
    s.fill_diagonal_(float("-inf"))
    expected = torch.logsumexp(s, dim=1) - 1 / 0.2
    assert_close_to_reference(same.cpu(), expected, atol=1e-5 + tv, name="identical views")


@pytest.mark.parametrize("temperature", [0.5, 0.01])
def test_non_contiguous_inputs(temperature: float) -> None:
    base = torch.randn(2, 30, 22, dtype=torch.float64)
    views = [base[0, ::3, ::2], base[1].T.contiguous().T[::3, ::2]]  # strided, column-major
    assert not views[0].is_contiguous() and not views[1].is_contiguous()
    check_against_reference([v.float() for v in views], None, temperature, "mean")
    ops = _ops()
    zt = F.normalize(torch.randn(24, 10), dim=1).to(DEVICE).T.contiguous().T  # column-major
    assert not zt.is_contiguous()
    got = ops.BACKEND.lse_sym(zt, temperature)
    want = ops.BACKEND.lse_sym(zt.contiguous(), temperature)
    assert _err(got, want) < 1e-5 * _scale(want)


# --------------------------------------------------------------------------------------------
# the ops themselves: rectangular LSE, memory, registration


def _lse_definition(q: torch.Tensor, k: torch.Tensor, tau: float, off: int) -> torch.Tensor:
    s = q @ k.T / tau
    rows = torch.arange(q.shape[0])
    s[rows, rows + off] = float("-inf")
    return torch.logsumexp(s, dim=1)


@pytest.mark.parametrize("temperature", [0.4, 0.01])
@pytest.mark.parametrize(("mq", "mk", "off"), [(7, 19, 5), (20, 20, 0), (1, 2, 1)])
def test_lse_rect_values_and_grads(temperature: float, mq: int, mk: int, off: int) -> None:
    ops = _ops()
    k = F.normalize(torch.randn(mk, 13, dtype=torch.float64), dim=1)
    q = k[off : off + mq].clone()
    g = torch.randn(mq, dtype=torch.float64)
    qr, kr = q.clone().requires_grad_(), k.clone().requires_grad_()
    ref = _lse_definition(qr, kr, temperature, off)
    (ref * g).sum().backward()
    qt = q.float().to(DEVICE).requires_grad_()
    kt = k.float().to(DEVICE).requires_grad_()
    got = ops.BACKEND.lse_rect(qt, kt, off, temperature)
    (got * g.float().to(DEVICE)).sum().backward()
    # + the 3×TF32 bound of fp32 dots on a GPU (the interpreter's dots are exact fp32)
    tv, tg = fp32_dot_bound(temperature, float(g.abs().max()), 1)
    assert_close_to_reference(got.cpu(), ref, atol=1e-5 * _scale(ref) + tv, name="lse")
    for t, r in ((qt, qr), (kt, kr)):
        assert t.grad is not None and r.grad is not None
        bar = 1e-5 * _scale(r.grad) + tg
        assert_close_to_reference(t.grad.cpu(), r.grad, atol=bar, name="grad")


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("temperature", [0.5, 0.01])
def test_workspace_is_linear_in_m_and_d(deterministic: bool, temperature: float) -> None:
    """Extra memory O(M·D + M): the launchers' recorded allocations match workspace_bytes()."""
    ops = _ops()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for m, d in [(33, 9), (66, 9), (33, 18)]:
            z = F.normalize(torch.randn(m, d), dim=1).to(DEVICE).requires_grad_()
            ops.LAST_WORKSPACE.clear()
            lse = ops.BACKEND.lse_sym(z, temperature)
            lse.sum().backward()
            path = ops.select_path(temperature)
            for op in ("lse_sym", "lse_sym_backward"):
                assert ops.LAST_WORKSPACE[op] == ops.workspace_bytes(m, d, op, path)
                assert ops.LAST_WORKSPACE[op] <= 2 * m * d * 4 + 2 * m * 4
    finally:
        torch.use_deterministic_algorithms(False)


def test_custom_ops_pass_opcheck() -> None:
    ops = _ops()
    z = F.normalize(torch.randn(12, 6), dim=1).to(DEVICE).requires_grad_()
    torch.library.opcheck(ops.triton_lse_sym, (z, 0.5))
    q = z.detach()[3:8].clone().requires_grad_()
    torch.library.opcheck(ops.triton_lse_rect, (q, z, 3, 0.5))
    assert hasattr(torch.ops.fastclr, "triton_lse_sym")
    assert hasattr(torch.ops.fastclr, "triton_lse_rect")


def test_cpu_without_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = _ops()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        ops.BACKEND.lse_sym(torch.zeros(4, 3), 0.5)


def test_compiles_without_graph_breaks() -> None:
    """The ops trace as single nodes (fake kernels registered): fullgraph compile, fwd + bwd."""
    ops = _ops()
    z = F.normalize(torch.randn(20, 8), dim=1).to(DEVICE)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (ops.BACKEND.lse_sym(x, 0.5) * torch.linspace(0.5, 1.5, 20, device=x.device)).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    x1, x2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    compiled(x1).backward()
    f(x2).backward()
    assert x1.grad is not None and x2.grad is not None
    assert _err(x1.grad, x2.grad) < 1e-6


# --------------------------------------------------------------------------------------------
# many programs: ≥ 4 row blocks × ≥ 4 column blocks, key-range splits, scaling, 3×TF32, launches

# 2 views × 131 rows: ≥ 4 row and column blocks at the interpreter's BLOCK_M = 32 and at the
# compiled tests' pinned BLOCK_M = 64 (9 and 5 blocks).
MANY_BLOCKS = (2, 131, 40)


def _blocks(m: int) -> int:
    bm = max(
        c.kwargs["BLOCK_M"]
        for c in _ops()._k.SYM_CONFIGS + _ops()._k.ROW_CONFIGS + _ops()._k.ROW_BWD_CONFIGS
    )
    return -(-m // bm)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("temperature", [0.2, 0.02])
def test_many_row_and_column_blocks_with_splits(
    dtype: torch.dtype, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The off-diagonal tiles, the pair schedule and several key-range splits per row block.

    ~4 s each under the interpreter. SPLIT_ROWS = 32 lets 262 keys take 8 splits (some empty).
    """
    ops = _ops()
    v, n, d = MANY_BLOCKS
    assert _blocks(v * n) >= 4  # every config's row blocks, so also ≥ 4 column blocks
    monkeypatch.setattr(ops, "SPLIT_ROWS", 32)
    assert ops._splits(v * n, v * n, torch.device(DEVICE)) > 1
    check_against_reference(_inputs(v, n, d, 21, dtype), None, temperature, "none", seed=21)


@pytest.mark.parametrize("temperature", [0.2, 0.02])
def test_splits_agree_with_one_split_and_repeat_bitwise(
    temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S key-range splits sum to the S = 1 gradient; no atomics in the backward: bitwise repeats."""
    ops = _ops()
    z = F.normalize(torch.randn(150, 12, dtype=torch.float64), dim=1).float().to(DEVICE)
    g = torch.rand(150, dtype=torch.float32).to(DEVICE) + 0.5

    def grad() -> torch.Tensor:
        x = z.clone().requires_grad_()
        (ops.BACKEND.lse_sym(x, temperature) * g).sum().backward()
        assert x.grad is not None
        return x.grad

    one = grad()
    assert ops.LAST_WORKSPACE["lse_sym_backward"] == 150 * 12 * 4  # S = 1
    monkeypatch.setattr(ops, "SPLIT_ROWS", 16)
    s = ops._splits(150, 150, torch.device(DEVICE))
    assert s > 1
    many, again = grad(), grad()
    assert ops.LAST_WORKSPACE["lse_sym_backward"] == s * 150 * 12 * 4
    assert torch.equal(many, again)
    assert _err(many, one) <= 1e-6 * _scale(one) + 1e-7


def test_split_count_fills_the_gpu() -> None:
    ops = _ops()
    # M = 8192 rows on an H200: 64 row blocks of 128 → 2 splits, 128 programs on 132 SMs
    assert ops.split_count(64, 8192, 132) == 2
    assert ops.split_count(512, 65536, 132) == 1  # already 3.9 waves
    for blocks in range(1, 140):
        s = ops.split_count(blocks, 1 << 20, 132)
        assert 1 <= s <= ops.MAX_SPLIT
        if blocks < 132:  # never fewer programs than half the SMs when a split can help
            assert blocks * s >= min(66, blocks * ops.MAX_SPLIT)
    assert ops.split_count(1, 100, 132) == 1  # fewer keys than one split's worth


@pytest.mark.parametrize("temperature", [0.1, 0.02])
def test_fp16_backward_scales_p_before_the_cast(temperature: float) -> None:
    """P ≈ g·softmax/τ rounded to fp16 flushes to zero for small g (at M = 262,144 and g = 1/M it
    is ~1e-11); the kernel scales P by a power of two first. With g·2^-26 every unscaled P here
    is below fp16's smallest subnormal (6e-8), so an unscaled kernel returns ~0 and fails."""
    ops = _ops()
    m, d = 96, 24
    z16 = F.normalize(torch.randn(m, d, dtype=torch.float64), dim=1).half()
    z = z16.double()
    w = torch.rand(m, dtype=torch.float64) + 0.5
    s = z @ z.T / temperature
    s.fill_diagonal_(float("-inf"))
    lse = torch.logsumexp(s, dim=1)
    wmat = w[:, None] * torch.exp(s - lse[:, None])
    want = (wmat + wmat.T) @ z / temperature
    tiny = 2.0**-26
    meta = ops._meta(m, d, torch.float16)
    lse32, g = lse.float().to(DEVICE), (w * tiny).float().to(DEVICE)
    zd = z16.to(DEVICE)
    q = ops.q_factor(lse32, temperature)
    part, _ = ops._rows_backward(
        zd,
        zd,
        (lse32, q, lse32, q),
        (g, 1.0),
        (0, 0),
        (True, True),
        temperature,
        ops.select_path(temperature).online,
        meta,
    )
    got = part.sum(dim=0).cpu().double() / tiny
    # each σP entry is rounded to fp16 (≤ 2^-11 relative), Σ_k |P_ak| ≤ 2 max w/τ
    bar = 2.0**-11 * 2 * float(w.max()) / temperature * 2
    assert _err(got, want) <= bar, (_err(got, want), bar)
    assert float(want.abs().max()) > 10 * bar  # the check is not vacuous


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 → TF32 (10 mantissa bits), round to nearest with ties away, as cvt.rna.tf32.f32."""
    bits = x.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _dot_3xtf32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise a·b as the tensor cores compute it in 3×TF32 (products exact, summed in fp64)."""
    ah, bh = _tf32(a), _tf32(b)
    al, bl = _tf32(a.float() - ah), _tf32(b.float() - bh)
    ah, bh, al, bl = (t.double() for t in (ah, bh, al, bl))
    return (ah * bh + ah * bl + al * bh).sum(-1)


@pytest.mark.parametrize("d", [1, 7, 128, 2048])
def test_tf32x3_emulation_obeys_the_bound(d: int) -> None:
    """|3×TF32(a·b) − a·b| ≤ FP32_DOT_REL_ERR·Σ|a_i b_i| on random and rounding-edge inputs."""
    ops = _ops()
    g = torch.Generator().manual_seed(d)
    a = torch.randn(4000, d, generator=g)
    b = torch.randn(4000, d, generator=g)
    # values whose low mantissa bits sit at the TF32 rounding midpoints (worst case of rounding)
    edge = (torch.randint(0, 2**22, (4000, d), generator=g, dtype=torch.int32) | 0x3F801000).view(
        torch.float32
    )
    for x, y in ((a, b), (edge, b), (edge, edge.flip(0))):
        exact = (x.double() * y.double()).sum(-1)
        err = (_dot_3xtf32(x, y) - exact).abs()
        bound = ops.FP32_DOT_REL_ERR * (x.double() * y.double()).abs().sum(-1)
        assert bool((err <= bound).all()), float((err / bound.clamp_min(1e-300)).max())
    # and the bound is not loose by orders of magnitude: the dropped lo·lo term shows up
    err = (_dot_3xtf32(edge, edge) - (edge.double() ** 2).sum(-1)).abs()
    assert float((err / (edge.double() ** 2).sum(-1)).max()) > ops.FP32_DOT_REL_ERR / 64


# One forward+backward of the triton LSE op (symmetric path): forward = zero the column sums,
# the kernel, the sum over splits, + column sums, log, + c (6); backward = the fp32 gradient view or
# copy (≤ 1), the kernel, the sum over splits (S > 1 only), the cast to the input dtype (≤ 1) (≤ 4).
OP_LAUNCHES = 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_launch_count_is_bounded_and_sync_free(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch, count_launches: Any
) -> None:
    """A fixed number of launches whatever M (and S), no host sync, no data-dependent shapes:
    what a CUDA graph capture needs."""
    ops = _ops()
    counts = []
    for m, split_rows in ((40, 128), (300, 128), (300, 16)):
        monkeypatch.setattr(ops, "SPLIT_ROWS", split_rows)
        z = F.normalize(torch.randn(m, 16), dim=1).to(dtype).to(DEVICE).requires_grad_()
        g = torch.rand(m, device=DEVICE)

        def step(z: torch.Tensor = z, g: torch.Tensor = g) -> None:
            (ops.BACKEND.lse_sym(z, 0.3) * g).sum().backward()

        names = count_launches(step)
        op_names = [n for n in names if n.startswith("triton:")]
        assert op_names == ["triton:ntxent_sym_fwd_kernel", "triton:ntxent_rows_bwd_kernel"]
        for sync in ("_local_scalar_dense", "item", "nonzero", "masked_select", "unique"):
            assert sync not in names, names
        counts.append(len(names))
    # the caller's own ops (mul, sum, ones_like for backward, the grad accumulation) are included
    assert max(counts) <= OP_LAUNCHES + 6, counts
    assert counts[0] <= counts[2] <= counts[0] + 1  # S > 1 adds only the sum over splits


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_forward_backward_captures_in_a_cuda_graph() -> None:
    ops = _ops()
    z = F.normalize(torch.randn(520, 64, device="cuda"), dim=1).bfloat16().requires_grad_()
    g = torch.rand(520, device="cuda")

    def step() -> None:
        z.grad = None
        (ops.BACKEND.lse_sym(z, 0.2) * g).sum().backward()

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile (and tune) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    eager = z.grad.clone()  # type: ignore[union-attr]
    graph = torch.cuda.CUDAGraph()
    z.grad = None
    with torch.cuda.graph(graph):
        (ops.BACKEND.lse_sym(z, 0.2) * g).sum().backward()
    graph.replay()
    torch.cuda.synchronize()
    assert z.grad is not None
    assert _err(z.grad, eager) <= 1e-2 * _scale(eager)
