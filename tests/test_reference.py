"""The reference NT-Xent against an independent per-anchor loop, closed forms and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastclr import NTXentLoss, ntxent
from fastclr.reference import (
    l2_normalize,
    ntxent_lse_reference,
    ntxent_reference,
    ntxent_reference_rows,
    views_to_batch,
)


def loop_loss(z: torch.Tensor, labels: list[int], tau: float) -> float:
    """SupCon L_out by the definition, one anchor at a time, in Python floats."""
    zs = [F.normalize(row.double(), dim=0, eps=1e-8).tolist() for row in z]
    m = len(zs)

    def s(a: int, k: int) -> float:
        return sum(x * y for x, y in zip(zs[a], zs[k], strict=True)) / tau

    losses = []
    for a in range(m):
        positives = [p for p in range(m) if p != a and labels[p] == labels[a]]
        if not positives:
            continue
        logits = [s(a, k) for k in range(m) if k != a]
        peak = max(logits)
        lse = peak + math.log(sum(math.exp(v - peak) for v in logits))
        losses.append(lse - sum(s(a, p) for p in positives) / len(positives))
    return sum(losses) / len(losses)


@given(
    n=st.integers(1, 9),
    d=st.integers(1, 12),
    views=st.integers(2, 4),
    tau=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_views_match_loop(n: int, d: int, views: int, tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(views)]
    z, labels = views_to_batch(vs)
    expected = loop_loss(z, labels.tolist(), tau)
    got = ntxent(*vs, temperature=tau, backend="reference")
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(
    m=st.integers(2, 24),
    classes=st.integers(1, 6),
    d=st.integers(1, 10),
    tau=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_labels_match_loop(m: int, classes: int, d: int, tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (m,), generator=g)
    labels[1] = labels[0]  # at least one anchor has a positive
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    expected = loop_loss(z, labels.tolist(), tau)
    got = ntxent(z, labels=labels, temperature=tau, backend="reference")
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_two_views_is_simclr_eq1() -> None:
    """For V = 2, the loss is the paper's Eq. 1: -log softmax of the positive over 2N-1 others."""
    n, d, tau = 5, 7, 0.3
    a, b = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = z @ z.T / tau
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    expected = F.cross_entropy(sim, target)
    torch.testing.assert_close(ntxent(a, b, temperature=tau, backend="reference"), expected)


def test_identical_views_closed_form() -> None:
    """Identical views of orthonormal samples: s_pos = 1/τ, s_neg = 0, so the loss is known."""
    n, tau = 4, 0.5
    eye = torch.eye(n, dtype=torch.float64) * 3.0  # norms are removed by the loss
    m = 2 * n
    expected = math.log(math.exp(1 / tau) + (m - 2)) - 1 / tau
    assert ntxent(eye, eye.clone(), temperature=tau).item() == pytest.approx(expected, rel=1e-12)


def test_swapping_views_same_loss() -> None:
    a, b, c = (torch.randn(6, 5, dtype=torch.float64) for _ in range(3))
    base = ntxent(a, b, c, backend="reference")
    torch.testing.assert_close(ntxent(b, a, c, backend="reference"), base)
    torch.testing.assert_close(ntxent(c, b, a, backend="reference"), base)


