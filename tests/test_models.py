"""ResNet encoders and the SimCLR model: torchvision-equal sizes, stems, shapes, any encoder."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastclr.models import ProjectionHead, ResNet, SimCLR, infer_feature_dim, resnet

# torchvision.models.resnet{18,34,50}(num_classes=1000): sum of p.numel() over parameters()
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(arch: str) -> None:
    assert n_params(resnet(arch, num_classes=1000)) == TORCHVISION_PARAMS[arch]
    enc = resnet(arch)
    assert isinstance(enc.fc, nn.Identity)
    assert enc.feature_dim == FEATURE_DIMS[arch]
    fc = FEATURE_DIMS[arch] * 1000 + 1000
    assert n_params(enc) == TORCHVISION_PARAMS[arch] - fc


def test_cifar_stem_differs_only_in_first_conv() -> None:
    imnet, cifar = resnet("resnet18", "imagenet"), resnet("resnet18", "cifar")
    assert isinstance(imnet.maxpool, nn.MaxPool2d) and isinstance(cifar.maxpool, nn.Identity)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert imnet.conv1.kernel_size == (7, 7) and imnet.conv1.stride == (2, 2)
    assert n_params(imnet) - n_params(cifar) == 64 * 3 * (49 - 9)


@pytest.mark.parametrize(
    ("arch", "stem", "size", "width", "dim"),
    [
        ("resnet18", "cifar", 16, 0.25, 128),
        ("resnet34", "cifar", 8, 0.125, 64),
        ("resnet50", "cifar", 8, 0.125, 256),
        ("resnet18", "imagenet", 33, 0.25, 128),  # odd size through the stride-2 stem
    ],
)
def test_forward_shapes_channels_last(
    arch: str, stem: str, size: int, width: float, dim: int
) -> None:
    enc = resnet(arch, stem=stem, width=width).to(memory_format=torch.channels_last)  # type: ignore[arg-type]
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    h = enc(x)
    assert h.shape == (3, dim) and torch.isfinite(h).all()
    h.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_channels_last_matches_contiguous() -> None:
    enc = resnet("resnet18", "cifar", width=0.25).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = enc(x)
    enc_cl = enc.to(memory_format=torch.channels_last)
    out = enc_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="arch must be one of"):
        ResNet("resnet101")
    with pytest.raises(ValueError, match="stem must be one of"):
        ResNet("resnet18", stem="tiny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="width"):
        ResNet("resnet18", width=0)


def test_simclr_returns_h_and_z() -> None:
    model = SimCLR(resnet("resnet18", "cifar", width=0.25)).to(memory_format=torch.channels_last)
    h, z = model(torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last))
    assert h.shape == (4, 128) and z.shape == (4, 128)
    assert model.feature_dim == 128
    head = model.head
    assert isinstance(head[0], nn.Linear) and head[0].out_features == 128
    assert isinstance(head[1], nn.ReLU) and isinstance(head[2], nn.Linear)


def test_projection_head_batch_norm() -> None:
    head = ProjectionHead(32, hidden_dim=16, out_dim=8, batch_norm=True)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].bias is None
    assert head(torch.randn(5, 32)).shape == (5, 8)


def test_any_encoder_with_inferred_dim() -> None:
    encoder = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert infer_feature_dim(encoder) == 6
    encoder.train()
    model = SimCLR(encoder, proj_dim=4)
    assert encoder.training, "inferring the dimension must restore train mode"
    assert model.feature_dim == 6
    h, z = model(torch.randn(2, 3, 10, 10))
    assert h.shape == (2, 6) and z.shape == (2, 4)
    given = SimCLR(nn.Sequential(nn.Flatten(), nn.Linear(12, 7)), feature_dim=7)
    assert given.feature_dim == 7


def test_encoder_without_flat_output_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(N, features\)"):
        SimCLR(nn.Conv2d(3, 4, 1))


def test_views_forward_each_group_on_its_own() -> None:
    """``views=2`` is two separate forwards (BatchNorm statistics per view), not one of both;
    the running statistics get one update per view, as two calls would give."""
    torch.manual_seed(0)
    model = SimCLR(resnet("resnet18", stem="cifar", width=0.125), proj_dim=8, head_bn=True)
    twin = copy.deepcopy(model)
    x = torch.randn(6, 3, 16, 16)
    h, z = model(x, views=2)
    parts = [twin(part) for part in x.chunk(2)]
    torch.testing.assert_close(h, torch.cat([p[0] for p in parts]), rtol=0, atol=0)
    torch.testing.assert_close(z, torch.cat([p[1] for p in parts]), rtol=0, atol=0)
    torch.testing.assert_close(model.state_dict(), twin.state_dict(), rtol=0, atol=0)
    _, joint = copy.deepcopy(twin)(x)
    assert not torch.allclose(joint, z)  # the control: one forward of both normalises jointly
    with pytest.raises(ValueError, match="views must divide the 6 rows"):
        model(x, views=4)


# ------------------------------------------------------------------------------ fine-tuning


@pytest.mark.parametrize("head_bn", [False, True])
def test_classifier_on_a_head_layer_shares_the_network(head_bn: bool) -> None:
    from fastclr.models import Classifier, build_model, head_layers

    model = build_model("resnet18", "cifar", 0.125, 16, head_bn)
    layers = head_layers(model.head)
    assert [type(m) for m in layers[0]] == [
        nn.Linear,
        *([nn.BatchNorm1d] if head_bn else []),
        nn.ReLU,
    ]
    assert [type(m) for m in layers[1]] == [nn.Linear] and len(layers) == 2
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    for k, width in ((0, 64), (1, 64), (2, 16)):
        clf = Classifier(model, k, 5).eval()
        assert clf.feature_dim == width and clf.encoder is model.encoder
        with torch.no_grad():
            h, z = model(x)
            want = {0: h, 1: nn.Sequential(*list(model.head)[:-1])(h), 2: z}[k]
            assert torch.equal(clf.features(x), want)
            assert torch.equal(clf(x), torch.zeros(4, 5))  # fc starts at zero
    clf = Classifier(model, 1, 5)
    assert clf.head[0][0] is model.head[0]  # shared, not copied: training it trains the model
    with pytest.raises(ValueError, match=r"head_layer must be in \[0, 2\]"):
        Classifier(model, 3, 5)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        Classifier(model, 0, 1)
