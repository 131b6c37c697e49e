"""The kNN monitor: top-1 of the encoder's features, held-out split against the training split.

Run once per epoch by the loop on rank 0 (the other ranks receive its result, or its error); it
reuses :func:`fastclr.evaluate.extract_features` and :func:`fastclr.evaluate.knn_accuracy`. Features
that hold NaN or Inf stop the run (:class:`~fastclr.errors.NonFiniteLossError`), never scored.
"""

from __future__ import annotations

import torch

from fastclr.data import TensorImageDataset
from fastclr.distributed import DistInfo, on_main, unwrap
from fastclr.errors import NonFiniteLossError
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
) -> float:
    """kNN top-1 of the encoder's features, held-out against train, on every rank.

    ``sets`` are (train, held-out), ``norm`` the (mean, std) of the encoder's inputs. Only rank 0
    needs the two sets (streamed data decodes its monitor subsets there alone).
    """
    (train, heldout), (mean, std) = sets, norm

    def measure() -> float:
        assert train is not None and heldout is not None
        enc = unwrap(model)
        assert isinstance(enc, SimCLR)
        f_tr = extract_features(enc.encoder, train, mean, std, image_size, device)
        f_ho = extract_features(enc.encoder, heldout, mean, std, image_size, device)
        if not bool(torch.isfinite(f_tr).all() and torch.isfinite(f_ho).all()):
            raise NonFiniteLossError(
                "the encoder's features became NaN or Inf (the kNN monitor found them): the "
                "weights diverged; training stopped"
            )
        assert train.labels is not None and heldout.labels is not None
        return knn_accuracy(
            f_tr,
            train.labels.to(device),
            f_ho,
            heldout.labels.to(device),
            k=k,
            temperature=temperature,
        )

    # rank 0 measures; every rank gets its number, or its error (no rank waits on a failed one)
    return on_main(measure, ddp)
