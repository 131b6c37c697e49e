"""bench/quality_semi.py's verdict and report on made-up scores (the suite itself takes an hour:
``python bench/quality.py --suite semi``), and its choice of the 1% row's labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fastclr.data import plan_data


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
    assert semi.label_settings(plan_data(str(tmp_path / "few"))) == {
        "1%": "4-per-class",
        "10%": "10%",
    }
    for c in range(2):
        for i in range(150, 500):
            Image.new("L", (4, 4), 10 * c).save(tmp_path / "few" / str(c) / f"{i}.png")
    assert semi.label_settings(plan_data(str(tmp_path / "few"))) == {"1%": "1%", "10%": "10%"}


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


def test_finetune_flags_reach_both_networks(
    tmp_path: Path, semi: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--finetune-flags`` is given to the fine-tuned AND the from-scratch run (the same recipe
    for both, or the comparison means nothing); a failed run stops the suite with its log."""
    import argparse

    p = argparse.ArgumentParser()
    semi.add_arguments(p)
    extra = p.parse_args(["--finetune-flags=--crop-min 0.8"]).finetune_flags
    seen: list[list[str]] = []

    def fake(args: list[str], out: Path) -> tuple[int, float]:
        seen.append(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / f"{out.name}.log").write_text("boom\n")
        return 1, 0.0

    monkeypatch.setattr(semi, "finetune_cli", fake)
    for scratch in (False, True):
        with pytest.raises(SystemExit, match="boom"):
            semi._finetune(Path("pre"), Path("f"), "10%", 0, tmp_path / "r", scratch, extra.split())
    assert [a[-2:] for a in seen] == [["--crop-min", "0.8"]] * 2
    assert ["--from-scratch" in a for a in seen] == [False, True]


def test_variant_table_names_the_suite(
    tmp_path: Path, bench_module: Callable[[str], ModuleType]
) -> None:
    """quality.md's variants table keeps a demo-suite variant apart from the folder suite's of
    the same name (rows recorded before the suite was named are the folder suite's)."""
    import json

    report = bench_module("quality_report")
    path = tmp_path / "variants.jsonl"
    scores = {"linear": 0.9, "knn": 0.8}
    old = {"variant": "bf16", "flags": ["--precision", "bf16"], "seed": 0, "pretrained": scores}
    path.write_text(json.dumps(old) + "\n")
    suite = {"per_seed": [{"seed": s, "pretrained": scores, "random": scores} for s in (0, 1)]}
    report.record_variant(path, "bf16", ["--precision", "bf16"], suite, "cmd", "demo")
    rows = [line for line in report.variant_lines(path) if "| bf16 |" in line]
    assert rows == [
        "| folder | bf16 | `--precision bf16` | 1 | 90.00 | 80.00 |",
        "| demo | bf16 | `--precision bf16` | 2 | 90.00 ± 0.00 | 80.00 ± 0.00 |",
    ]


def test_a_variant_names_a_suite_it_can_train(bench_module: Callable[[str], ModuleType]) -> None:
    """``--variant`` trains the folder or the demo suite; with ``--suite semi`` or ``none`` it
    would silently train the folder suite instead, so that is refused (argparse: exit 2)."""
    quality = bench_module("quality")
    assert quality._parse(["--variant", "v", "--suite", "demo"]).suite == "demo"
    for suite in ("semi", "none"):
        with pytest.raises(SystemExit) as e:
            quality._parse(["--variant", "v", "--suite", suite])
        assert e.value.code == 2


def test_a_given_folder_is_named_with_its_split(tmp_path: Path, semi: ModuleType) -> None:
    """The record names a ``--folder`` with its image counts, ``val/`` or the held-out rule."""
    from PIL import Image

    for split, n in (("train", 6), ("val", 2)):
        for c in ("a", "b", "c"):
            d = tmp_path / "f" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("L", (4, 4), i).save(d / f"{i}.png")
    text = semi.describe_folder(tmp_path / "f", plan_data(str(tmp_path / "f")))
    assert text == f"{tmp_path / 'f'} (train/ 18, val/ 6 images, 3 classes)"
    flat = tmp_path / "f" / "train"  # no val/: 10% of each class (at least one) is held out
    want = f"{flat} (train/ 15, held out 3 images, 3 classes)"
    assert semi.describe_folder(flat, plan_data(str(flat))) == want
