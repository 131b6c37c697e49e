"""The SimCLR model: an encoder ``f`` and a projection head ``g`` (Chen et al. 2020, Fig. 2).

``forward(x)`` returns ``(h, z)``: ``h = f(x)`` are the representations used downstream (linear
probe, kNN), ``z = g(h)`` the embeddings the NT-Xent loss sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn

from fastclr.models.resnet import resnet

__all__ = ["Architecture", "ProjectionHead", "SimCLR", "build_model", "infer_feature_dim"]


class ProjectionHead(nn.Sequential):
    """MLP ``h → hidden → out`` with a ReLU between (paper: one hidden layer, out = 128).

    Args:
        in_dim: feature size of ``h``.
        hidden_dim: hidden width (paper: equal to ``in_dim``).
        out_dim: embedding size (128).
        batch_norm: BatchNorm1d after the hidden linear (SimCLR v2 style); its bias replaces the
            linear's.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int | None = None,
        out_dim: int = 128,
        batch_norm: bool = False,
    ) -> None:
        hidden = in_dim if hidden_dim is None else hidden_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)]
        super().__init__(*layers)


@torch.no_grad()
def infer_feature_dim(encoder: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Feature size of ``encoder`` from one dummy forward of two images (eval mode, restored)."""
    was_training = encoder.training
    encoder.eval()
    try:
        p = next(encoder.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        out = encoder(torch.zeros(2, *input_shape, device=device))
    finally:
        encoder.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the encoder must return (N, features), got {shape}")
    return int(out.shape[1])


class SimCLR(nn.Module):
    """Encoder ``f`` + projection head ``g``.

    Args:
        encoder: any ``nn.Module`` mapping (N, C, H, W) images to (N, F) features (e.g.
            :class:`fastclr.models.ResNet` with ``num_classes=0``).
        feature_dim: F; if ``None``, taken from ``encoder.feature_dim`` or a dummy forward of
            ``input_shape``.
        hidden_dim: width of the head's hidden layer (default F).
        proj_dim: output size of ``g`` (paper: 128).
        head_bn: BatchNorm in the head.
        input_shape: (C, H, W) used only to infer ``feature_dim``.

    Shape:
        input (N, C, H, W) → ``h`` (N, F), ``z`` (N, proj_dim).

    Example:
        >>> model = SimCLR(resnet18(stem="cifar")).to(memory_format=torch.channels_last)
        >>> h, z = model(images)
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int | None = None,
        hidden_dim: int | None = None,
        proj_dim: int = 128,
        head_bn: bool = False,
        input_shape: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        if feature_dim is None:
            attr = getattr(encoder, "feature_dim", None)
            feature_dim = attr if isinstance(attr, int) else infer_feature_dim(encoder, input_shape)
        self.encoder = encoder
        self.feature_dim = int(feature_dim)
        self.head = ProjectionHead(self.feature_dim, hidden_dim, proj_dim, head_bn)

    def forward(self, x: Tensor, views: int = 1) -> tuple[Tensor, Tensor]:
        """``(h, z)`` of the rows of ``x``.

        ``views > 1``: ``x`` holds that many equal groups of rows (the views, one after the
        other), each forwarded on its own, so BatchNorm normalises each view by its own
        statistics; the outputs are concatenated in the same order. One call either way, so a
        DistributedDataParallel wrapper sees one forward per backward.
        """
        if views == 1:
            h = self.encoder(x)
            return h, self.head(h)
        if views < 1 or x.shape[0] % views:
            raise ValueError(f"views must divide the {x.shape[0]} rows of x, got {views}")
        parts = [self.forward(part) for part in x.chunk(views)]
        return torch.cat([h for h, _ in parts]), torch.cat([z for _, z in parts])


def build_model(
    arch: str,
    stem: Literal["cifar", "imagenet"],
    width: float = 1.0,
    proj_dim: int = 128,
    head_bn: bool = False,
) -> SimCLR:
    """A SimCLR model on a fastclr ResNet encoder, in channels_last."""
    encoder = resnet(arch, stem=stem, width=width)
    model = SimCLR(encoder, feature_dim=encoder.feature_dim, proj_dim=proj_dim, head_bn=head_bn)
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Architecture:
    """What a fastclr SimCLR model is: the fields a checkpoint records (``model_spec``)."""

    arch: str
    stem: str
    width: float
    proj_dim: int = 128
    head_bn: bool = False

    def build(self) -> SimCLR:
        """The model (random weights, channels_last)."""
        stem = cast(Literal["cifar", "imagenet"], self.stem)
        return build_model(self.arch, stem, self.width, self.proj_dim, self.head_bn)
