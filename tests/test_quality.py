"""Short SimCLR runs must learn: pretrained features beat the same encoder's random weights.

This catches a broken loss, augmentation, optimiser, data path or default recipe end to end (each
of those leaves the encoder at or below its random initialisation). ``bench/quality.py`` is the
full, 3-seed version (and also compares with raw pixels).

* the general path: scikit-learn's digits exported as a 28-px PNG folder (``train/`` and ``val/``)
  and trained by ``python -m fastclr pretrain --data FOLDER`` with the default recipe, only the
  CPU budget set (``--epochs``, ``--image-size``, ``--width``); ~1 min on 2 cores;
* the embedded digits demo with its own recipe (15 epochs, its default); ~1 min.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fastclr.data import load_data, load_digits, plan_data
from fastclr.train import TrainConfig, pretrain
from fastclr.train.recipe import batch_for, sqrt_lr


@pytest.fixture
def quality(bench_module: Callable[[str], ModuleType]) -> ModuleType:
    """bench/quality.py: its export and scoring are what the full check uses."""
    return bench_module("quality")


# 8 epochs × 11 steps of 128, the batch the recipe picks for 1,437 images (~40 s of CPU). On
# digits this is too short for the trained features to reliably beat the random encoder's
# (measured at the former batch of 256, 40 steps, seed 0: linear 94.7% vs 95.5%, kNN 88.0% vs
# 93.6%; see bench/results/quality.md for longer runs), so this test checks
# what a broken general path would lose: the loss falls well below chance (measured 6.23 → ~5.3
# with the small preset; identical, blank or scrambled views leave it at chance) and the features
# stay a working representation (linear top-1 > 90%; chance is 10%).
FOLDER_EPOCHS = 8
LOSS_FALL = 0.3
LINEAR_FLOOR = 0.9


@pytest.mark.slow
def test_general_folder_path_learns_with_default_recipe(
    tmp_path: Path, quality: ModuleType
) -> None:
    folder = quality.export_digits_folder(tmp_path / "digits", quality.FOLDER_SIZE)
    assert sorted(p.name for p in folder.iterdir()) == ["train", "val"]
    assert len(list((folder / "val" / "3").glob("*.png"))) > 0
    run = tmp_path / "run"
    args = quality.folder_args(
        folder, run, 0, FOLDER_EPOCHS, quality.FOLDER_SIZE, quality.FOLDER_WIDTH
    )
    rc, _ = quality.pretrain_cli(args, run / "log.txt")
    log = (run / "log.txt").read_text()
    assert rc == 0, log[-2000:]
    # the recipe is printed in the run's header, each choice with its reason; the batch comes
    # from the size of the data set, the learning rate from the batch
    batch = batch_for(plan_data(str(folder)).n_train)[0]
    assert re.search(rf"batch:\s+{batch} \(\d+ images: the largest power of two", log), log[:3000]
    assert re.search(rf"lr:\s+{sqrt_lr(batch):.4g} \(square-root rule", log), log[:3000]
    assert re.search(r"augment:\s+small-grey \(28-px views.*grayscale images: no horizontal", log)
    assert re.search(r"head BN:\s+on \(the default", log)  # the general path's head
    assert re.search(r"kNN k:\s+21 \(15% of the smallest class", log)
    epochs = quality.read_csv(run / "epochs.csv")
    assert epochs[-1]["loss"] < epochs[0]["loss"] - LOSS_FALL, [e["loss"] for e in epochs]
    data = load_data(str(folder), quality.FOLDER_SIZE)
    trained, random = quality.trained_and_random(run, 0, data)
    assert trained["linear"] > LINEAR_FLOOR, (trained, random)


# 25 epochs, 10 more than the demo's default: kNN on the demo's features is noisy for the first
# ~15 epochs (see the quality curves) and at 15 it depends on the CPU's rounding. Seed 0 at 15
# epochs: kNN 95.0% on an AMD EPYC but 92.2% on an Intel Xeon (2026-12-05, the same code before
# and after the run plan landed), against 93.0% for random weights; linear 97.8% vs 95.0%. The
# monitor on the Xeon read 92.2 → 93.6 → 92.2% over epochs 12-15; the 40-epoch suite reached
# 98.05 ± 0.56% on 2026-12-01 and 96.10 ± 1.11% on the Xeon on 2026-12-06
# (bench/results/quality.md). Points over random weights, on both metrics:
EPOCHS = 25
MARGIN = 0.01


@pytest.mark.slow
def test_digits_demo_beats_random_encoder(tmp_path: Path, quality: ModuleType) -> None:
    torch.set_num_threads(1)
    data = load_digits()
    # --data digits: the demo recipe `fastclr pretrain` uses (decided by the run plan)
    cfg = TrainConfig(epochs=EPOCHS, out=str(tmp_path), progress=False, device="cpu")
    result = pretrain(cfg)
    trained, random = quality.trained_and_random(tmp_path, 0, data)
    assert result.history[0]["loss"] > result.history[-1]["loss"], "loss did not fall"
    for metric in ("linear", "knn"):
        assert trained[metric] > random[metric] + MARGIN, (metric, trained, random)