def test_reductions_consistent() -> None:
    z = torch.randn(10, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 5])  # 2, 4, 5 have no positive
    per = ntxent(z, labels=labels, reduction="none")
    assert per.shape == (10,)
    has_pos = torch.tensor([1, 1, 1, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    assert torch.all(per[~has_pos] == 0)
    assert torch.all(per[has_pos] != 0)
    torch.testing.assert_close(ntxent(z, labels=labels, reduction="sum"), per.sum())
    torch.testing.assert_close(ntxent(z, labels=labels, reduction="mean"), per.sum() / 7)


def test_gradcheck_float64() -> None:
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, y: ntxent(x, y, temperature=0.4, backend="reference"), (a, b)
    )
    z = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    assert torch.autograd.gradcheck(
        lambda x: ntxent(x, labels=labels, temperature=0.7, reduction="sum", backend="reference"),
        (z,),
    )


def test_zero_rows_give_no_nan() -> None:
    a = torch.zeros(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    loss = ntxent(a, b)
    loss.backward()
    assert torch.isfinite(loss)
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_lse_reference_excludes_self_with_offset() -> None:
    k = torch.randn(9, 5, dtype=torch.float64)
    q = k[3:6]
    got = ntxent_lse_reference(q, k, 0.5, q_offset=3)
    kn = F.normalize(k, dim=1)
    for i in range(3):
        a = 3 + i
        s = torch.cat([kn[:a], kn[a + 1 :]]) @ kn[a] / 0.5
        torch.testing.assert_close(got[i], torch.logsumexp(s, 0))


def test_module_matches_functional_and_reference_fn() -> None:
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    z, labels = views_to_batch([a, b])
    mod = NTXentLoss(temperature=0.2, backend="reference")
    torch.testing.assert_close(mod(a, b), ntxent(a, b, temperature=0.2, backend="reference"))
    torch.testing.assert_close(mod(a, b), ntxent_reference(z, labels, 0.2))
    assert "temperature=0.2" in repr(mod)


def test_reference_rows_matches_full() -> None:
    z = torch.randn(13, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 0, 1, 5, 2])
    full = ntxent_reference(z, labels, 0.3, reduction="none")
    for rows in (slice(0, 13), slice(4, 9), slice(12, 13)):
        torch.testing.assert_close(ntxent_reference_rows(z, labels, rows, 0.3), full[rows])


# ------------------------------------------------------------------------------------------------
# any finite scale: F.normalize squares the entries, so a float32 row with norm above ~1.8e19 got
# norm inf, ẑ = 0, and the loss the constant log(M − 1) with zero gradient (issue 24).


def scaled_loss_and_grad(
    vs: list[torch.Tensor], scale: float, tau: float, backend: str, dtype: torch.dtype
) -> tuple[float, list[torch.Tensor]]:
    """The loss of the views multiplied by ``scale`` (cast to ``dtype``), and its gradients
    multiplied back by ``scale`` (the loss is scale-invariant, so these equal the unscaled ones).
    ``eps`` = 1e-30 keeps every scaled row above it (below eps, ẑ = z / eps by definition)."""
    leaves = [(v * scale).to(dtype).requires_grad_() for v in vs]
    loss = ntxent(*leaves, temperature=tau, backend=backend, eps=1e-30)
    loss.backward()
    return float(loss.detach()), [leaf.grad.double() * scale for leaf in leaves]  # type: ignore[union-attr]


def check_scale_invariance(
    n: int, d: int, tau: float, log2_scale: int, seed: int, backend: str, dtype: torch.dtype
) -> None:
    """Values and gradients of ``z · 2^log2_scale`` against the float64 reference at ``z``."""
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2)]
    leaves = [v.clone().requires_grad_() for v in vs]
    want = ntxent_reference(*views_to_batch(leaves), tau)
    want.backward()
    got, grads = scaled_loss_and_grad(vs, 2.0**log2_scale, tau, backend, dtype)
    assert got == pytest.approx(float(want.detach()), rel=2e-5, abs=4e-7 / tau)
    for mine, leaf in zip(grads, leaves, strict=True):
        assert leaf.grad is not None
        floor = 1e-6 / (tau * float(leaf.detach().norm(dim=1).min()))
        tol = 1e-4 * float(leaf.grad.abs().max()) + floor
        assert float((mine - leaf.grad).abs().max()) <= tol


@given(
    n=st.integers(1, 9),
    d=st.integers(1, 40),
    tau=st.sampled_from([0.05, 0.2, 0.5]),
    log2_scale=st.integers(-60, 120),
    seed=st.integers(0, 2**16),
)
def test_float32_reference_is_exact_at_any_scale(
    n: int, d: int, tau: float, log2_scale: int, seed: int
) -> None:
    """``backend="reference"`` computes in the inputs' dtype: float32 rows scaled by 2^-60..2^120
    (norms from ~1e-18 to ~1e37) give the float64 loss of the unscaled rows, and its gradient."""
    check_scale_invariance(n, d, tau, log2_scale, seed, "reference", torch.float32)


def test_issue_probe_huge_rows_are_not_the_constant() -> None:
    """The issue's symptom: at norm ~1e20 the loss was log(M − 1) and every gradient 0."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 16, generator=g)
    b = a + 0.3 * torch.randn(8, 16, generator=g)
    want = float(ntxent(a.double(), b.double(), temperature=0.5))
    x, y = (a * 1e20).requires_grad_(), (b * 1e20).requires_grad_()
    loss = ntxent(x, y, temperature=0.5, backend="reference")
    loss.backward()
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert float(loss.detach()) != pytest.approx(math.log(15), rel=1e-3)
    assert x.grad is not None and float(x.grad.abs().max()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_l2_normalize_is_f_normalize_on_ordinary_rows(dtype: torch.dtype) -> None:
    """Dividing by a power of two is exact: bit for bit F.normalize's values and gradients on rows
    whose squares neither overflow nor underflow (norms 1e-6..1e6 here), a zero row included."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(41, 130, generator=g) * torch.exp(3 * torch.randn(41, 1, generator=g))
    z[5] = 0
    z = z.to(dtype)
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    mine, theirs = l2_normalize(a, 1e-8), F.normalize(b, dim=1, eps=1e-8)
    up = torch.randn(mine.shape, generator=g).to(dtype)
    mine.backward(up)
    theirs.backward(up)
    assert torch.equal(mine, theirs)
    assert torch.equal(a.grad, b.grad)  # type: ignore[arg-type]


def test_l2_normalize_extremes() -> None:
    """Huge rows are unit rows; rows below eps are z / eps, subnormal ones included; zero is 0."""
    z = torch.tensor([[3e30, 4e30], [3e38, -3e38], [1e-30, 1e-30], [3e-45, 4e-45], [0.0, 0.0]])
    want = torch.tensor(
        [[0.6, 0.8], [0.5**0.5, -(0.5**0.5)], [1e-22, 1e-22], [2.8026e-37, 4.2039e-37], [0, 0]]
    )
    torch.testing.assert_close(l2_normalize(z, 1e-8), want, rtol=1e-4, atol=0)
    leaf = z.clone().requires_grad_()
    l2_normalize(leaf, 1e-8).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
