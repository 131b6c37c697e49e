"""``fastclr.fit_linear_probe``: linear-eval's probe as a classifier a user keeps.

Held to the float64 definition (standardise with the training features' mean and deviation,
multinomial logistic regression with an L2 penalty, at its optimum), to ``linear-eval``'s
accuracy on the same features, across block sizes, through a state dict, and on features of a
real encoder as the README shows it; bad input is one ValueError naming the argument."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastclr
from fastclr.data.memory import load_digits
from fastclr.downstream.probe import LINEAR_L2, LinearProbe, fit_linear_probe
from fastclr.evaluate import linear_probe_accuracy


def _blobs(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes around fixed centres, features of different scales and off-centre."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(7)) * 1.5
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g)
    return x * torch.linspace(0.1, 4.0, d) + 3.0, y


def test_probe_is_the_penalised_logistic_regression_at_its_optimum() -> None:
    x, y = _blobs(240, 12, 4, 0)
    xt, yt = _blobs(120, 12, 4, 1)
    probe = fit_linear_probe(x, y)
    mu, sd = x.double().mean(0), x.double().std(0)
    torch.testing.assert_close(probe.mean, mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(probe.std, sd, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        probe(xt), ((xt.double() - mu) / sd) @ probe.weight + probe.bias, rtol=1e-12, atol=1e-12
    )
    # the fitted parameters are the optimum: the penalised loss's gradient vanishes there
    w = probe.weight.clone().requires_grad_()
    b = probe.bias.clone().requires_grad_()
    z = (x.double() - mu) / sd
    loss = F.cross_entropy(z @ w + b, y) + LINEAR_L2 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert float(gw.abs().max()) < 1e-5 and float(gb.abs().max()) < 1e-5
    # and a random nearby point is worse (the check above could not pass at any point)
    worse = F.cross_entropy(z @ (w + 0.05) + b, y) + LINEAR_L2 * ((w + 0.05) ** 2).sum()
    assert float(worse.detach()) > float(loss.detach())
    assert probe.accuracy(xt, yt) == linear_probe_accuracy(x, y, xt, yt) > 0.9
    assert probe.predict(xt).dtype == torch.long
    assert (probe.feature_dim, probe.num_classes) == (12, 4)


@pytest.mark.parametrize("rows", [7, 100])
def test_probe_fitted_in_blocks_is_the_one_block_probe(rows: int) -> None:
    x, y = _blobs(150, 10, 3, 2)
    whole = fit_linear_probe(x, y)
    blocked = fit_linear_probe(x, y, block_bytes=rows * 8 * (10 + 3))
    assert blocked.block_rows == rows
    torch.testing.assert_close(blocked(x), whole(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(blocked.predict(x), whole.predict(x))


def test_probe_state_dict_is_the_whole_model() -> None:
    x, y = _blobs(90, 6, 3, 3)
    probe = fit_linear_probe(x, y, num_classes=5)  # classes without examples keep their logits
    assert probe.num_classes == 5
    buf = io.BytesIO()
    torch.save(probe.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert sorted(state) == ["bias", "mean", "std", "weight"]
    again = LinearProbe(**state)
    torch.testing.assert_close(again(x), probe(x), rtol=0, atol=0)


def test_probe_on_a_pretrained_encoder_as_the_readme_shows(
    tmp_path: Path, write_checkpoint: Callable[..., Path]
) -> None:
    enc = fastclr.load_encoder(write_checkpoint(tmp_path / "c.pt", image_size=12))
    d = load_digits()
    assert d.train.labels is not None
    images = d.train.images[:160].permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    labels = d.train.labels[:160]
    with torch.no_grad():
        feats = enc(enc.preprocess(images))
    probe = fastclr.fit_linear_probe(feats[:120], labels[:120])
    predicted = probe.predict(feats[120:])
    assert predicted.shape == (40,)
    want = linear_probe_accuracy(feats[:120], labels[:120], feats[120:], labels[120:])
    assert probe.accuracy(feats[120:], labels[120:]) == want


@pytest.mark.parametrize(
    ("features", "labels", "kw", "match"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), {}, "features must be"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), {}, "labels must be"),
        (torch.zeros(4, 3), torch.zeros(4), {}, "class indices"),
        (torch.zeros(4, 3), torch.tensor([0, 1, -1, 1]), {}, "class indices"),
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), {}, "num_classes must be >= 2"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 2, 1]), {"num_classes": 2}, "num_classes"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), {}, "at least one row"),
        (torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1]), {}, "NaN or Inf"),
    ],
)
def test_probe_refuses_bad_input_by_name(
    features: torch.Tensor, labels: torch.Tensor, kw: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        fit_linear_probe(features, labels, **kw)


def test_probe_refuses_features_of_another_size() -> None:
    x, y = _blobs(30, 4, 2, 4)
    with pytest.raises(ValueError, match=r"features must be \(N, 4\)"):
        fit_linear_probe(x, y).predict(torch.zeros(3, 5))
