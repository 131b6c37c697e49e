"""fastclr.compat.lightly against lightly's ``NTXentLoss`` (and its memory bank).

Where lightly is importable (the `.venv-peers` environment that `make test-peers` builds, with
torch + torchvision + lightly), every case is also run through lightly itself with the same seed:
same losses, same gradients, same bank after each step. Everywhere, lightly's own test cases
(tests/loss/test_ntx_ent_loss.py) are ported as facts: the closed forms of its correlated-embedding
test (every cosine is 1, so the loss is log(2N − 1) without a bank and log(K + 1) once the bank is
full), its symmetry tests, and its batch sizes 1..19 with a bank of 64; and the bank form is
checked against ``fastclr.reference.lightly_memory_bank_reference`` in float64 (values and
gradients) on every backend over several steps. About 8 s on 2 cores.
"""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastclr import ntxent
from fastclr.compat.lightly import NTXentLoss
from fastclr.reference import lightly_memory_bank_reference, ntxent_reference, views_to_batch
from fastclr.testing import loss_backends

try:
    from lightly.loss import NTXentLoss as LightlyNTXentLoss
except ImportError:  # lightly needs torchvision; see `make test-peers`
    LightlyNTXentLoss = None

# `make test` deselects these (-m "not peers"); `make test-peers` runs them where lightly is.
needs_lightly = pytest.mark.peers


BACKENDS = loss_backends()


