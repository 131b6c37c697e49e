"""The classifier a ``fastclr finetune`` run trained, in a few lines: :func:`load_classifier`.

A fine-tuning run's checkpoint (``kind: "finetune"``) holds the whole SimCLR network with the
fine-tuned weights and, beside it, the classifier on top (the projection-head layer it sits on,
the class names, the linear layer). :func:`load_classifier` rebuilds it in eval mode with the
preprocessing the network was trained with, so a user's images go in and class scores come out::

    clf = fastclr.load_classifier("runs/finetune")
    with torch.no_grad():
        scores = clf(clf.preprocess(images))       # (N, classes)
    names = [clf.classes[i] for i in scores.argmax(1)]

``fastclr.load_encoder`` on the same run gives the fine-tuned encoder alone (features, not
classes), and ``fastclr export`` exports it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from fastclr.checkpoint import EVAL_FIELDS, CheckpointError, check_finite_weights, load_model_state
from fastclr.downstream.load import Device, _device, model_weights, open_run, run_info
from fastclr.downstream.preprocess import Preprocess
from fastclr.models import Classifier, SimCLR

__all__ = ["FinetunedClassifier", "load_classifier"]


class FinetunedClassifier(Classifier):
    """A fine-tuned fastclr classifier: ``forward(x)`` gives (N, classes) logits.

    Attributes:
        classes: class names, in the order of the logits (the data folder's class subfolders).
        preprocess: :class:`~fastclr.downstream.preprocess.Preprocess`; ``clf(clf.preprocess(
            images))`` gives the logits of uint8 or [0, 1] images, PIL images or tensors.
        head_layer: the projection-head layer the linear layer sits on (0: the encoder).
        encoder: the fine-tuned encoder (pooled features).
    """

    def __init__(
        self, model: SimCLR, head_layer: int, classes: list[str], preprocess: Preprocess
    ) -> None:
        super().__init__(model, head_layer, len(classes))
        self.classes = list(classes)
        self.preprocess = preprocess


def _head(state: dict[str, Any], where: str) -> tuple[int, list[str]]:
    """The head layer and class names a fine-tuning checkpoint's ``classifier`` entry records."""
    try:
        head = state["classifier"]
        return int(head["head_layer"]), [str(c) for c in head["classes"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {where} has a malformed fine-tuning record: {e}") from e


def load_classifier(
    run_folder_or_checkpoint: str | os.PathLike[str],
    map_location: Device = None,
    allow_legacy: bool = False,
) -> FinetunedClassifier:
    """The classifier of a ``fastclr finetune`` run, in eval mode, with its preprocessing.

    Args:
        run_folder_or_checkpoint: a fine-tuning run folder (its ``checkpoint.pt`` is read) or
            the checkpoint file (finished, or written mid-run).
        map_location: device to put the classifier on; None: the CPU.
        allow_legacy: read a checkpoint without an integrity digest (only a file you trust).

    Returns:
        :class:`FinetunedClassifier`: (N, 3, S, S) normalised images → (N, classes) logits;
        ``classes`` names them, ``preprocess`` prepares images.

    Raises:
        CheckpointError: not a fastclr checkpoint, corrupted, a pretraining run's (use
            ``load_encoder``), weights that hold NaN or Inf or do not fit the network it
            records.
        ValueError: ``map_location`` is not a device this process can use.

    Example:
        >>> clf = fastclr.load_classifier("runs/finetune")
        >>> with torch.no_grad():
        ...     predicted = clf(clf.preprocess(images_uint8)).argmax(1)
    """
    device = _device(map_location)
    state, where = open_run(run_folder_or_checkpoint, allow_legacy)
    if state.get("kind") != "finetune":
        raise CheckpointError(
            f"checkpoint {where} is a pretraining run's, which has no classifier: fine-tune it "
            "with fastclr finetune, or load its encoder with fastclr.load_encoder"
        )
    fields = (*EVAL_FIELDS, "classifier")
    weights = model_weights(state, where, fields, "loading a classifier")
    info = run_info(state, where, "fine-tuning record")
    head_layer, classes = _head(state, where)
    check_finite_weights(state["classifier"]["fc"], f"checkpoint {where} (classifier)")
    try:
        model = info.architecture().build()
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {where} records a network fastclr cannot build: {e}"
        ) from e
    load_model_state(model, weights, f"checkpoint {where}")
    clf = FinetunedClassifier(model, head_layer, classes, info.preprocess())
    load_model_state(clf.fc, state["classifier"]["fc"], f"checkpoint {where} (classifier)")
    clf.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return clf.eval()
