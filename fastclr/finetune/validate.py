"""Top-1 and top-5 of a classifier on the validation images, shared over the ranks.

Each rank scores its share of the validation images (:mod:`fastclr.finetune.data`) with the
classifier in eval mode (BatchNorm on its running statistics), on clean inputs prepared exactly as
``fastclr linear-eval`` prepares them (:mod:`fastclr.features`: decoded in memory, or streamed
from the files); the counts are summed over the ranks, so every rank returns the same accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastclr.data import TensorImageDataset
from fastclr.data.split import FileSet
from fastclr.data.summary import DataSummary
from fastclr.distributed import DistInfo, gather_objects
from fastclr.features import extract_features, stream_features

__all__ = ["TOP_K", "Accuracy", "topk_correct", "validate"]

#: The second accuracy reported (top-5, as ImageNet results give it); with fewer classes, all.
TOP_K = 5
#: Validation images per forward.
VAL_BATCH = 256


@dataclass(frozen=True)
class Accuracy:
    """Validation top-1 and top-k (k = min(5, classes)) over ``n`` images."""

    top1: float
    top5: float
    n: int


def topk_correct(logits: Tensor, labels: Tensor, k: int = TOP_K) -> tuple[int, int]:
    """(images whose top class is the label, images with the label among the top ``k``)."""
    if len(logits) == 0:
        return 0, 0
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels.view(-1, 1)
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def _logits(
    model: nn.Module,
    part: TensorImageDataset | FileSet,
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    size: int,
    device: torch.device,
    workers: int,
    summary: DataSummary,
) -> tuple[Tensor, Tensor]:
    if len(part) == 0:
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    mean, std = norm
    if isinstance(part, FileSet):
        return stream_features(
            model, part, mean, std, size, device, num_workers=workers, summary=summary
        )
    assert part.labels is not None
    logits = extract_features(model, part, mean, std, size, device, batch_size=VAL_BATCH)
    return logits, part.labels.to(device)


@torch.no_grad()
def validate(
    model: nn.Module,
    part: TensorImageDataset | FileSet,
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    size: int,
    device: torch.device,
    ddp: DistInfo,
    *,
    workers: int = 0,
    summary: DataSummary | None = None,
) -> Accuracy:
    """Top-1 / top-5 of ``model`` (the unwrapped classifier) on every rank's ``part`` together
    (collective on several ranks)."""
    logits, labels = _logits(
        model, part, norm, size, device, workers, summary if summary is not None else DataSummary()
    )
    c1, c5 = topk_correct(logits, labels)
    counts = gather_objects((c1, c5, len(labels)), ddp)
    n = sum(c[2] for c in counts)
    if n == 0:
        raise RuntimeError("no validation image could be read")
    return Accuracy(sum(c[0] for c in counts) / n, sum(c[1] for c in counts) / n, n)