def queue_rule(bank: torch.Tensor, ptr: int, keys: torch.Tensor) -> int:
    """lightly's queue update, written from its documented behaviour: fill from the pointer;
    a batch that reaches the end fills it, drops its rest, and the pointer returns to 0."""
    k, n = bank.shape[0], keys.shape[0]
    if ptr + n >= k:
        bank[ptr:] = keys[: k - ptr]
        return 0
    bank[ptr : ptr + n] = keys
    return ptr + n


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_samples", [1, 2, 8, 16])
@pytest.mark.parametrize("memory_bank_size", [0, 1, 2, 8, 15, 16, 17])
@pytest.mark.parametrize("temperature", [0.1, 1.0, 7.0])
def test_lightly_correlated_embedding_closed_form(
    backend: str, n_samples: int, memory_bank_size: int, temperature: float
) -> None:
    """lightly's test_with_correlated_embedding: all rows on one ray, so every cosine is 1."""
    g = torch.Generator().manual_seed(n_samples * 100 + memory_bank_size)
    out0 = torch.rand(n_samples, 1, generator=g) * torch.tensor([[1.0, 2.0]])
    out1 = torch.rand(n_samples, 1, generator=g) * torch.tensor([[1.0, 2.0]])
    out0.requires_grad_()
    loss_fn = NTXentLoss(temperature, memory_bank_size, backend=backend)
    if memory_bank_size > 0:
        for _ in range(memory_bank_size // n_samples + 2):  # fill the bank over several rounds
            loss = float(loss_fn(out0, out1).detach())
        want = math.log(memory_bank_size + 1)
    else:
        loss = float(loss_fn(out0, out1).detach())
        want = math.log(2 * n_samples - 1)
    assert loss == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lightly_symmetry_and_batch_sizes(backend: str) -> None:
    """lightly's forward-pass tests: symmetric in (out0, out1) for bsz 1..19 (D = 32 and 1),
    and a bank of 64 runs for every bsz 1..19."""
    loss_fn = NTXentLoss(backend=backend)
    banked = NTXentLoss(memory_bank_size=64, backend=backend)
    for bsz in range(1, 20):
        for d in (32, 1):
            a, b = torch.randn(bsz, d), torch.randn(bsz, d)
            assert float(loss_fn(a, b)) == pytest.approx(float(loss_fn(b, a)), abs=1e-5)
        assert torch.isfinite(banked(torch.randn(bsz, 32), torch.randn(bsz, 32)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bank_is_ntxent(backend: str) -> None:
    a, b = torch.randn(9, 16), torch.randn(9, 16)
    got = float(NTXentLoss(0.3, backend=backend)(a, b))
    assert got == pytest.approx(float(ntxent(a.double(), b.double(), temperature=0.3)), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=10)
@given(
    n=st.integers(1, 12),
    k=st.sampled_from([1, 5, 31, 32, 40, 77]),
    d=st.integers(1, 10),
    tau=st.sampled_from([0.05, 0.2, 0.5]),
    tuple_size=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bank_matches_the_definition_over_steps(
    backend: str, n: int, k: int, d: int, tau: float, tuple_size: bool, seed: int
) -> None:
    """Three steps: each loss and its gradients equal the float64 definition on the bank as it
    was before the step; the bank then follows lightly's queue rule; the initial bank is lightly's
    draw (randn on the global generator, normalised)."""
    torch.manual_seed(seed)
    bank = F.normalize(torch.randn(k, d), dim=-1)
    torch.manual_seed(seed)  # drawn again at construction (tuple) or at the first call (int)
    loss_fn = NTXentLoss(tau, (k, d) if tuple_size else k, backend=backend)
    ptr = 0
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        out0 = torch.randn(n, d, generator=g, dtype=torch.float64)
        out1 = torch.randn(n, d, generator=g, dtype=torch.float64)
        a, b = out0.clone().requires_grad_(), out1.clone().requires_grad_()
        want = lightly_memory_bank_reference(a, b, bank, tau)
        want.backward()
        fa, fb = out0.float().requires_grad_(), out1.float().requires_grad_()
        got = loss_fn(fa, fb)
        got.backward()
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=2e-5, abs=4e-7 / tau)
        for mine, ref, raw in ((fa, a, out0), (fb, b, out1)):
            assert mine.grad is not None and ref.grad is not None
            floor = 1e-6 / (tau * float(raw.norm(dim=1).min()))
            tol = 1e-4 * float(ref.grad.abs().max()) + floor
            assert float((mine.grad.double() - ref.grad).abs().max()) <= tol
        ptr = queue_rule(bank, ptr, F.normalize(out1.float(), dim=1))
        assert torch.allclose(loss_fn.bank, bank, atol=1e-6)


def test_bank_is_not_updated_without_grad() -> None:
    """lightly updates the bank only when out0 requires grad (evaluation leaves it alone)."""
    loss_fn = NTXentLoss(memory_bank_size=(8, 4))
    before = loss_fn.bank.clone()
    loss_fn(torch.randn(3, 4), torch.randn(3, 4))
    assert torch.equal(loss_fn.bank, before)
    loss_fn(torch.randn(3, 4, requires_grad=True), torch.randn(3, 4))
    assert not torch.equal(loss_fn.bank, before)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=-1.0)  # lightly accepts it; documented difference
    with pytest.raises(ValueError, match="memory_bank_size"):
        NTXentLoss(memory_bank_size=-1)
    with pytest.raises(ValueError, match="memory_bank_size"):
        NTXentLoss(memory_bank_size=(4, 2, 1))
    with pytest.raises(ValueError, match="same shape"):
        NTXentLoss()(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="holds 4-dim keys"):
        NTXentLoss(memory_bank_size=(8, 4))(torch.randn(3, 5), torch.randn(3, 5))
    with (
        mock.patch.object(torch.distributed, "is_available", return_value=False),
        pytest.raises(ValueError, match="gather_distributed"),
    ):
        NTXentLoss(gather_distributed=True)


def test_positional_order_is_lightlys() -> None:
    loss_fn = NTXentLoss(0.2, 16, False)
    assert (loss_fn.temperature, loss_fn.size, loss_fn.gather_distributed) == (0.2, (16,), False)


def test_memory_bank_attribute_is_lightlys() -> None:
    """``loss.memory_bank`` as lightly has it: ``bank`` (K, dim) float32, ``bank_ptr`` (1,)
    long, ``size``; the pointer follows the queue rule."""
    loss_fn = NTXentLoss(memory_bank_size=(10, 4))
    bank = loss_fn.memory_bank
    assert bank.size == (10, 4) and bank.bank.shape == (10, 4) and bank.bank.dtype == torch.float32
    assert bank.bank_ptr.dtype == torch.long and bank.bank_ptr.tolist() == [0]
    for want in (3, 6, 9, 0):
        loss_fn(torch.randn(3, 4, requires_grad=True), torch.randn(3, 4))
        assert bank.bank_ptr.tolist() == [want]
    assert loss_fn.bank is bank.bank
    assert NTXentLoss().memory_bank.size == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory_bank_size", [0, (40, 16)])
def test_dtype_is_lightlys(backend: str, memory_bank_size: object) -> None:
    """lightly's loss ends in CrossEntropyLoss, which autocast runs in float32: float32 under
    bf16 autocast, the inputs' dtype without it. The value is computed in float32 either way."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(24, 16, generator=g), torch.randn(24, 16, generator=g)
    for dtype, autocast, want in (
        (torch.bfloat16, True, torch.float32),
        (torch.float32, True, torch.float32),
        (torch.bfloat16, False, torch.bfloat16),
        (torch.float64, True, torch.float64),
    ):
        torch.manual_seed(1)
        loss_fn = NTXentLoss(0.2, memory_bank_size, backend=backend)  # type: ignore[arg-type]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = loss_fn(a.to(dtype), b.to(dtype))
        assert got.dtype == want, (dtype, autocast)
        torch.manual_seed(1)
        exact = NTXentLoss(0.2, memory_bank_size, backend="reference")  # type: ignore[arg-type]
        ref = float(exact(a.to(dtype).double(), b.to(dtype).double()))
        assert float(got) == pytest.approx(ref, rel=1e-2 if want == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_rows_are_exact(backend: str) -> None:
    """A deliberate difference: rows of norm ~1e20 overflow lightly's float32 normalisation
    (every logit 0); here they give the loss of the same rows at norm ~1."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    for size in (0, (32, 16)):
        torch.manual_seed(0)
        want = float(NTXentLoss(0.5, size, backend=backend)(a, b))  # type: ignore[arg-type]
        torch.manual_seed(0)
        got = float(NTXentLoss(0.5, size, backend=backend)(a * 1e20, b * 1e20))  # type: ignore[arg-type]
        assert got == pytest.approx(want, rel=1e-5)


def _lightly_pair(backend: str, size: object) -> tuple[torch.nn.Module, NTXentLoss]:
    if LightlyNTXentLoss is None:
        pytest.skip("lightly is not installed here (run `make test-peers`)")
    torch.manual_seed(7)
    theirs = LightlyNTXentLoss(0.2, size)
    torch.manual_seed(7)  # the same initial bank
    ours = NTXentLoss(0.2, size, backend=backend)  # type: ignore[arg-type]
    return theirs, ours


@needs_lightly
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory_bank_size", [0, (7, 12), (64, 12), (100, 12)])
@pytest.mark.parametrize("n", [1, 5, 16])
def test_equals_lightly_itself(backend: str, memory_bank_size: object, n: int) -> None:
    """Same seed, same calls on un-normalised rows: lightly's losses, gradients and bank."""
    theirs, ours = _lightly_pair(backend, memory_bank_size)
    g = torch.Generator().manual_seed(n)
    for _ in range(4):
        out0, out1 = 3 * torch.randn(n, 12, generator=g), 3 * torch.randn(n, 12, generator=g)
        grads = []
        for fn in (theirs, ours):
            a, b = out0.clone().requires_grad_(), out1.clone().requires_grad_()
            loss = fn(a, b)
            loss.backward()
            grads.append((float(loss.detach()), a.grad, b.grad))
        (lt, ta, tb), (lo, oa, ob) = grads
        assert lo == pytest.approx(lt, rel=1e-5, abs=1e-6)
        assert torch.allclose(oa, ta, rtol=1e-4, atol=1e-6)
        assert torch.allclose(ob, tb, rtol=1e-4, atol=1e-6)
        if memory_bank_size:
            assert torch.allclose(ours.memory_bank.bank, theirs.memory_bank.bank, atol=1e-6)
            assert torch.equal(ours.memory_bank.bank_ptr, theirs.memory_bank.bank_ptr)


@needs_lightly
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory_bank_size", [0, (64, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_equals_lightly_itself(
    backend: str, memory_bank_size: object, dtype: torch.dtype
) -> None:
    """Under bf16 autocast, on un-normalised rows in float32 or bfloat16 (a model's output under
    autocast): lightly's dtype (float32), its value and input gradients — each at most twice
    lightly's own error against the float64 definition, plus a little — and its bank bit for
    bit (lightly stores out1 normalised in its dtype under autocast; issue 24: the bank held
    differently rounded rows and bfloat16 inputs gave a bfloat16 loss)."""
    theirs, ours = _lightly_pair(backend, memory_bank_size)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        out0 = 3 * torch.randn(16, 32, generator=g)
        out1 = out0 + 2 * torch.randn(16, 32, generator=g)
        x, y = out0.to(dtype).double().requires_grad_(), out1.to(dtype).double().requires_grad_()
        if memory_bank_size:
            bank = ours.memory_bank.bank.clone()
            want = lightly_memory_bank_reference(x, y, bank, 0.2)
        else:
            want = lightly_reference(x, y)
        want.backward()
        results = []
        for fn in (theirs, ours):
            a, b = out0.to(dtype).clone().requires_grad_(), out1.to(dtype).clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = fn(a, b)
            loss.backward()
            assert a.grad is not None and b.grad is not None
            results.append((loss, a.grad.double(), b.grad.double()))
        (lt, ta, tb), (lo, oa, ob) = results
        assert lo.dtype == lt.dtype == torch.float32
        err = abs(float(lt.detach()) - float(want.detach()))
        assert abs(float(lo.detach()) - float(want.detach())) <= 2 * err + 1e-4
        for mine, peer, exact in ((oa, ta, x.grad), (ob, tb, y.grad)):
            assert exact is not None
            peer_err = float((peer - exact).abs().max())
            assert float((mine - exact).abs().max()) <= 2 * peer_err + 1e-6
        if memory_bank_size:
            assert torch.equal(ours.memory_bank.bank, theirs.memory_bank.bank)
            assert torch.equal(ours.memory_bank.bank_ptr, theirs.memory_bank.bank_ptr)


def lightly_reference(out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
    """lightly without a bank: NT-Xent over the 2N rows at τ = 0.2, in float64."""
    return ntxent_reference(*views_to_batch([out0, out1]), 0.2)
