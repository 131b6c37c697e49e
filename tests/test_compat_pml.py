"""fastclr.compat.pml against pytorch-metric-learning itself and the float64 definition.

The fixed cases are PML's own test cases (tests/losses/test_ntxent_loss.py: 2-D unit embeddings at
given angles, their labels, τ = 0.1, float16/32/64; its "no valid pairs" and backward cases). Values
and input gradients are compared with PML's output on every fastclr backend; hypothesis-drawn
shapes, labels and τ are compared with ``fastclr.reference.pml_ntxent_reference`` (NT-Xent's pair
form) and ``ntxent_reference`` (SupCon). About 6 s on 2 cores (Triton runs in its interpreter).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastclr.compat import pml
from fastclr.reference import ntxent_reference, pml_ntxent_reference
from fastclr.testing import loss_backends

pml_losses = pytest.importorskip(
    "pytorch_metric_learning.losses",
    reason="pytorch-metric-learning is in the `peers` extra (scripts/setup.sh installs it)",
)


BACKENDS = loss_backends()
DTYPES = [(torch.float16, 1e-2), (torch.float32, 1e-5), (torch.float64, 1e-5)]  # PML's rtols


def angles(degrees: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit 2-D embeddings at the given angles (PML's test fixture, re-derived)."""
    rad = [math.radians(a) for a in degrees]
    return torch.tensor([[math.cos(r), math.sin(r)] for r in rad], dtype=dtype)


