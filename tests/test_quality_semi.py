"""bench/quality_semi.py's verdict and report on made-up scores (the suite itself takes an hour:
``python bench/quality.py --suite semi``), and its choice of the 1% row's labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture
def semi(bench_module: Callable[[str], ModuleType]) -> ModuleType:
    """bench/quality_semi.py, the suite whose verdict and report these tests check."""
    return bench_module("quality_semi")


def _seed(seed: int, one: tuple[float, float, float], ten: tuple[float, float, float]) -> Any:
    def row(scores: tuple[float, float, float], labels: str) -> dict[str, Any]:
        run = {"images_per_s": 100.0, "seconds": 10.0, "steps": 50}
        ft, sc, lin = scores
        return {
            "labels": labels,
            "finetuned": {**run, "top1": ft},
            "scratch": {**run, "top1": sc},
            "linear": {"top1": lin},
        }

    return {
        "seed": seed,
        "pretrain": {"images_per_s": 300.0, "seconds": 100.0},
        "1%": row(one, "4-per-class"),
        "10%": row(ten, "10%"),
    }


ROWS = {"1%": "4-per-class", "10%": "10%"}


def test_verdict_passes_and_fails_on_the_targets(semi: ModuleType) -> None:
    good = [_seed(s, (0.80, 0.60, 0.85), (0.95, 0.90, 0.94)) for s in range(3)]
    v = semi.verdict(good, ROWS)
    assert [c["ok"] for c in v["checks"].values()] == [True, True]
    assert v["summary"]["1%"]["finetuned"] == pytest.approx((80.0, 0.0))
    # 1%: 8 points better is not 10; 10%: below the probe
    bad = [_seed(s, (0.68 + 0.01 * s, 0.60, 0.7), (0.90, 0.85, 0.92)) for s in range(3)]
    v = semi.verdict(bad, ROWS)
    (one, ten) = v["checks"].values()
    assert not one["ok"] and one["measured"] == pytest.approx(9.0)
    assert not ten["ok"] and ten["measured"] == pytest.approx(-2.0)
    record = {
        "command": "python bench/quality.py --suite semi",
        "pretrain_command": "fastclr pretrain --data FOLDER",
        "date": "today",
        "machine": "here",
        "data": "digits",
        "total_seconds": 60.0,
        "rows": ROWS,
        "per_seed": bad,
        "verdict": v,
    }
    text = semi.markdown(record)
    assert "| 1% (`--labels 4-per-class`) | mean ± σ | **69.00 ± 1.00** |" in text
    assert "FAIL (missed by 1.00 points)" in text and "FAIL (missed by 2.00 points)" in text
    assert "| pretraining | 300 |" in text


def test_the_1pct_row_keeps_4_images_a_class(tmp_path: Path, semi: ModuleType) -> None:
    from PIL import Image

    for c in range(2):
        for i in range(150):  # 135 training images a class after the 10% held out
            d = tmp_path / "few" / str(c)
            d.mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4), 10 * c).save(d / f"{i}.png")
    assert semi.label_settings(tmp_path / "few") == {"1%": "4-per-class", "10%": "10%"}
    for c in range(2):
        for i in range(150, 500):
            Image.new("L", (4, 4), 10 * c).save(tmp_path / "few" / str(c) / f"{i}.png")
    assert semi.label_settings(tmp_path / "few") == {"1%": "1%", "10%": "10%"}


def test_a_given_folder_is_pretrained_at_the_size_the_plan_picks(
    semi: ModuleType, bench_module: Callable[[str], ModuleType]
) -> None:
    """On ``--folder`` the suite passes no ``--image-size`` (the plan's rule reads the images: a
    96-px folder is not shrunk to the digits' 28 px); on the digits it keeps the recorded 28."""
    import argparse

    quality = bench_module("quality")
    p = argparse.ArgumentParser()
    semi.add_arguments(p)
    assert p.parse_args([]).image_size is None
    plain = quality.folder_args(Path("f"), Path("o"), 0, 40, None, 0.25)
    assert "--image-size" not in plain and plain[plain.index("--width") + 1] == "0.25"
    sized = quality.folder_args(Path("f"), Path("o"), 0, 40, 28, 0.25)
    assert sized[sized.index("--image-size") + 1] == "28"
