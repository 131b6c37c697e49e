"""A classifier on a SimCLR network: encoder, the first K layers of the projection head, a linear
layer (SimCLR's semi-supervised fine-tuning; SimCLRv2, Chen et al. 2020b, Section 2).

SimCLR fine-tunes from the encoder's output ``h`` (K = 0). SimCLRv2 found that fine-tuning from
a middle layer of the projection head (K = 1: ``Linear → [BatchNorm] → ReLU`` of fastclr's head)
does better with 1% of the labels. :func:`head_layers` cuts the head into its layers: each layer
starts at a ``Linear`` and holds what follows it up to the next one.

The classifier SHARES its encoder and head modules with the :class:`~fastclr.models.SimCLR` it
is made from, so training it trains them, and ``simclr.state_dict()`` holds the fine-tuned
weights (the head layers after K are left as they were).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastclr.models.simclr import SimCLR

__all__ = ["Classifier", "head_layers"]


def head_layers(head: nn.Sequential) -> list[nn.Sequential]:
    """The layers of a projection head: one ``nn.Sequential`` per ``Linear`` and what follows it
    (BatchNorm, ReLU) up to the next ``Linear``. fastclr's head has two: ``Linear [BN] ReLU``
    and ``Linear``."""
    groups: list[list[nn.Module]] = []
    for module in head:
        if isinstance(module, nn.Linear) or not groups:
            groups.append([])
        groups[-1].append(module)
    return [nn.Sequential(*g) for g in groups]


def _out_features(layer: nn.Sequential) -> int:
    linear = next(m for m in layer if isinstance(m, nn.Linear))
    return int(linear.out_features)


class Classifier(nn.Module):
    """``fc(head[:K](encoder(x)))``: logits of ``num_classes`` classes.

    Args:
        model: the SimCLR network (its encoder and head are shared, not copied).
        head_layer: K, how many layers of the projection head come before ``fc`` (0: none, the
            encoder's output; at most ``len(head_layers(model.head))``).
        num_classes: outputs of ``fc``.

    ``fc`` starts at zero (weights and bias), as SimCLR's fine-tuning code does
    (``zero_init_logits_layer``): the first steps then move the network from its pretrained
    state only through the classifier's gradient.

    Raises:
        ValueError: ``head_layer`` outside ``[0, layers of the head]``, ``num_classes < 2``.

    Shape:
        (N, 3, S, S) → (N, num_classes).
    """

    def __init__(self, model: SimCLR, head_layer: int, num_classes: int) -> None:
        super().__init__()
        layers = head_layers(model.head)
        if not 0 <= head_layer <= len(layers):
            raise ValueError(
                f"head_layer must be in [0, {len(layers)}] (the projection head has "
                f"{len(layers)} layers), got {head_layer}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.encoder = model.encoder
        self.head_layer = head_layer
        self.head = nn.Sequential(*layers[:head_layer])
        dim = _out_features(layers[head_layer - 1]) if head_layer else model.feature_dim
        self.feature_dim = int(dim)
        self.fc = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()

    @property
    def num_classes(self) -> int:
        return int(self.fc.out_features)

    def features(self, x: Tensor) -> Tensor:
        """The input of ``fc``: (N, ``feature_dim``)."""
        return self.head(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))
