"""A linear classifier on frozen features: the probe ``fastclr linear-eval`` fits, as a model.

With a handful of labels a class, a linear probe on the pretrained encoder's frozen features is
a classifier a few points below fine-tuning the whole network, in seconds
(``bench/results/quality-semi.md``, 3 seeds: 4 labelled digits a class, 87.65% against 91.36%
fine-tuned; 10% of the labels, 97.21% against 98.70%). :func:`fit_linear_probe`
fits it on features a user extracted and returns it as a :class:`LinearProbe` module::

    enc = fastclr.load_encoder("runs/photos")
    with torch.no_grad():
        probe = fastclr.fit_linear_probe(enc(enc.preprocess(images)), labels)
        predicted = probe.predict(enc(enc.preprocess(new_images)))

The model is multinomial logistic regression on standardised features (each feature's mean and
standard deviation over the training features, the deviation clamped at 1e-6), fitted by
full-batch L-BFGS in float64 with a small L2 penalty on the weights (:data:`LINEAR_L2`). Memory:
the features are read as given and standardised in float64 blocks of at most
:data:`PROBE_BLOCK_BYTES`, never upcast whole.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LINEAR_L2",
    "LINEAR_MAX_ITER",
    "PROBE_BLOCK_BYTES",
    "LinearProbe",
    "fit_linear_probe",
]

LINEAR_L2 = 1e-4  # penalty on the probe's weights (mean-loss units); features are standardised
LINEAR_MAX_ITER = 200
#: Largest float64 block of the probe: rows × (F + classes) × 8 bytes (the standardised rows and
#: their logits); a training set within one block is fitted in one piece.
PROBE_BLOCK_BYTES = 256 << 20


class LinearProbe(nn.Module):
    """``((x − mean) / std) @ weight + bias``: (N, F) features → (N, classes) float64 logits.

    Args:
        mean, std: (F,) the training features' mean and standard deviation.
        weight: (F, classes); bias: (classes,).
        block_rows: rows standardised at once by :meth:`predict` (memory, not the result).

    All four are float64 buffers, so ``state_dict()`` holds the whole fitted model.
    """

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def __init__(
        self, mean: Tensor, std: Tensor, weight: Tensor, bias: Tensor, block_rows: int = 4096
    ) -> None:
        super().__init__()
        for name, t in (("mean", mean), ("std", std), ("weight", weight), ("bias", bias)):
            self.register_buffer(name, t.detach().double())
        self.block_rows = max(1, int(block_rows))

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, features: Tensor) -> Tensor:
        return ((features.double() - self.mean) / self.std) @ self.weight + self.bias

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """(N,) class indices, the rows taken ``block_rows`` at a time."""
        _check_features(features, self.feature_dim)
        blocks = range(0, len(features), self.block_rows)
        parts = [self(features[i : i + self.block_rows]).argmax(1) for i in blocks]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Top-1 of :meth:`predict` against ``labels`` (N,)."""
        pred = self.predict(features)
        return float((pred == labels.to(pred.device)).double().mean())


def _check_features(features: Tensor, dim: int | None = None) -> None:
    if features.dim() != 2 or (dim is not None and features.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, F)"
        raise ValueError(f"features must be {want}, got shape {tuple(features.shape)}")


def _check_fit_inputs(features: Tensor, labels: Tensor, num_classes: int | None) -> int:
    """The number of classes, after checking what :func:`fit_linear_probe` was given."""
    _check_features(features)
    if labels.dim() != 1 or len(labels) != len(features):
        raise ValueError(
            f"labels must be (N,) with one label per feature row ({len(features)}), got shape "
            f"{tuple(labels.shape)}"
        )
    if len(features) == 0:
        raise ValueError("features must have at least one row")
    if labels.is_floating_point() or int(labels.min()) < 0:
        raise ValueError("labels must be class indices: integers >= 0")
    n = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if n < 2 or n <= int(labels.max()):
        raise ValueError(
            f"num_classes must be >= 2 and above every label (max {int(labels.max())}), got {n}"
        )
    for i in range(0, len(features), 65536):
        if not bool(torch.isfinite(features[i : i + 65536]).all()):
            raise ValueError("features hold NaN or Inf (was the encoder's checkpoint damaged?)")
    return n


