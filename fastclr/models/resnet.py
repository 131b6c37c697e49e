"""ResNet-18/34/50 encoders (He et al. 2016), built here so fastclr needs no torchvision.

The layer layout, initialisation and parameter names follow torchvision's ``resnet18/34/50`` so
the parameter counts match (with a 1000-class head: 11,689,512 / 21,797,672 / 25,557,032) and a
torchvision state dict loads. Two stems:

* ``"imagenet"``: 7×7 conv stride 2 + 3×3 max-pool stride 2 (224-px inputs);
* ``"cifar"``: 3×3 conv stride 1, no max-pool (32-px inputs; SimCLR paper, Appendix B.9).

For self-supervised use ``num_classes=0`` (the default) makes ``fc`` an ``nn.Identity`` and the
encoder returns the features ``h`` after global average pooling (512 or 2048 channels × width).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet",
    "resnet18",
    "resnet34",
    "resnet50",
]

Stem = Literal["imagenet", "cifar"]
STEMS = ("imagenet", "cifar")


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    """The 1×1 projection (+ BatchNorm) of a block whose shape changes; None keeps the identity."""
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride, as torchvision's "ResNet v1.5"), 1×1 expand ×4."""

    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# arch name -> (block, blocks per stage)
ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """A ResNet encoder.

    Args:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        stem: ``"imagenet"`` (7×7/2 conv + max-pool) or ``"cifar"`` (3×3/1 conv, no max-pool).
        num_classes: size of the linear head ``fc``; 0 (default) makes ``fc`` an identity so the
            forward returns the pooled features ``h``.
        width: channel multiplier (1 = the standard network; fractions make tiny test models).
        in_channels: input channels (3 for RGB).

    Shape:
        input (N, in_channels, H, W), any memory format (channels_last is fastest);
        output (N, feature_dim) with ``num_classes=0``, else (N, num_classes).

    Example:
        >>> enc = ResNet("resnet18", stem="cifar")
        >>> enc(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """

    def __init__(
        self,
        arch: str = "resnet18",
        stem: Stem = "imagenet",
        num_classes: int = 0,
        width: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        block, layers = ARCHS[arch]
        self.arch, self.stem, self.width = arch, stem, float(width)
        base = max(1, round(64 * width))
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, base, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, base, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        in_ch = base
        stages: list[nn.Sequential] = []
        for i, n_blocks in enumerate(layers):
            ch = base * 2**i
            blocks: list[nn.Module] = []
            for j in range(n_blocks):
                blocks.append(block(in_ch, ch, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_ch
        self.fc: nn.Module = nn.Linear(in_ch, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features ``h`` (N, feature_dim), whatever ``fc`` is."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def resnet(arch: str, stem: Stem = "imagenet", num_classes: int = 0, width: float = 1.0) -> ResNet:
    """``ResNet(arch, stem, num_classes, width)``; see :class:`ResNet`."""
    return ResNet(arch, stem=stem, num_classes=num_classes, width=width)


def resnet18(stem: Stem = "imagenet", num_classes: int = 0, width: float = 1.0) -> ResNet:
    """ResNet-18 (BasicBlock ×[2,2,2,2]); 512-d features."""
    return ResNet("resnet18", stem=stem, num_classes=num_classes, width=width)


def resnet34(stem: Stem = "imagenet", num_classes: int = 0, width: float = 1.0) -> ResNet:
    """ResNet-34 (BasicBlock ×[3,4,6,3]); 512-d features."""
    return ResNet("resnet34", stem=stem, num_classes=num_classes, width=width)


def resnet50(stem: Stem = "imagenet", num_classes: int = 0, width: float = 1.0) -> ResNet:
    """ResNet-50 (Bottleneck ×[3,4,6,3]); 2048-d features."""
    return ResNet("resnet50", stem=stem, num_classes=num_classes, width=width)
