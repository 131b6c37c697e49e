"""Evaluation of a pretrained encoder on frozen features: linear probe and kNN.

* kNN (Wu et al. 2018, the monitor most SimCLR code uses): cosine similarity of L2-normalised
  features, the k nearest training features vote with weights ``exp(sim / τ)``, τ = 0.1; top-1
  accuracy on the held-out split. k defaults to :func:`knn_k_for`: Wu et al.'s 200 is about 16%
  of an ImageNet class's 1,300 training images, so k is 15% of the smallest class's training
  images, at most 200 (on 1,438 digits, ~143 a class, k = 200 would fill every vote with more
  than a whole class; there kNN on the same features rose from 77% at k = 200 to 90% at k = 20).
* linear probe: multinomial logistic regression on standardised frozen features, fitted with
  full-batch L-BFGS in torch (fp64, small L2 penalty); top-1 on the held-out split.

Inputs are the clean images (no augmentation): uint8 → [0, 1] → the pretraining normalisation,
channels_last, resized to the model's image size where needed. :func:`evaluate_checkpoint` shows
its progress (feature extraction per batch, the probe's L-BFGS evaluations) on stderr, and says
what it needs when the data cannot be evaluated (labels: at least two class subfolders).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastclr.checkpoint import (
    EVAL_FIELDS,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    require_fields,
)
from fastclr.data import ImageData, TensorImageDataset, load_data
from fastclr.device import resolve_device
from fastclr.models import build_model

__all__ = [
    "EvalResult",
    "evaluate_checkpoint",
    "extract_features",
    "knn_accuracy",
    "knn_k_for",
    "linear_probe_accuracy",
]

KNN_K = 200  # Wu et al. 2018; the most k_for gives
KNN_CLASS_FRACTION = 0.15  # ~ Wu et al.'s 200 of ImageNet's ~1,300 training images a class
KNN_TEMPERATURE = 0.1
LINEAR_L2 = 1e-4  # penalty on the probe's weights (mean-loss units); features are standardised
LINEAR_MAX_ITER = 200


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: TensorImageDataset,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    image_size: int,
    device: torch.device | str,
    batch_size: int = 512,
    progress: str | None = None,
) -> Tensor:
    """Encoder features (N, F) in fp32 of every image of ``dataset``, in eval mode.

    ``progress``: the label of a tqdm bar over the batches (on stderr); None shows none.
    """
    from tqdm import tqdm

    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    feats: list[Tensor] = []
    try:
        starts = range(0, len(dataset), batch_size)
        bar = tqdm(starts, desc=progress, disable=progress is None, file=sys.stderr, leave=False)
        for i in bar:
            x = dataset.images[i : i + batch_size].to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-1] != image_size or x.shape[-2] != image_size:
                x = F.interpolate(
                    x,
                    size=(image_size, image_size),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            x = ((x - m) / s).contiguous(memory_format=torch.channels_last)
            feats.append(encoder(x).float())
    finally:
        encoder.train(was_training)
    return torch.cat(feats)


def knn_k_for(train_labels: Tensor | None) -> tuple[int, str]:
    """(k, reason): 15% of the smallest class's training images, in [1, 200]."""
    if train_labels is None or train_labels.numel() == 0:
        return KNN_K, "no labels"
    counts = torch.bincount(train_labels.long().flatten().cpu())
    smallest = int(counts[counts > 0].min())
    k = max(1, min(KNN_K, round(KNN_CLASS_FRACTION * smallest)))
    if k == KNN_K:
        return k, f"Wu et al. 2018's 200; the smallest class has {smallest} training images"
    return k, (
        f"15% of the smallest class's {smallest} training images; Wu et al.'s 200 is ~16% of "
        "an ImageNet class"
    )


@torch.no_grad()
def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int | None = None,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> float:
    """Weighted kNN top-1 accuracy (cosine similarity, votes ``exp(sim/τ)``, k capped by N).

    ``k=None``: :func:`knn_k_for` of the training labels.
    """
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError("kNN needs at least one training and one test feature")
    if k is None:
        k = knn_k_for(train_labels)[0]
    k = min(k, len(train_features))
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    ftr = F.normalize(train_features.float(), dim=1)
    fte = F.normalize(test_features.float(), dim=1)
    correct = 0
    for i in range(0, len(fte), chunk):
        sim = fte[i : i + chunk] @ ftr.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(top_idx), n_classes, device=fte.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        correct += int((votes.argmax(1) == test_labels[i : i + chunk]).sum())
    return correct / len(fte)


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    l2: float = LINEAR_L2,
    max_iter: int = LINEAR_MAX_ITER,
    progress: bool = False,
) -> float:
    """Top-1 of a logistic-regression probe fitted with L-BFGS on frozen, standardised features.

    ``progress``: a tqdm bar (stderr) over the loss evaluations L-BFGS may make.
    """
    from tqdm import tqdm

    xtr = train_features.double()
    mu, sd = xtr.mean(0), xtr.std(0).clamp(min=1e-6)
    xtr = (xtr - mu) / sd
    xte = (test_features.double() - mu) / sd
    ytr = train_labels.long()
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    w = torch.zeros(
        xtr.shape[1], n_classes, dtype=torch.float64, device=xtr.device, requires_grad=True
    )
    b = torch.zeros(n_classes, dtype=torch.float64, device=xtr.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )
    evals = max_iter * 5 // 4  # LBFGS's default max_eval
    bar = tqdm(total=evals, desc="linear probe", disable=not progress, file=sys.stderr, leave=False)

    def closure() -> Tensor:
        bar.update(1)
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    bar.close()
    with torch.no_grad():
        pred = (xte @ w + b).argmax(1)
    return float((pred == test_labels.to(pred.device)).double().mean())