def standardisation(x: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """Per-feature float64 mean and standard deviation (Bessel, clamped at 1e-6) of ``x``,
    over blocks of ``rows`` rows (all at once when they fit one block)."""
    if rows >= len(x):
        xd = x.double()
        return xd.mean(0), xd.std(0).clamp(min=1e-6)
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, len(x), rows):
        total += x[i : i + rows].double().sum(0)
    mu = total / len(x)
    squares = torch.zeros_like(mu)
    for i in range(0, len(x), rows):
        squares += ((x[i : i + rows].double() - mu) ** 2).sum(0)
    return mu, (squares / max(1, len(x) - 1)).sqrt().clamp(min=1e-6)


def blocked_loss(
    x: Tensor, y: Tensor, mu: Tensor, sd: Tensor, w: Tensor, b: Tensor, l2: float, rows: int
) -> Tensor:
    """The probe's mean cross-entropy plus penalty, its gradient accumulated into ``w`` and
    ``b`` block by block (each block standardised in float64 when it is used)."""
    total = l2 * (w * w).sum()
    total.backward()
    total = total.detach()
    for i in range(0, len(x), rows):
        z = (x[i : i + rows].double() - mu) / sd
        part = F.cross_entropy(z @ w + b, y[i : i + rows], reduction="sum") / len(x)
        part.backward()
        total = total + part.detach()
    return total


def fit_linear_probe(
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int | None = None,
    l2: float = LINEAR_L2,
    max_iter: int = LINEAR_MAX_ITER,
    progress: bool = False,
    block_bytes: int | None = None,
) -> LinearProbe:
    """Fit logistic regression on frozen, standardised ``features`` with L-BFGS (module docstring).

    Args:
        features: (N, F) frozen features (any float dtype, any device; read, never upcast whole).
        labels: (N,) class indices.
        num_classes: logits to fit; None: the largest label + 1.
        l2: penalty on the weights (mean-loss units).
        max_iter: L-BFGS iterations.
        progress: a tqdm bar (stderr) over the loss evaluations L-BFGS may make.
        block_bytes: largest float64 block (None: :data:`PROBE_BLOCK_BYTES`); data within one
            block are fitted exactly as one full batch.

    Returns:
        :class:`LinearProbe` on the features' device, its buffers float64.

    Raises:
        ValueError: features not (N, F) or holding NaN / Inf, labels not (N,) class indices,
            fewer than two classes.

    Example:
        >>> probe = fit_linear_probe(train_features, train_labels)
        >>> probe.accuracy(test_features, test_labels)
    """
    from tqdm import tqdm

    n_classes = _check_fit_inputs(features, labels, num_classes)
    dim, dev = features.shape[1], features.device
    block = PROBE_BLOCK_BYTES if block_bytes is None else block_bytes
    rows = max(1, block // (8 * (dim + n_classes)))
    mu, sd = standardisation(features, rows)
    y = labels.long().to(dev)
    w = torch.zeros(dim, n_classes, dtype=torch.float64, device=dev, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, device=dev, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )
    evals = max_iter * 5 // 4  # LBFGS's default max_eval
    bar = tqdm(total=evals, desc="linear probe", disable=not progress, file=sys.stderr, leave=False)
    whole = (features.double() - mu) / sd if rows >= len(features) else None

    def closure() -> Tensor:
        bar.update(1)
        opt.zero_grad()
        if whole is not None:  # one block: the full-batch loss
            loss = F.cross_entropy(whole @ w + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss
        return blocked_loss(features, y, mu, sd, w, b, l2, rows)

    with torch.enable_grad():
        opt.step(closure)
    bar.close()
    return LinearProbe(mu, sd, w, b, block_rows=rows)
