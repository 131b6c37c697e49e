"""fastclr.compat.supcon against SupContrast's ``SupConLoss`` (Khosla et al.'s reference code).

SupContrast is a repository, not a package, so CI checks its loss through
``fastclr.reference.supcontrast_reference``, a float64 transcription of its formula (L_out per
anchor on the features AS GIVEN — its loss does not normalise, its models do — mean over ALL
anchors with 0 for an anchor without a positive, scaled by τ/base_temperature, contrast modes
"all" and "one"), on un-normalised features as well as unit ones, including the edge case its
code comments on (features [4, 1, ...], labels [0, 1, 1, 2]).

The transcription was checked against SupContrast's own ``losses.py`` (HobbitLong/SupContrast at
66a8fe5), run locally (not in CI, which cannot fetch it): on 40 drawn cases (bsz 2..11, 1..3
views, τ 0.07/0.1/0.5, both modes, no labels, (bsz,) int and (bsz, 1) float labels, features of
norm 0.3..1.3) its float64 value equals the transcription's to 1e-10, and this module's native
and reference backends give its float64 values and input gradients to 1e-4 (worst gradient error
8e-7 of max |g|). Under CPU bf16 autocast its loss is float32 for float32 and bfloat16 features
(its masks are float32), float64 for float64. About 4 s on 2 cores.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fastclr import ntxent
from fastclr.compat.supcon import SupConLoss
from fastclr.reference import supcontrast_reference
from fastclr.testing import loss_backends

BACKENDS = loss_backends()


def check(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    backend: str,
    ref_labels: torch.Tensor | None = None,
    **kwargs: object,
) -> None:
    """Value and input gradient of the features as given (no normalisation on either side)."""
    leaf = features.clone().double().requires_grad_()
    want_labels = labels if ref_labels is None else ref_labels
    want = supcontrast_reference(leaf, want_labels, **kwargs)  # type: ignore[arg-type]
    want.backward()
    got_leaf = features.clone().float().requires_grad_()
    got = SupConLoss(**kwargs, backend=backend)(got_leaf, labels)  # type: ignore[arg-type]
    got.backward()
    assert got.dtype == torch.float32
    tau = float(kwargs.get("temperature", 0.07))  # type: ignore[arg-type]
    top = float(features.flatten(2).norm(dim=2).max()) ** 2  # logits are up to |f|²/τ
    assert float(got.detach()) == pytest.approx(
        float(want.detach()), rel=2e-5, abs=4e-7 * top / tau
    )
    assert leaf.grad is not None and got_leaf.grad is not None
    gtol = 1e-4 * float(leaf.grad.abs().max()) + 1e-6 * top / tau
    assert float((got_leaf.grad.double() - leaf.grad).abs().max()) <= gtol


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    bsz=st.integers(2, 9),
    n_views=st.integers(1, 3),
    d=st.integers(2, 13),
    tau=st.sampled_from([0.07, 0.1, 0.5]),
    base=st.sampled_from([0.07, 0.1]),
    mode=st.sampled_from(["all", "one"]),
    supervised=st.booleans(),
    unit=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_the_definition(
    backend: str,
    bsz: int,
    n_views: int,
    d: int,
    tau: float,
    base: float,
    mode: str,
    supervised: bool,
    unit: bool,
    seed: int,
) -> None:
    """Unit rows (what SupContrast's models feed) and un-normalised rows of norm 0.2..2: the
    loss and the gradient with respect to the features are SupContrast's. Before issue 24 the
    features were normalised inside, which changed every gradient (by up to half of max |g|)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(bsz, n_views, d, generator=g)
    norms = 0.2 + 1.8 * torch.rand(bsz, n_views, 1, generator=g)
    features = F.normalize(features, dim=-1) * (1.0 if unit else norms)
    labels = torch.randint(0, 3, (bsz,), generator=g) if supervised else None
    check(features, labels, backend, temperature=tau, base_temperature=base, contrast_mode=mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unnormalised_features_keep_their_scale(backend: str) -> None:
    """Features of norm 2 give SupContrast's value at logits 4·cos/τ, not the unit rows' one."""
    g = torch.Generator().manual_seed(1)
    unit = F.normalize(torch.randn(6, 2, 8, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    at_unit = float(SupConLoss(0.5, backend=backend)(unit, labels))
    at_two = float(SupConLoss(0.5, backend=backend)(2 * unit, labels))
    assert at_two == pytest.approx(float(supcontrast_reference(2 * unit, labels, 0.5)), rel=1e-5)
    assert abs(at_two - at_unit) > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_supcontrast_edge_case_anchor_without_positive(backend: str) -> None:
    """SupContrast's comment: features [4, 1, ...] with labels [0, 1, 1, 2] gave NaN before its
    fix; anchors 0 and 3 have no positive and count as 0 in the mean over all 4 anchors."""
    features = torch.randn(4, 1, 2, 3)  # trailing dims are flattened, as SupContrast does
    check(features, torch.tensor([0, 1, 1, 2]), backend)


def test_mean_over_all_anchors_and_temperature_scaling() -> None:
    """Singletons dilute the mean (fastclr's default averages over anchors with a positive)."""
    feats = F.normalize(torch.randn(6, 1, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    loss = float(SupConLoss(temperature=0.1, base_temperature=0.07)(feats, labels))
    main = float(ntxent(feats[:, 0], labels=labels, temperature=0.1))
    assert loss == pytest.approx(main * (4 / 6) * (0.1 / 0.07), rel=1e-5)


def test_bad_input_is_named() -> None:
    with pytest.raises(TypeError, match="mask"):
        SupConLoss()(torch.randn(4, 2, 3), mask=torch.eye(4))
    with pytest.raises(ValueError, match="features must be"):
        SupConLoss()(torch.randn(4, 3))
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="some")
    with pytest.raises(ValueError, match=r"labels must have 4 labels, got shape \(2,\)"):
        SupConLoss()(torch.randn(4, 2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels contain NaN"):
        SupConLoss()(torch.randn(4, 2, 3), torch.tensor([0.0, 1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="overflow float32"):
        SupConLoss(backend="native")(torch.full((4, 2, 3), 1e19), torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_as_supcontrast_takes_them(backend: str) -> None:
    """(bsz, 1) labels (SupContrast reshapes labels to (bsz, 1) itself) and floating labels
    (it compares them with ==) give the loss of the same classes as integers."""
    g = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(6, 2, 5, generator=g), dim=-1)
    ints = torch.tensor([3, 3, 7, 7, 1, 3])
    loss_fn = SupConLoss(0.1, backend=backend)
    want = float(loss_fn(feats, ints))
    for labels in (ints[:, None], ints.double(), (ints.float() * 0.5)[:, None], ints[None, :]):
        assert float(loss_fn(feats, labels)) == pytest.approx(want, rel=1e-6), labels
    check(feats, ints.float()[:, None] + 0.25, backend, ref_labels=ints, temperature=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtype_is_supcontrasts(backend: str, autocast: bool, dtype: torch.dtype) -> None:
    """SupContrast returns float32 for float32/bfloat16 features, with or without bf16 autocast
    (its float32 masks promote the result), and float64 for float64. Before issue 24 bfloat16
    features gave a bfloat16 loss (7.03125 where SupContrast gives 7.0415, float64 7.0418)."""
    g = torch.Generator().manual_seed(4)
    feats = F.normalize(torch.randn(64, 2, 32, generator=g), dim=-1)
    labels = torch.arange(64) % 5
    want = float(supcontrast_reference(feats.to(dtype).double(), labels, 0.1))
    leaf = feats.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = SupConLoss(0.1, backend=backend)(leaf, labels)
    got.backward()
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # computed in float32 (float64) whatever the autocast: float32 rounding of logits ~1/τ
    assert float(got.detach()) == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert leaf.grad is not None and leaf.grad.dtype == dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_where_supcontrast_underflows(backend: str) -> None:
    """Features of norm 4 at τ = 0.1: every anchor's self-logit (160) exceeds its other logits by
    more than 87, so SupContrast's shifted float32 exponentials all underflow and it returns NaN;
    the formula (and this module) give a finite value."""
    g = torch.Generator().manual_seed(5)
    feats = 4 * F.normalize(torch.randn(8, 2, 64, generator=g), dim=-1)
    labels = torch.arange(8) % 3
    want = float(supcontrast_reference(feats, labels, 0.1))
    got = float(SupConLoss(0.1, backend=backend)(feats, labels))
    assert got == pytest.approx(want, rel=1e-5)