@dataclass
class EvalResult:
    linear_top1: float
    knn_top1: float
    n_train: int
    n_test: int
    arch: str
    data: str


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | ImageData = "digits",
    arch: str | None = None,
    device: str | None = None,
    knn_k: int | None = None,
    knn_temperature: float = KNN_TEMPERATURE,
    num_workers: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Linear-probe and kNN top-1 of a pretraining checkpoint's encoder on a labelled dataset.

    ``arch``, when given, must match the checkpoint's (a :class:`CheckpointError` names both).
    Arguments are checked first (``ValueError`` naming the flag); ``progress`` shows tqdm bars.
    """
    _check_args(knn_k, knn_temperature, num_workers)
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint)
    require_fields(state, EVAL_FIELDS, checkpoint, "evaluation")
    spec: dict[str, Any] = dict(state["model_spec"])
    if arch is not None and arch != spec["arch"]:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds a {spec['arch']} encoder, not the requested {arch}"
        )
    model = build_model(
        spec["arch"], spec["stem"], spec["width"], spec["proj_dim"], spec["head_bn"]
    )
    load_model_state(model, state["model"], f"checkpoint {checkpoint} ({spec['arch']})")
    model.to(dev)
    image_size = int(state["image_size"])
    ds = load_data(data, image_size, num_workers) if isinstance(data, str) else data
    train, held = _labelled_split(ds)
    mean, std = tuple(state["mean"]), tuple(state["std"])
    bars = ("features (train)", "features (held-out)") if progress else (None, None)
    f_tr = extract_features(model.encoder, train, mean, std, image_size, dev, progress=bars[0])
    f_te = extract_features(model.encoder, held, mean, std, image_size, dev, progress=bars[1])
    assert train.labels is not None and held.labels is not None
    y_tr, y_te = train.labels.to(dev), held.labels.to(dev)
    return EvalResult(
        linear_top1=linear_probe_accuracy(f_tr, y_tr, f_te, y_te, progress=progress),
        knn_top1=knn_accuracy(f_tr, y_tr, f_te, y_te, k=knn_k, temperature=knn_temperature),
        n_train=len(train),
        n_test=len(held),
        arch=spec["arch"],
        data=ds.name,
    )


def _check_args(knn_k: int | None, knn_temperature: float, num_workers: int) -> None:
    """``ValueError`` naming the ``linear-eval`` flag whose value cannot be used."""
    if knn_k is not None and (isinstance(knn_k, bool) or not isinstance(knn_k, int) or knn_k < 1):
        raise ValueError(f"--knn-k must be an integer >= 1, got {knn_k!r}")
    if not (math.isfinite(knn_temperature) and knn_temperature > 0):
        raise ValueError(f"--knn-temperature must be a finite number > 0, got {knn_temperature!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"--num-workers must be an integer >= 0, got {num_workers!r}")


def _labelled_split(ds: ImageData) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The (train, held-out) sets of labelled data, or a ``ValueError`` saying what is needed."""
    layout = "ROOT/<class>/<image>, one subfolder per class"
    if ds.train.labels is None or not ds.classes:
        raise ValueError(
            f"linear-eval needs labelled images, and {ds.name} has no class subfolders "
            f"(arrange it as {layout}, at least two classes)"
        )
    if len(ds.classes) < 2:
        raise ValueError(
            f"linear-eval needs at least two classes to tell apart, and {ds.name} has one "
            f"({ds.classes[0]!r}); add a subfolder for each other class ({layout})"
        )
    if ds.heldout is None or ds.heldout.labels is None or len(ds.heldout) == 0:
        raise ValueError(
            f"{ds.name} has too few images per class to hold some out for evaluation "
            "(each class needs at least two)"
        )
    return ds.train, ds.heldout
