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
