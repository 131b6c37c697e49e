"""The main loss's options beyond NT-Xent: ``positives="in"`` (SupCon's L_in) and ``negatives=``
(extra keys, e.g. a memory bank), on every backend, against the float64 reference.

Values and input gradients (with a non-uniform upstream gradient through ``reduction="none"``);
hypothesis draws shapes, τ and seeds; float32, bfloat16 and float16 use the shared rule in
:mod:`fastclr.testing` (within 2× torch's own error in that dtype, plus a stated floor). About 10 s
on 2 cores (the Triton backend runs in its interpreter).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastclr import NTXentLoss, ntxent
from fastclr.reference import ntxent_reference, views_to_batch
from fastclr.testing import assert_close_to_reference, loss_backends

BACKENDS = loss_backends()
# dtype -> floor on values / gradients relative to their scale, added to 2× torch's own error
DTYPES = {torch.float32: 2e-5, torch.bfloat16: 2**-7, torch.float16: 2**-9}


def run(
    views: list[torch.Tensor],
    labels: torch.Tensor | None,
    weights: torch.Tensor,
    negatives: torch.Tensor | None,
    **kwargs: object,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-anchor losses and the gradient of Σ weights·loss with respect to every input."""
    leaves = [v.detach().clone().requires_grad_() for v in views]
    if labels is None:
        out = ntxent(*leaves, reduction="none", negatives=negatives, **kwargs)  # type: ignore[arg-type]
    else:
        out = ntxent(leaves[0], labels=labels, reduction="none", negatives=negatives, **kwargs)  # type: ignore[arg-type]
    (out.double() * weights).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]  # type: ignore[misc]