def run(loss: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    leaf = z.detach().clone().requires_grad_()
    out = loss(leaf, labels)
    out.backward()
    assert leaf.grad is not None
    return float(out.detach()), leaf.grad.double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dtype", "rtol"), DTYPES)
@pytest.mark.parametrize(
    ("ours", "theirs"), [(pml.NTXentLoss, "NTXentLoss"), (pml.SupConLoss, "SupConLoss")]
)
def test_pml_own_case(
    backend: str, dtype: torch.dtype, rtol: float, ours: type, theirs: str
) -> None:
    """PML's test_ntxent_loss fixture: angles 0..80°, labels [0,0,0,1,1,2], τ = 0.1."""
    z = angles([0, 10, 20, 50, 60, 80], dtype)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    want, want_grad = run(getattr(pml_losses, theirs)(temperature=0.1), z, labels)
    got, got_grad = run(ours(0.1, backend=backend), z, labels)
    assert got == pytest.approx(want, rel=rtol)
    gtol = 5e-2 if dtype == torch.float16 else 1e-4
    assert float((got_grad - want_grad).abs().max()) <= gtol * float(want_grad.abs().max())


def test_multi_positive_rule_differs_between_ntxent_and_supcon() -> None:
    """The issue's numbers: with 3 rows of one class, PML's NTXent leaves the other positives out
    of each pair's denominator and is larger than SupCon; both match PML exactly."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 8, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    nt = float(pml.NTXentLoss(0.1)(z, labels))
    sc = float(pml.SupConLoss(0.1)(z, labels))
    assert nt == pytest.approx(float(pml_losses.NTXentLoss(temperature=0.1)(z, labels)), rel=1e-5)
    assert sc == pytest.approx(float(pml_losses.SupConLoss(temperature=0.1)(z, labels)), rel=1e-5)
    assert nt > sc + 0.1


@pytest.mark.parametrize("ours", [pml.NTXentLoss, pml.SupConLoss])
@pytest.mark.parametrize(
    ("degrees", "labels"),
    [([0], [0]), ([0, 10, 20], [0, 0, 0]), ([0, 40, 60], [1, 2, 3])],
)
def test_no_valid_pairs_give_zero_with_backward(
    ours: type, degrees: list[float], labels: list[int]
) -> None:
    """PML's test_with_no_valid_pairs: 0, and backward() still works."""
    for dtype, _ in DTYPES:
        z = angles(degrees, dtype).requires_grad_()
        loss = ours(0.1)(z, torch.tensor(labels))
        loss.backward()
        assert float(loss.detach()) == 0.0
        assert z.grad is not None and float(z.grad.abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("ours", "theirs"), [(pml.NTXentLoss, "NTXentLoss"), (pml.SupConLoss, "SupConLoss")]
)
def test_pml_backward_case(backend: str, ours: type, theirs: str) -> None:
    """PML's test_backward fixture (angles 0..80 step 20, labels [0,0,1,1,2]), gradients vs PML."""
    z = angles([0, 20, 40, 60, 80])
    labels = torch.tensor([0, 0, 1, 1, 2])
    want, want_grad = run(getattr(pml_losses, theirs)(temperature=0.1), z, labels)
    got, got_grad = run(ours(0.1, backend=backend), z, labels)
    assert got == pytest.approx(want, rel=1e-5)
    assert float((got_grad - want_grad).abs().max()) <= 1e-4 * float(want_grad.abs().max())


def test_defaults_are_pmls() -> None:
    assert pml.NTXentLoss().temperature == pml_losses.NTXentLoss().temperature == 0.07
    assert pml.SupConLoss().temperature == pml_losses.SupConLoss().temperature == 0.1


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    m=st.integers(2, 23),
    d=st.integers(1, 19),
    n_classes=st.integers(1, 8),
    tau=st.sampled_from([0.05, 0.07, 0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_drawn_cases_match_pml_and_the_definition(
    backend: str, m: int, d: int, n_classes: int, tau: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (m,), generator=g)
    for ours, theirs, definition in (
        (pml.NTXentLoss, "NTXentLoss", lambda x: pml_ntxent_reference(x, labels, tau)),
        (pml.SupConLoss, "SupConLoss", lambda x: _supcon_definition(x, labels, tau)),
    ):
        want, want_grad = run(_Fn(definition), z, labels)
        got, got_grad = run(ours(tau, backend=backend), z.float(), labels)
        peer, _ = run(getattr(pml_losses, theirs)(temperature=tau), z.float(), labels)
        scale = max(1.0, abs(want))
        assert abs(got - want) <= 2e-5 * scale, (theirs, got, want)
        assert abs(got - peer) <= 2e-5 * scale, (theirs, got, peer)
        # fp32 rounding of a ẑ-gradient of size ~1/τ, passed back through 1/‖z‖
        floor = 1e-6 / (tau * float(z.norm(dim=1).min()))
        gtol = 1e-4 * float(want_grad.abs().max()) + floor
        assert float((got_grad - want_grad).abs().max()) <= gtol, theirs


class _Fn(torch.nn.Module):
    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fn(z)  # type: ignore[operator]


def _supcon_definition(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """PML SupCon: L_out over anchors with a positive, 0 without any positive or negative pair."""
    counts = torch.unique(labels, return_counts=True)[1]
    if counts.numel() < 2 or int(counts.max()) < 2:
        return (z * 0).sum()
    return ntxent_reference(z, labels, tau)


def test_ntxent_and_supcon_agree_on_two_views() -> None:
    """One positive per anchor: PML's pair form is plain NT-Xent, equal to SupCon's L_out."""
    z = torch.randn(16, 8)
    labels = torch.arange(8).repeat(2)
    assert float(pml.NTXentLoss(0.2)(z, labels)) == pytest.approx(
        float(pml.SupConLoss(0.2)(z, labels)), rel=1e-6
    )


def test_unsupported_pml_options_are_named() -> None:
    from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
    from pytorch_metric_learning.reducers import AvgNonZeroReducer, MeanReducer
    from pytorch_metric_learning.regularizers import LpRegularizer

    for kwargs, match in (
        ({"distance": LpDistance()}, r"distance=LpDistance\(\) \(only CosineSimilarity"),
        ({"distance": CosineSimilarity(power=2)}, "distance="),
        ({"reducer": AvgNonZeroReducer()}, r"reducer=AvgNonZeroReducer\(\) \(only MeanReducer"),
        ({"embedding_regularizer": LpRegularizer()}, "embedding_regularizer"),
        ({"reducer": MeanReducer(collect_stats=True)}, "collect_stats=True"),
        ({"margin": 0.5}, "unexpected argument.* margin"),
    ):
        with pytest.raises(TypeError, match=match):
            pml.NTXentLoss(**kwargs)
    with pytest.raises(TypeError, match=r"reducer=MeanReducer\(\) \(only AvgNonZeroReducer"):
        pml.SupConLoss(reducer=MeanReducer())
    z, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(TypeError, match="indices_tuple"):
        pml.NTXentLoss()(z, labels, indices_tuple=(labels, labels, labels, labels))
    with pytest.raises(TypeError, match="ref_emb"):
        pml.SupConLoss()(z, labels, ref_emb=z)
    with pytest.raises(ValueError, match="labels are required"):
        pml.NTXentLoss()(z)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        pml.NTXentLoss()(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels contain NaN"):
        pml.NTXentLoss()(z, torch.tensor([0.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(ValueError, match="temperature"):
        pml.NTXentLoss(temperature=0.0)


@pytest.mark.parametrize(
    ("ours", "theirs"), [(pml.NTXentLoss, "NTXentLoss"), (pml.SupConLoss, "SupConLoss")]
)
def test_pml_constructor_defaults_given_explicitly(ours: type, theirs: str) -> None:
    """PML's own defaults passed by name (issue 24: a TypeError) build the same loss as PML's,
    with PML's ``.distance``, ``.reducer`` and ``.collect_stats``; ``embedding_reg_weight`` has no
    effect without a regularizer, in PML and here."""
    from pytorch_metric_learning import reducers
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.losses import BaseMetricLossFunction

    reducer = getattr(reducers, "MeanReducer" if theirs == "NTXentLoss" else "AvgNonZeroReducer")
    kwargs = {
        "temperature": 0.2,
        "reducer": reducer(),
        "distance": CosineSimilarity(),
        "collect_stats": True,
        "embedding_regularizer": None,
        "embedding_reg_weight": 0,
    }
    mine, peer = ours(**kwargs), getattr(pml_losses, theirs)(**kwargs)
    assert isinstance(mine, BaseMetricLossFunction)
    assert type(mine.distance) is type(peer.distance) is CosineSimilarity
    assert type(mine.reducer) is type(peer.reducer) is reducer
    assert mine.collect_stats is peer.collect_stats is True
    default = ours()
    assert type(default.reducer) is type(getattr(pml_losses, theirs)().reducer)
    assert (
        default.collect_stats is False
        and default.temperature == getattr(pml_losses, theirs)().temperature
    )
    z = 2 * torch.randn(12, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5])
    want, want_grad = run(peer, z, labels)
    got, got_grad = run(mine, z, labels)
    assert got == pytest.approx(want, rel=1e-5)
    assert float((got_grad - want_grad).abs().max()) <= 1e-4 * float(want_grad.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("ours", "theirs"), [(pml.NTXentLoss, "NTXentLoss"), (pml.SupConLoss, "SupConLoss")]
)
def test_float_and_bool_labels_as_pml(backend: str, ours: type, theirs: str) -> None:
    """PML compares labels with ==, so floating and bool labels work there (issue 24: refused
    here); values and gradients equal PML's on the same labels."""
    z = 3 * torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    for labels in (
        torch.tensor([0.5, 0.5, 2.0, 2.0, 2.0, -1.0, -1.0, 7.25, 0.5, 3.0]),
        torch.tensor([True, False, True, True, False, False, True, False, True, False]),
    ):
        want, want_grad = run(getattr(pml_losses, theirs)(temperature=0.1), z, labels)
        got, got_grad = run(ours(0.1, backend=backend), z, labels)
        assert got == pytest.approx(want, rel=1e-5)
        assert float((got_grad - want_grad).abs().max()) <= 1e-4 * float(want_grad.abs().max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("ours", "theirs", "definition"),
    [
        (pml.NTXentLoss, "NTXentLoss", pml_ntxent_reference),
        (pml.SupConLoss, "SupConLoss", ntxent_reference),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_as_pml(
    backend: str, ours: type, theirs: str, definition: object, dtype: torch.dtype
) -> None:
    """Under CPU bf16 autocast, on un-normalised float32 or bfloat16 embeddings: PML's dtype
    (bfloat16 here: its exp, log and sums stay in the autocast dtype on a CPU), and value and
    input gradients at most twice PML's own error against the float64 definition, plus a
    little (fastclr computes in float32 and rounds once at the end)."""
    g = torch.Generator().manual_seed(2)
    z = (3 * torch.randn(24, 16, generator=g)).to(dtype)
    labels = torch.arange(24) % 8
    exact = z.double().requires_grad_()
    want = definition(exact, labels, 0.1)  # type: ignore[operator]
    want.backward()
    assert exact.grad is not None
    results = []
    for fn in (getattr(pml_losses, theirs)(temperature=0.1), ours(0.1, backend=backend)):
        leaf = z.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(leaf, labels)
        loss.backward()
        assert leaf.grad is not None
        results.append((loss, leaf.grad.double()))
    (lt, gt), (lo, go) = results
    assert lo.dtype == lt.dtype == torch.bfloat16
    bf16 = float(want.detach()) * torch.finfo(torch.bfloat16).eps  # one rounding of the result
    assert (
        abs(float(lo.detach()) - float(want.detach()))
        <= 2 * abs(float(lt.detach()) - float(want.detach())) + bf16
    )
    peer_err = float((gt - exact.grad).abs().max())
    assert float((go - exact.grad).abs().max()) <= 2 * peer_err + 1e-6


def test_zero_loss_dtype_as_pml() -> None:
    """No positive pair: PML returns a zero in the embeddings' dtype, even under autocast."""
    z, labels = torch.randn(4, 3), torch.arange(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for ours, theirs in ((pml.NTXentLoss, "NTXentLoss"), (pml.SupConLoss, "SupConLoss")):
            assert ours()(z, labels).dtype == getattr(pml_losses, theirs)()(z, labels).dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_ill_conditioned_anchor_is_recomputed_exactly(backend: str) -> None:
    """Two near-identical positives and one opposite positive at τ = 0.05: the negatives' share
    of the anchor's mass is ~e⁻⁴⁰, far below float32's resolution, so the subtraction alone
    would be wrong by ~20; the flagged anchors are recomputed from their rows."""
    z = angles([0, 0.5, 180, 90, 91])
    labels = torch.tensor([0, 0, 0, 1, 1])
    want = float(pml_ntxent_reference(z.double(), labels, 0.05))
    got = float(pml.NTXentLoss(0.05, backend=backend)(z, labels))
    peer = float(pml_losses.NTXentLoss(temperature=0.05)(z, labels))
    assert got == pytest.approx(want, rel=1e-5)
    assert peer == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------------------------------------
# PML's DistributedLossWrapper on 2 gloo processes (issue 24: it refused the compat losses, so a
# PML user had no way to gather across ranks). One spawn runs every case.

WORLD = 2
DIST_CASES = [
    (which, backend)
    for which in ("NTXentLoss", "SupConLoss")
    for backend in ("reference", "native")
]


def _dist_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """12 un-normalised rows; every label occurs on both ranks (rank r holds rows 6r..6r+5)."""
    g = torch.Generator().manual_seed(11)
    labels = torch.tensor([0, 1, 2, 3, 0, 4, 1, 2, 3, 4, 0, 5])
    return 2 * torch.randn(12, 8, generator=g), labels


def _dist_worker(rank: int, out_dir: str) -> None:
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    z, labels = _dist_batch()
    mine, local = z[6 * rank : 6 * rank + 6], labels[6 * rank : 6 * rank + 6]
    results = []
    for which, backend in DIST_CASES:
        per_impl = []
        for loss in (
            getattr(pml, which)(0.1, backend=backend),
            getattr(pml_losses, which)(0.1),
        ):
            leaf = mine.clone().requires_grad_()
            value = DistributedLossWrapper(loss)(leaf, local)
            value.backward()
            per_impl.append((value.detach(), leaf.grad))
        results.append(per_impl)
    try:
        DistributedLossWrapper(pml.NTXentLoss(), efficient=True)(mine, local)
        efficient = "no error"
    except TypeError as exc:
        efficient = str(exc)
    torch.save((results, efficient), f"{out_dir}/rank{rank}.pt")


def test_distributed_loss_wrapper_on_two_processes(spawn_gloo: Callable[..., None]) -> None:
    """Each rank's loss and gradients through ``DistributedLossWrapper(loss)`` equal those of
    PML's own loss through the same wrapper; ``efficient=True`` (which passes indices_tuple and
    ref_emb) is refused by name."""
    import tempfile

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    with tempfile.TemporaryDirectory() as tmp:
        spawn_gloo(_dist_worker, WORLD, tmp)
        per_rank = [torch.load(f"{tmp}/rank{r}.pt") for r in range(WORLD)]
    for results, efficient in per_rank:
        assert "efficient=False" in efficient and "indices_tuple" in efficient
        for (which, backend), ((got, got_grad), (want, want_grad)) in zip(
            DIST_CASES, results, strict=True
        ):
            assert float(got) == pytest.approx(float(want), rel=1e-5), (which, backend)
            tol = 1e-4 * float(want_grad.abs().max())
            assert float((got_grad - want_grad).abs().max()) <= tol, (which, backend)
