"""The kNN monitor: top-1 of the encoder's features, held-out split against the training split.

Run once per epoch by the loop on rank 0 (the other ranks wait at a barrier); it reuses
:func:`fastclr.evaluate.extract_features` and :func:`fastclr.evaluate.knn_accuracy`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from fastclr.data import TensorImageDataset
from fastclr.distributed import DistInfo, unwrap
from fastclr.evaluate import extract_features, knn_accuracy
from fastclr.models import SimCLR

__all__ = ["knn_monitor"]


def knn_monitor(
    model: SimCLR,
    sets: tuple[TensorImageDataset | None, TensorImageDataset | None],
    norm: tuple[tuple[float, ...], tuple[float, ...]],
    image_size: int,
    k: int,
    temperature: float,
    device: torch.device,
    ddp: DistInfo,
) -> float | None:
    """kNN top-1 of the encoder's features, held-out against train (rank 0; others get None).

    ``sets`` are (train, held-out), ``norm`` the (mean, std) of the encoder's inputs. Only rank 0
    needs the two sets (streamed data decodes its monitor subsets there alone).
    """
    (train, heldout), (mean, std) = sets, norm
    acc: float | None = None
    if ddp.is_main:
        assert train is not None and heldout is not None
        enc = unwrap(model)
        assert isinstance(enc, SimCLR)
        f_tr = extract_features(enc.encoder, train, mean, std, image_size, device)
        f_ho = extract_features(enc.encoder, heldout, mean, std, image_size, device)
        assert train.labels is not None and heldout.labels is not None
        acc = knn_accuracy(
            f_tr,
            train.labels.to(device),
            f_ho,
            heldout.labels.to(device),
            k=k,
            temperature=temperature,
        )
    if ddp.world_size > 1:
        dist.barrier()
    return acc
