"""fastclr.compat.solo against solo-learn's published ``simclr_loss_func`` semantics.

solo-learn is not installed in CI (its only release on PyPI, 1.0.2 from 2021, pins an old
Lightning stack), so its function is checked through ``fastclr.reference.solo_simclr_reference``,
a float64 transcription of its formula (positives summed inside the log, mean over all anchors),
and through solo-learn's own test case (tests/losses/test_simclr.py: b = 32, f = 128, τ = 0.1,
20 gradient steps of size 0.5 must lower the loss).

The transcription was checked against solo-learn's own ``solo/losses/simclr.py``
(vturrisi/solo-learn at 9187ea3), run locally (not in CI): loaded from the file with its
``gather``/``get_rank`` given their one-process values (identity, 0), on 40 drawn cases (2..4
crops, τ 0.05/0.1/0.5, sample ids and class targets, integer and floating, rows of norm ~3·√D)
its float64 value equals the transcription's to 1e-10, and this module's native and reference
backends give its values (rel 2e-5) and input gradients (4.5e-4 of max |g| at worst, on a batch
whose gradients are ~1e-17). Under CPU bf16 autocast its loss is bfloat16; at τ = 0.0112 it is
NaN (exp(1/τ) overflows float32). About 5 s on 2 cores.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastclr import ntxent
from fastclr.compat.solo import simclr_loss_func
from fastclr.reference import solo_simclr_reference
from fastclr.testing import loss_backends

BACKENDS = loss_backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_solo_learn_own_case_descends(backend: str) -> None:
    b, f = 32, 128
    z1 = torch.randn(b, f).requires_grad_()
    z2 = torch.randn(b, f).requires_grad_()
    indexes = torch.arange(b).repeat(2)
    initial = float(
        simclr_loss_func(torch.cat((z1, z2)), indexes, temperature=0.1, backend=backend).detach()
    )
    assert initial != 0
    for _ in range(20):
        loss = simclr_loss_func(torch.cat((z1, z2)), indexes, temperature=0.1, backend=backend)
        loss.backward()
        assert z1.grad is not None and z2.grad is not None
        with torch.no_grad():
            z1.add_(-0.5 * z1.grad)
            z2.add_(-0.5 * z2.grad)
        z1.grad = z2.grad = None
    assert float(loss.detach()) < initial


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    n_views=st.integers(2, 4),
    n=st.integers(2, 9),
    d=st.integers(2, 17),
    tau=st.sampled_from([0.05, 0.1, 0.5]),
    supervised=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_the_definition(
    backend: str, n_views: int, n: int, d: int, tau: float, supervised: bool, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_views * n, d, generator=g, dtype=torch.float64)
    if supervised:  # class targets: every class occurs at least twice over the views
        indexes = torch.randint(0, max(1, n // 2), (n,), generator=g).repeat(n_views)
    else:
        indexes = torch.arange(n).repeat(n_views)
    leaf = z.clone().requires_grad_()
    want = solo_simclr_reference(leaf, indexes, tau)
    want.backward()
    got_leaf = z.float().requires_grad_()
    got = simclr_loss_func(got_leaf, indexes, tau, backend=backend)
    got.backward()
    # float32 rounding of logits of size 1/τ (a one-class batch has loss 0 up to that)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=2e-5, abs=4e-7 / tau)
    assert leaf.grad is not None and got_leaf.grad is not None
    floor = 1e-6 / (tau * float(z.norm(dim=1).min()))
    gtol = 1e-4 * float(leaf.grad.abs().max()) + floor
    assert float((got_leaf.grad.double() - leaf.grad).abs().max()) <= gtol


def test_three_views_sum_inside_the_log() -> None:
    """With 3 crops solo-learn's value is L_in minus log|P| = log 2, not fastclr's default L_out."""
    views = [torch.randn(6, 8) for _ in range(3)]
    z, idx = torch.cat(views), torch.arange(6).repeat(3)
    solo = float(simclr_loss_func(z, idx, 0.2))
    l_in = float(ntxent(*views, temperature=0.2, positives="in"))
    l_out = float(ntxent(*views, temperature=0.2))
    assert solo == pytest.approx(l_in - math.log(2), rel=1e-5)
    assert l_out > solo + 0.1


def test_two_views_equal_ntxent() -> None:
    zi, zj = torch.randn(7, 5), torch.randn(7, 5)
    solo = float(simclr_loss_func(torch.cat([zi, zj]), torch.arange(7).repeat(2), 0.3))
    assert solo == pytest.approx(float(ntxent(zi, zj, temperature=0.3)), rel=1e-6)


def test_bad_input_is_named() -> None:
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="indexes give some crop no positive"):
        simclr_loss_func(z, torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"indexes must have shape \(4,\)"):
        simclr_loss_func(z, torch.tensor([0, 0, 1]))
    with pytest.raises(TypeError, match="indexes must be an integer or floating tensor"):
        simclr_loss_func(z, torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="indexes contain NaN"):
        simclr_loss_func(z, torch.tensor([0.0, 0.0, 1.0, float("nan")]))
    with pytest.raises(ValueError, match="z must be 2-D"):
        simclr_loss_func(torch.randn(4), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("backend", BACKENDS)
def test_floating_indexes_compare_by_equality(backend: str) -> None:
    """solo-learn compares indexes with ==: floating class targets give the same loss as the
    integer classes they stand for (issue 24: they were refused)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 6, generator=g)
    ints = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(2)
    want = float(solo_simclr_reference(z, ints, 0.2))
    for indexes in (ints.float() * 0.5 - 1, ints.double()):
        got = float(simclr_loss_func(z, indexes, 0.2, backend=backend))
        assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("dtype", "autocast", "want"),
    [
        (torch.float32, True, torch.bfloat16),
        (torch.bfloat16, True, torch.bfloat16),
        (torch.float32, False, torch.float32),
        (torch.bfloat16, False, torch.bfloat16),
        (torch.float64, True, torch.float64),
    ],
)
def test_dtype_is_solo_learns(
    backend: str, dtype: torch.dtype, autocast: bool, want: torch.dtype
) -> None:
    """solo-learn's last ops (einsum, exp, sum, log, mean) keep the autocast dtype on a CPU, so
    its loss is bfloat16 under CPU bf16 autocast, the inputs' dtype without it. The value is
    computed in float32 and rounded once."""
    g = torch.Generator().manual_seed(4)
    z = (3 * torch.randn(32, 16, generator=g)).to(dtype)
    indexes = torch.arange(16).repeat(2)
    exact = float(solo_simclr_reference(z.double(), indexes, 0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = simclr_loss_func(z, indexes, 0.1, backend=backend)
    assert got.dtype == want
    rounding = torch.finfo(want).eps * abs(exact) if want != torch.float64 else 0.0
    assert float(got) == pytest.approx(exact, rel=2e-5, abs=rounding)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_temperature_is_the_formulas_value(backend: str) -> None:
    """A deliberate difference: at τ = 0.0112 solo-learn's unshifted exp(1/τ) overflows float32
    and its loss is NaN; here it is the formula's value."""
    g = torch.Generator().manual_seed(5)
    z = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    indexes = torch.arange(8).repeat(2)
    want = float(solo_simclr_reference(z, indexes, 0.0112))
    assert float(simclr_loss_func(z, indexes, 0.0112, backend=backend)) == pytest.approx(
        want, rel=1e-5
    )
