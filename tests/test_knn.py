"""The kNN vote of ``fastclr.evaluate.knn_accuracy`` (linear-eval and the pretraining monitor).

Issue 24: with ``--knn-temperature 0.01`` the weights ``exp(sim / τ)`` overflowed float32 as soon
as a neighbour's cosine passed ~0.887, several classes then tied at inf and ``argmax`` took the
first (digits: 66.85% where the vote gives 88.30%). Checked here against the vote computed
independently as a float64 log-sum-exp per class, and on a constructed case that main got wrong.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastclr.evaluate import knn_accuracy

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def vote_in_log_space(
    ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor, k: int, tau: float
) -> float:
    """Top-1 of the weighted vote by its definition: class score log Σ_{neighbours of the class}
    exp(sim / τ), in float64 (never overflows); neighbours picked from float32 cosines."""
    sim = F.normalize(fte.float(), dim=1) @ F.normalize(ftr.float(), dim=1).T
    top_sim, top_idx = sim.topk(k, dim=1)
    logits = top_sim.double() / tau
    n_classes = int(ytr.max()) + 1
    scores = torch.full((len(fte), n_classes), float("-inf"), dtype=torch.float64)
    for c in range(n_classes):
        mine = ytr[top_idx] == c
        scores[:, c] = torch.logsumexp(logits.masked_fill(~mine, float("-inf")), dim=1)
    return float((scores.argmax(1) == yte).double().mean())


@pytest.mark.parametrize("tau", [0.1, 0.01, 0.002])
def test_vote_matches_log_space_definition_on_digits(tau: float) -> None:
    """Raw digits pixels: most neighbours' cosines are above 0.9, so τ = 0.01 overflowed."""
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    want = vote_in_log_space(x[tr], y[tr], x[te], y[te], 20, tau)
    got = knn_accuracy(x[tr], y[tr], x[te], y[te], k=20, temperature=tau)
    assert got == pytest.approx(want, abs=1e-12)
    assert got > 0.95  # the vote itself is good on raw digits at every τ here


def test_close_neighbours_outvote_a_farther_one_at_small_tau() -> None:
    """Two neighbours of class 1 at cosines ~0.999 against one of class 0 at ~0.95: class 1 wins
    by a factor ~e^9.8 at τ = 0.01; overflowing weights made both inf and picked class 0."""
    test = torch.tensor([[1.0, 0.0, 0.0]])

    def at(cos: float, axis: int) -> list[float]:
        row = [cos, 0.0, 0.0]
        row[axis] = (1 - cos**2) ** 0.5
        return row

    train = torch.tensor([at(0.95, 1), at(0.999, 2), at(0.998, 1)])
    labels = torch.tensor([0, 1, 1])
    assert knn_accuracy(train, labels, test, torch.tensor([1]), k=3, temperature=0.01) == 1.0
    assert knn_accuracy(train, labels, test, torch.tensor([1]), k=3, temperature=1.0) == 1.0
