"""fastclr.load_encoder / load_simclr and the encoder's preprocessing.

Checkpoints: a real (interrupted) ``pretrain`` run of a tiny model, and untrained models of every
architecture and stem written in the checkpoint format (``write_checkpoint`` in conftest).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fastclr
from fastclr.augment import AugmentConfig, SimCLRAugmentation
from fastclr.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from fastclr.data import ImageData, TensorImageDataset, load_digits
from fastclr.downstream import Preprocess, PretrainedEncoder
from fastclr.features import extract_features
from fastclr.models import build_model
from fastclr.train import TrainConfig, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

#: (arch, stem, width, head_bn): every architecture and stem fastclr trains, at tiny widths
NETWORKS = [
    ("resnet18", "cifar", 0.125, False),
    ("resnet34", "imagenet", 0.125, False),
    ("resnet50", "cifar", 0.0625, True),
    ("resnet50", "imagenet", 0.125, False),
]


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, tiny_run: Callable[..., TrainConfig]
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real ``pretrain`` run stopped after its first of two epochs (a mid-run checkpoint) and
    the model weights it trained."""
    out = tmp_path_factory.mktemp("run")
    d = load_digits()
    assert d.train.labels is not None
    data = ImageData(
        "digits[:64]", TensorImageDataset(d.train.images[:64], d.train.labels[:64]), None, d.classes
    )
    cfg = tiny_run(out, batch_size=32, stop_after_epochs=1, limit_steps=1)
    augment = SimCLRAugmentation(AugmentConfig.cifar(size=8), backend="torch", seed=0)
    result = pretrain(cfg, augment=augment, data=data)
    return out, {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_loads_a_mid_run_checkpoint_of_a_real_run(
    run: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    out, trained = run
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 1 and ckpt["config"]["epochs"] == 2  # the run is not finished
    for source in (out, out / CHECKPOINT_NAME, str(out)):
        enc = fastclr.load_encoder(source)
        assert isinstance(enc, PretrainedEncoder) and not enc.training
        assert (enc.arch, enc.stem, enc.width, enc.image_size) == ("resnet18", "cifar", 0.125, 8)
        assert enc.mean == tuple(ckpt["mean"]) and enc.std == tuple(ckpt["std"])
        assert enc.info.epoch == 1 and enc.info.global_step == 1
        for k, v in enc.state_dict().items():
            assert torch.equal(v, trained[f"encoder.{k}"]), k
    model = fastclr.load_simclr(out)
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert not model.training and not model.head.training


@pytest.mark.parametrize(("arch", "stem", "width", "head_bn"), NETWORKS)
def test_every_architecture_gives_the_saved_models_features(
    tmp_path: Path,
    write_checkpoint: Callable[..., Path],
    arch: str,
    stem: str,
    width: float,
    head_bn: bool,
) -> None:
    path = write_checkpoint(tmp_path / "c.pt", arch, stem, width, head_bn=head_bn, seed=3)
    saved = build_model(arch, stem, width, 16, head_bn)  # type: ignore[arg-type]
    saved.load_state_dict(load_checkpoint(path)["model"])
    saved.eval()
    x = torch.randn(3, 3, 16, 16)
    model = fastclr.load_simclr(path, map_location="cpu")
    enc = fastclr.load_encoder(path, map_location=torch.device("cpu"))
    with torch.no_grad():
        h_ref, z_ref = saved(x)
        h, z = model(x)
        assert enc.feature_dim == saved.feature_dim == h.shape[1]
        assert torch.equal(enc(x), h_ref) and torch.equal(h, h_ref) and torch.equal(z, z_ref)
        # positive control: a model with other weights gives other features
        other = build_model(arch, stem, width, 16, head_bn).eval()  # type: ignore[arg-type]
        assert not torch.allclose(other(x)[0], h_ref)


def test_features_are_linear_evals_features(
    tmp_path: Path, write_checkpoint: Callable[..., Path]
) -> None:
    """``enc(enc.preprocess(images))`` is exactly what linear-eval extracts from the same images."""
    path = write_checkpoint(tmp_path / "c.pt", image_size=12)
    enc = fastclr.load_encoder(path)
    d = load_digits()
    part = TensorImageDataset(d.train.images[:20], d.train.labels[:20])  # (N, 32, 32, 3) uint8
    expected = extract_features(enc, part, enc.mean, enc.std, enc.image_size, torch.device("cpu"))
    with torch.no_grad():
        got = enc(enc.preprocess(part.images.permute(0, 3, 1, 2)))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the wrong normalisation would be caught
    wrong = Preprocess((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 12)
    with torch.no_grad():
        assert not torch.allclose(enc(wrong(part.images.permute(0, 3, 1, 2))), expected, atol=1e-3)


# ------------------------------------------------------------------------------ bad files


def _flip_a_weight(path: Path) -> None:
    """Change one weight without updating the digest (what a flipped byte does)."""
    state = torch.load(path, weights_only=True)
    state["model"]["encoder.conv1.weight"][0, 0, 0, 0] += 1.0
    torch.save(state, path)


def _bad_files(tmp: Path, write_checkpoint: Callable[..., Path]) -> list[tuple[Path, str]]:
    text = tmp / "notes.txt"
    text.write_text("hello\n")
    png = tmp / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    plain = tmp / "resnet.pt"
    torch.save(build_model("resnet18", "cifar", 0.125).state_dict(), plain)
    flipped = write_checkpoint(tmp / "flipped.pt")
    _flip_a_weight(flipped)
    from fastclr.checkpoint import CHECKPOINT_FORMAT, save_checkpoint_atomic

    no_spec = tmp / "nospec.pt"
    save_checkpoint_atomic({"format": CHECKPOINT_FORMAT, "model": {}}, no_spec)
    other = tmp / "other.pt"
    state = torch.load(write_checkpoint(tmp / "base.pt"), weights_only=True)
    state["model_spec"]["arch"] = "vit_b16"
    save_checkpoint_atomic(state, other)
    empty_run = tmp / "emptyrun"
    empty_run.mkdir()
    return [
        (tmp / "missing.pt", "does not exist"),
        (empty_run, "does not exist"),
        (text, "it is a text file, not a PyTorch file"),
        (png, "it is a PNG image"),
        (plain, "is not a fastclr SimCLR checkpoint"),
        (flipped, "do not match the sha256 digest"),
        (no_spec, "lacks model_spec, image_size, mean, std"),
        (other, "holds a 'vit_b16' encoder"),
    ]


def test_anything_but_a_fastclr_checkpoint_is_one_clear_error(
    tmp_path: Path, write_checkpoint: Callable[..., Path]
) -> None:
    for path, expected in _bad_files(tmp_path, write_checkpoint):
        for load in (fastclr.load_encoder, fastclr.load_simclr):
            with pytest.raises(CheckpointError) as err:
                load(path)
            message = str(err.value)
            assert expected.lower() in message.lower(), message
            assert path.name in message and "\n" not in message


def test_weights_that_do_not_fit_the_recorded_network(
    tmp_path: Path, write_checkpoint: Callable[..., Path]
) -> None:
    from fastclr.checkpoint import save_checkpoint_atomic

    state = torch.load(write_checkpoint(tmp_path / "base.pt"), weights_only=True)
    state["model_spec"]["width"] = 0.25  # the weights are for width 0.125
    save_checkpoint_atomic(state, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt.*size mismatch"):
        fastclr.load_encoder(tmp_path / "mismatch.pt")


def test_an_unusable_map_location_is_named(
    tmp_path: Path, write_checkpoint: Callable[..., Path]
) -> None:
    path = write_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"map_location must be cpu, cuda or cuda:N, got 'gpu'"):
        fastclr.load_encoder(path, map_location="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"map_location cuda: .*use map_location cpu"):
            fastclr.load_simclr(path, map_location="cuda")


# ------------------------------------------------------------------------------ preprocess

PREP = Preprocess((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 8)


def _manual(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PREP.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREP.std).view(1, 3, 1, 1)
    return (x01 - mean) / std


def test_preprocess_normalises_uint8_and_unit_floats_alike() -> None:
    u8 = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    expected = _manual(u8.float() / 255)
    out = PREP(u8)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(PREP(u8.double() / 255), expected)
    torch.testing.assert_close(PREP(u8[0]), expected[:1])  # one (C, H, W) image
    grey = u8[:, :1]
    torch.testing.assert_close(PREP(grey), _manual(grey.expand(-1, 3, -1, -1).float() / 255))
    torch.testing.assert_close(PREP([u8[0], u8[1].float() / 255]), expected[:2])


def test_preprocess_resizes_the_shorter_side_and_crops_the_centre() -> None:
    x = torch.rand(2, 3, 16, 24)  # H 16 → 8, W 24 → 12, centre columns 2..10
    out = PREP(x)
    assert out.shape == (2, 3, 8, 8)
    small = torch.nn.functional.interpolate(
        x, size=(8, 12), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(out, _manual(small[..., 2:10]))


def test_preprocess_of_a_pil_image_is_the_loaders_decode(tmp_path: Path) -> None:
    from PIL import Image

    from fastclr.data.decode import decode_resized_square

    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (30, 45, 3), dtype=torch.uint8, generator=rng).numpy()
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")  # mode L: repeated to RGB
    for name in ("rgb.png", "grey.png"):
        square, _ = decode_resized_square(tmp_path / name, 8)
        expected = _manual(torch.from_numpy(square.copy()).permute(2, 0, 1)[None].float() / 255)
        with Image.open(tmp_path / name) as im:
            torch.testing.assert_close(PREP(im), expected)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), r"shape \(2, 8, 8, 3\).*permute"),
        (torch.zeros(8, 8), r"shape \(8, 8\)"),
        (torch.full((1, 3, 8, 8), 255.0), r"\[0, 1\].*divide by 255"),
        (torch.full((1, 3, 8, 8), -0.5), r"\[0, 1\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.int32), "got torch.int32"),
        ([], "empty list"),
    ],
)
def test_preprocess_refuses_what_it_would_get_wrong(images: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PREP(images)


def test_preprocess_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="got ndarray"):
        PREP(torch.zeros(3, 8, 8).numpy())
