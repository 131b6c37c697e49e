"""bench/finetune_recipe.py's report on made-up records: one table per pretraining (records
written before they named theirs go to the first), the two starts side by side, the linear
probe of the same labels in its own column, the rule's steps without a --batch-size, and the
optimiser of each row (records written before they named theirs ran the paper's SGD), a row
for each fine-tuning seed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture
def recipe(bench_module: Callable[[str], ModuleType]) -> ModuleType:
    return bench_module("finetune_recipe")


def _rec(
    cand: str, init: str, top1: float, flags: str, pre: str | None = None, seed: int = 0
) -> dict[str, Any]:
    cmd = f"python -m fastclr finetune --labels 4-per-class --seed {seed} {flags}".strip()
    rec: dict[str, Any] = {"labels": "4-per-class", "candidate": cand, "init": init}
    rec.update({"seed": seed, "command": cmd, "top1": top1, "epochs": 219, "seconds": 1.0})
    if pre is not None:
        rec["pretraining"] = pre
    return rec


def test_report_groups_by_pretraining_with_the_probe_beside(
    recipe: ModuleType, tmp_path: Path
) -> None:
    wide = "resnet18 width 1, cifar stem, 28 px, 40 epochs"
    records = [
        _rec("b16-sqrt", "pretrained", 0.8951, "--batch-size 16 --lr 0.05"),  # no pretraining
        _rec("b16-sqrt", "scratch", 0.8182, "--batch-size 16 --lr 0.05 --from-scratch"),
        _rec("rule", "pretrained", 0.8531, "", wide),
        _rec("rule", "scratch", 0.8112, "--from-scratch", wide),
        {**_rec("linear-probe", "probe", 0.9231, "", wide), "command": "linear_probe(...)"},
        # another crop: a row of its own, its crop named
        {**_rec("crop-0.8", "pretrained", 0.8811, "--crop-min 0.8", wide), "crop": "0.8-1"},
        # the rule again, with the optimiser it has now: a row of its own
        {**_rec("rule", "pretrained", 0.9231, "", wide), "crop": "0.3-1", "optimizer": "lars 1"},
        # another fine-tuning seed: rows of its own, beside its own probe
        _rec("rule", "pretrained", 0.8741, "", wide, seed=1),
        {**_rec("linear-probe", "probe", 0.9021, "", wide, seed=1), "command": "linear_probe(.)"},
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = recipe.report(path)
    first, second = text.split("## Pretrained: ")[1:]
    assert first.startswith(recipe.FIRST_PRETRAINING)
    assert (
        "| 4-per-class | 0 | b16-sqrt | sgd | 0.3-1 | `--batch-size 16 --lr 0.05` | 438 | 89.51 "
        "| 81.82 | +7.69 | - |" in first
    )
    assert second.startswith(wide)
    # the rule's batch is 16 for 40 labelled images: 219 epochs of 2 steps
    # records without a crop ran the preset's (0.3 to 1 at 28 px)
    rule = "| 4-per-class | 0 | rule | sgd | 0.3-1 | (none) | 438 | 85.31 | 81.12 | +4.19 | 92.31 |"
    assert rule in second
    mild = "| 4-per-class | 0 | crop-0.8 | sgd | 0.8-1 | `--crop-min 0.8` | 438 | 88.11 | - | - "
    assert mild + "| 92.31 |" in second
    lars = "| 4-per-class | 0 | rule | lars 1 | 0.3-1 | (none) | 438 | 92.31 | - | - | 92.31 |"
    assert lars in second
    seed1 = "| 4-per-class | 1 | rule | sgd | 0.3-1 | (none) | 438 | 87.41 | - | - | 90.21 |"
    assert seed1 in second and rule in second  # the second seed did not replace the first
    assert "linear-probe" not in text  # the probe is a column, not a row
