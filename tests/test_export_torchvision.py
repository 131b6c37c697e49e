"""``fastclr export --format torchvision`` against torchvision itself (``make test-peers``).

The exported weights are loaded into ``torchvision.models.resnet18/34/50(weights=None)``: every
backbone key matches, only the classifier ``fc`` is missing, and with ``fc = Identity`` the
torchvision model gives the features of :func:`fastclr.load_encoder` on the same input.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import fastclr
from fastclr.cli import main

pytestmark = [pytest.mark.peers, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_loads_the_export_and_gives_the_same_features(
    tmp_path: Path, write_checkpoint: Callable[..., Path], capsys: Any, arch: str
) -> None:
    models = pytest.importorskip("torchvision.models")
    run = tmp_path / "run"
    write_checkpoint(run / "checkpoint.pt", arch, "imagenet", 1.0, image_size=64, seed=5)
    out = tmp_path / f"{arch}.pt"
    argv = ["export", "--checkpoint", str(run), "--format", "torchvision", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "absent:  fc.weight, fc.bias" in printed

    tv = getattr(models, arch)(weights=None)
    state = torch.load(out, weights_only=True)
    missing, unexpected = tv.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    assert f"matched: all {len(tv.state_dict()) - 2} backbone keys" in printed
    tv.fc = torch.nn.Identity()
    tv.load_state_dict(state)  # strict: every key of torchvision's backbone is in the file
    tv.eval()

    enc = fastclr.load_encoder(run)
    images = torch.randint(0, 256, (3, 3, 80, 64), dtype=torch.uint8)
    x = enc.preprocess(images)
    with torch.no_grad():
        ours, theirs = enc(x), tv(x)
        assert ours.shape == (3, enc.feature_dim)
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
        # positive control: torchvision's own random initialisation gives other features
        fresh = getattr(models, arch)(weights=None)
        fresh.fc = torch.nn.Identity()
        assert not torch.allclose(fresh.eval()(x), ours, rtol=1e-2, atol=1e-3)
