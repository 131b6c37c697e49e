"""fastclr.compat.supcon against SupContrast's ``SupConLoss`` (Khosla et al.'s reference code).

SupContrast is a repository, not a package, so its loss is checked through
``fastclr.reference.supcontrast_reference``, a float64 transcription of its formula (L_out per
anchor, mean over ALL anchors with 0 for an anchor without a positive, scaled by
τ/base_temperature, contrast modes "all" and "one"), on L2-normalised features as its models feed
it, including the edge case its code comments on (features [4, 1, ...], labels [0, 1, 1, 2]).
About 3 s on 2 cores.
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
    features: torch.Tensor, labels: torch.Tensor | None, backend: str, **kwargs: object
) -> None:
    leaf = features.clone().double().requires_grad_()
    unit = F.normalize(leaf.flatten(2), dim=-1)  # SupContrast's models feed unit rows
    want = supcontrast_reference(unit, labels, **kwargs)  # type: ignore[arg-type]
    want.backward()
    got_leaf = features.clone().float().requires_grad_()
    got = SupConLoss(**kwargs, backend=backend)(got_leaf, labels)  # type: ignore[arg-type]
    got.backward()
    tau = float(kwargs.get("temperature", 0.07))  # type: ignore[arg-type]
    assert float(got) == pytest.approx(float(want), rel=2e-5, abs=4e-7 / tau)
    assert leaf.grad is not None and got_leaf.grad is not None
    floor = 1e-6 / (tau * float(features.flatten(2).norm(dim=2).min()))
    gtol = 1e-4 * float(leaf.grad.abs().max()) + floor
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
    seed: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(bsz, n_views, d, generator=g)
    labels = torch.randint(0, 3, (bsz,), generator=g) if supervised else None
    check(features, labels, backend, temperature=tau, base_temperature=base, contrast_mode=mode)


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
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        SupConLoss()(torch.randn(4, 2, 3), torch.tensor([0, 1]))