def check(
    backend: str,
    views64: list[torch.Tensor],
    labels: torch.Tensor | None,
    negatives: torch.Tensor | None,
    tau: float,
    positives: str,
    dtype: torch.dtype,
    seed: int,
) -> None:
    m = sum(v.shape[0] for v in views64) if labels is None else views64[0].shape[0]
    weights = torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    views = [v.to(dtype) for v in views64]

    def reference(vs: list[torch.Tensor], upcast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = [v.detach().clone().requires_grad_() for v in vs]
        z, lab = views_to_batch(leaves) if labels is None else (leaves[0], labels)
        neg = None if negatives is None else negatives.to(vs[0].dtype)
        out = ntxent_reference(
            z, lab, tau, "none", upcast=upcast, positives=positives, negatives=neg
        )
        (out.double() * weights).sum().backward()
        return out.detach(), [leaf.grad for leaf in leaves]  # type: ignore[misc]

    want, want_grads = reference(views64, upcast=True)
    low, low_grads = reference(views, upcast=False)
    got, got_grads = run(
        views, labels, weights, negatives, temperature=tau, backend=backend, positives=positives
    )
    floor = DTYPES[dtype]
    # the fused backends hold logits of size 1/τ in float32: a rounding of ~eps32/τ in a value,
    # and of that over the row norm in an input gradient, even where torch's own error is 0
    logit = 4 * torch.finfo(torch.float32).eps / tau
    min_norm = min(float(v.norm(dim=1).min()) for v in views64)
    assert_close_to_reference(
        got,
        want,
        ref_lowp=low,
        atol=floor * max(1.0, float(want.abs().max())) + logit,
        name="loss",
    )
    gscale = max(float(g.abs().max()) for g in want_grads)
    assert_close_to_reference(
        got_grads,
        want_grads,
        ref_lowp=low_grads,
        atol=floor * max(gscale, 1e-3) + logit / min_norm,
        name="grads",
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positives", ["in", "out"])
@settings(max_examples=10)
@given(
    n_views=st.integers(2, 4),
    n=st.integers(1, 9),
    d=st.integers(1, 19),
    k=st.sampled_from([0, 1, 7, 40]),
    tau=st.sampled_from([0.01, 0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_views(
    backend: str, positives: str, n_views: int, n: int, d: int, k: int, tau: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(n_views)]
    negatives = torch.randn(k, d, generator=g, dtype=torch.float64) if k else None
    check(backend, views, None, negatives, tau, positives, torch.float32, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positives", ["in", "out"])
@settings(max_examples=10)
@given(
    m=st.integers(2, 25),
    d=st.integers(2, 19),
    n_classes=st.integers(1, 6),
    k=st.sampled_from([0, 5, 33]),
    tau=st.sampled_from([0.05, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_labels(
    backend: str, positives: str, m: int, d: int, n_classes: int, k: int, tau: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (m,), generator=g)
    labels[1] = labels[0]  # at least one positive pair
    negatives = torch.randn(k, d, generator=g, dtype=torch.float64) if k else None
    check(backend, [z], labels, negatives, tau, positives, torch.float32, seed)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("positives", ["in", "out"])
def test_low_precision(backend: str, dtype: torch.dtype, positives: str) -> None:
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(6, 24, generator=g, dtype=torch.float64) for _ in range(3)]
    negatives = torch.randn(50, 24, generator=g, dtype=torch.float64)
    check(backend, views, None, negatives, 0.2, positives, dtype, 3)


def test_l_in_equals_l_out_with_one_positive_and_is_never_larger() -> None:
    """Jensen: log mean exp ≥ mean, so L_in ≤ L_out, with equality for a single positive."""
    zi, zj = torch.randn(8, 16), torch.randn(8, 16)
    assert float(ntxent(zi, zj, positives="in")) == pytest.approx(float(ntxent(zi, zj)), rel=1e-6)
    views = [torch.randn(8, 16) for _ in range(4)]
    l_in = ntxent(*views, positives="in", reduction="none")
    l_out = ntxent(*views, positives="out", reduction="none")
    assert bool((l_in <= l_out + 1e-5).all()) and float((l_out - l_in).max()) > 1e-3


def test_negatives_get_no_gradient_and_raise_the_loss() -> None:
    zi, zj = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    bank = torch.randn(64, 16, requires_grad=True)
    with_bank = ntxent(zi, zj, negatives=bank)
    with_bank.backward()
    assert bank.grad is None
    assert float(with_bank.detach()) > float(ntxent(zi, zj).detach())


def test_module_option_and_bad_values_are_named() -> None:
    zi, zj = torch.randn(4, 8), torch.randn(4, 8)
    assert "positives='in'" in repr(NTXentLoss(positives="in"))
    assert float(NTXentLoss(positives="in")(zi, zj)) == pytest.approx(float(ntxent(zi, zj)), 1e-6)
    with pytest.raises(ValueError, match="positives must be one of"):
        NTXentLoss(positives="inside")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positives must be one of"):
        ntxent(zi, zj, positives="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negatives must have the embeddings' width 8"):
        ntxent(zi, zj, negatives=torch.randn(3, 7))
    with pytest.raises(ValueError, match="negatives must be 2-D"):
        ntxent(zi, zj, negatives=torch.randn(8))
    with pytest.raises(ValueError, match="NaN or Inf"):
        ntxent(zi, zj, negatives=torch.full((2, 8), float("nan")))


def newest(rows: list[torch.Tensor], k: int) -> torch.Tensor:
    """The queue the module must hold: the newest k normalised rows pushed so far."""
    return torch.nn.functional.normalize(torch.cat(rows), dim=1)[-k:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("k", "n"), [(5, 3), (16, 4), (7, 9)])
def test_module_memory_bank_over_steps(backend: str, k: int, n: int) -> None:
    """Each step equals the float64 definition with the newest k past keys (the last view of the
    earlier training calls) as negatives, values and gradients; evaluation pushes nothing."""
    loss_fn = NTXentLoss(0.2, backend=backend, memory_bank_size=k)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(k * n)
    pushed: list[torch.Tensor] = []
    for _ in range(4):
        zi = torch.randn(n, 8, generator=g, dtype=torch.float64)
        zj = torch.randn(n, 8, generator=g, dtype=torch.float64)
        bank = newest(pushed, k) if pushed else None
        a, b = zi.clone().requires_grad_(), zj.clone().requires_grad_()
        want = ntxent_reference(*views_to_batch([a, b]), 0.2, negatives=bank)
        want.backward()
        x, y = zi.float().requires_grad_(), zj.float().requires_grad_()
        got = loss_fn(x, y)
        got.backward()
        assert_close_to_reference(got.detach(), want, atol=2e-5, name="loss")
        assert x.grad is not None and y.grad is not None
        assert a.grad is not None and b.grad is not None
        assert_close_to_reference([x.grad, y.grad], [a.grad, b.grad], atol=5e-5, name="grads")
        pushed.append(zj.float())
        with torch.no_grad():
            loss_fn(zi.float(), zj.float())  # evaluation: the queue does not move
        held = loss_fn.bank
        assert held.shape[0] == min(k, n * len(pushed))
        expect = newest(pushed, k)
        # the ring holds the same rows, in ring order: compare as sets by sorting on a projection
        order = lambda t: t[torch.argsort(t[:, 0] * 7.0 + t[:, 1])]  # noqa: E731
        assert_close_to_reference(order(held), order(expect), atol=1e-6, name="bank")


def test_module_memory_bank_needs_views() -> None:
    with pytest.raises(ValueError, match="memory_bank_size needs views"):
        NTXentLoss(memory_bank_size=8)(torch.randn(4, 3), labels=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="memory_bank_size must be an int >= 0"):
        NTXentLoss(memory_bank_size=-1)
