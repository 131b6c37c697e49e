"""``fastclr finetune``: the options given on the command line → a run → what it prints.

The last line printed is the final validation top-1, ``top-1 NN.NN%``, so that scripts can read
it; the line before says where the run is and how to load its classifier.
"""

from __future__ import annotations

import time
from typing import Any

from fastclr.checkpoint import CHECKPOINT_NAME, CheckpointError, read_resumed
from fastclr.distributed import is_main
from fastclr.finetune.config import FinetuneConfig, resumed_finetune_config
from fastclr.finetune.loop import FinetuneResult, finetune
from fastclr.finetune.state import FINETUNE_KIND
from fastclr.train.header import finished_line, resuming_line

__all__ = ["finetune_config", "run_finetune", "summary_lines"]


def finetune_config(
    given: dict[str, Any],
) -> tuple[FinetuneConfig, list[str], dict[str, Any] | None]:
    """The run ``fastclr finetune`` makes from the options ``given``, the changes a resume
    makes to the saved options, and the resumed checkpoint (read once, here).

    ``--resume`` alone resumes ``--out``; ``--resume PATH`` without ``--out`` resumes into the
    checkpoint's own folder; options not given are the checkpoint's.
    """
    if given.get("resume") is None:
        return FinetuneConfig(**given), [], None
    given = dict(given)
    path, checkpoint = read_resumed(given, FinetuneConfig.out)
    if checkpoint.get("kind") != FINETUNE_KIND or not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(
            f"checkpoint {path} is not a fine-tuning run's (resume pretraining runs with "
            "fastclr pretrain --resume)"
        )
    plan = checkpoint.get("plan")
    cfg, changes = resumed_finetune_config(
        given, checkpoint["config"], str(path), plan if isinstance(plan, dict) else None
    )
    return cfg, changes, checkpoint


def summary_lines(result: FinetuneResult, seconds: float) -> list[str]:
    """What a finished command prints; the last line is ``top-1 NN.NN%``."""
    out = result.out / CHECKPOINT_NAME
    if result.already_finished:
        head = finished_line(result.out, result.epochs_done, result.global_step)
    else:
        head = (
            f"done: {result.epochs_done} epochs, {result.global_step} steps in {seconds:.1f}s "
            f"({result.images_per_s:.0f} training images/s); top-5 {result.top5:.2%} on "
            f"{result.n_val:,} validation images; checkpoint {out} "
            f"(fastclr.load_classifier({str(result.out)!r}) gives the classifier)"
        )
    return [head, f"top-1 {result.top1:.2%}"]


def run_finetune(given: dict[str, Any]) -> int:
    """``fastclr finetune`` with the options ``given`` (flag name → value); returns 0."""
    t0 = time.perf_counter()
    cfg, changes, checkpoint = finetune_config(given)
    if cfg.resume and is_main():
        print(resuming_line(cfg.resume, changes))
    result = finetune(cfg, checkpoint=checkpoint)
    if is_main():
        print("\n".join(summary_lines(result, time.perf_counter() - t0)), flush=True)
    return 0
