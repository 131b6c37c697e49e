"""Encoders, the SimCLR model (encoder + projection head), and the fine-tuning classifier."""

from fastclr.models.classifier import Classifier, head_layers
from fastclr.models.resnet import (
    ARCHS,
    STEMS,
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet,
    resnet18,
    resnet34,
    resnet50,
)
from fastclr.models.simclr import (
    Architecture,
    ProjectionHead,
    SimCLR,
    build_model,
    infer_feature_dim,
)

__all__ = [
    "ARCHS",
    "STEMS",
    "Architecture",
    "BasicBlock",
    "Bottleneck",
    "Classifier",
    "ProjectionHead",
    "ResNet",
    "SimCLR",
    "build_model",
    "head_layers",
    "infer_feature_dim",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
]
