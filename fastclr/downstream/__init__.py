"""Using a pretrained encoder downstream: load it in your own code, or export it.

* :func:`load_encoder` / :func:`load_simclr` (:mod:`~fastclr.downstream.load`): the encoder
  (with the preprocessing it was trained with), or encoder + projection head, from a run;
* :func:`load_classifier` (:mod:`~fastclr.downstream.classifier`): the classifier a
  ``fastclr finetune`` run trained, with its class names and preprocessing;
* :func:`fit_linear_probe` (:mod:`~fastclr.downstream.probe`): ``linear-eval``'s probe fitted on
  features you extracted, as a classifier (with a handful of labels a class, often better than
  fine-tuning);
* :func:`export` (:mod:`~fastclr.downstream.export`): ``fastclr export``'s formats, for
  torchvision, as plain state dicts, or as TorchScript for a Python without fastclr.
"""

from fastclr.downstream.classifier import FinetunedClassifier, load_classifier
from fastclr.downstream.export import FORMATS, ExportResult, export
from fastclr.downstream.load import (
    PretrainedEncoder,
    PretrainedSimCLR,
    RunInfo,
    load_encoder,
    load_simclr,
)
from fastclr.downstream.preprocess import Preprocess
from fastclr.downstream.probe import LinearProbe, fit_linear_probe

__all__ = [
    "FORMATS",
    "ExportResult",
    "FinetunedClassifier",
    "LinearProbe",
    "Preprocess",
    "PretrainedEncoder",
    "PretrainedSimCLR",
    "RunInfo",
    "export",
    "fit_linear_probe",
    "load_classifier",
    "load_encoder",
    "load_simclr",
]
