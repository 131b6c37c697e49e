"""The fine-tuning recipe: SimCLR's semi-supervised protocol, and how it scales to small folders.

SimCLR (Chen et al. 2020, Appendix B.5) fine-tunes the whole network on 1% or 10% of ImageNet's
labels with Nesterov momentum 0.9, batch 4096, learning rate 0.05 × batch / 256 (0.8), no weight
decay or other regularisation, no warm-up, random crop + horizontal flip as the only augmentation,
for 60 epochs at 1% and 30 epochs at 10%.

Those epochs are counted on ImageNet's labelled subsets (about 12,800 and 128,000 images: 3.1 and
31 steps of 4096 an epoch, 188 and 939 steps in all). A small folder's subset is a few batches or
one: 60 epochs of 14 images would be 60 steps. The rule used here keeps the paper's number of
optimiser steps instead: epochs = max(the paper's epochs, the epochs that make at least the
paper's steps at that fraction). :func:`finetune_recipe` returns every value with the reason it
was chosen, for the run's header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from fastclr.train.plan import Decision

__all__ = [
    "IMAGENET_TRAIN_IMAGES",
    "PAPER_BATCH",
    "FinetuneRecipe",
    "finetune_recipe",
    "paper_epochs",
    "paper_steps",
]

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training images
PAPER_BATCH = 4096  # Appendix B.5
PAPER_LR_PER_256 = 0.05  # learning rate = 0.05 × batch / 256
PAPER_MOMENTUM = 0.9  # Nesterov
#: (labelled fraction, epochs) the paper gives; other fractions interpolate in log(fraction)
PAPER_EPOCHS = ((0.01, 60), (0.10, 30))
#: Largest default batch: the paper's lr rule then gives its base rate 0.05 (B = 256), and a
#: CPU or a single GPU holds it at the view sizes fastclr trains
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class FinetuneRecipe:
    """The size-dependent fine-tuning settings, each with its reason (module docstring)."""

    batch_size: Decision
    steps_per_epoch: Decision
    lr: Decision
    epochs: Decision

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return int(self.epochs.value) * int(self.steps_per_epoch.value)

    def rows(self) -> list[tuple[str, str, str]]:
        """(name, value, reason) for each setting, in order."""
        choices = [(f.name, getattr(self, f.name)) for f in fields(self)]
        return [(name, _show(c.value), c.reason) for name, c in choices]


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def paper_epochs(fraction: float) -> float:
    """The paper's epochs at a labelled fraction: 60 at 1%, 30 at 10%, log-linear between,
    held at those values outside [1%, 10%] (the paper gives no other)."""
    (f1, e1), (f2, e2) = PAPER_EPOCHS
    if fraction <= f1:
        return float(e1)
    if fraction >= f2:
        return float(e2)
    t = math.log(fraction / f1) / math.log(f2 / f1)
    return e1 + t * (e2 - e1)


def paper_steps(fraction: float) -> int:
    """Optimiser steps the paper's schedule takes on ImageNet at ``fraction`` (at most 10%):
    epochs × labelled images / 4096, rounded up (188 at 1%, 939 at 10%)."""
    f = min(fraction, PAPER_EPOCHS[-1][0])
    return math.ceil(paper_epochs(f) * f * IMAGENET_TRAIN_IMAGES / PAPER_BATCH)


def _check(n_labelled: int, n_train: int, batch_size: int | None, epochs: int | None) -> None:
    if n_labelled < 1 or n_train < n_labelled:
        raise ValueError(
            f"need 1 <= labelled images <= training images, got {n_labelled} of {n_train}"
        )
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")


def _batch(n_labelled: int, given: int | None, world_size: int) -> Decision:
    if given is not None:
        if given > n_labelled:
            raise ValueError(
                f"--batch-size {given} is larger than the {n_labelled} labelled images"
            )
        if given % world_size:
            raise ValueError(f"--batch-size {given} does not split evenly over {world_size} ranks")
        return Decision(given, "given")
    b = min(DEFAULT_BATCH, n_labelled)
    b = max(world_size, b // world_size * world_size)
    why = (
        f"the paper's {PAPER_BATCH} exceeds small subsets; at most {DEFAULT_BATCH} (the lr "
        "rule's base batch)"
    )
    if b == n_labelled:
        why += f", here all {n_labelled} labelled images in one step"
    return Decision(b, why)


def _lr(batch: int, given: float | None) -> Decision:
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {given}")
        return Decision(given, "given")
    return Decision(
        PAPER_LR_PER_256 * batch / 256,
        f"0.05 x batch / 256 (paper B.5; 0.8 at its batch {PAPER_BATCH})",
    )


def _epochs(fraction: float, steps_per_epoch: int, given: int | None) -> Decision:
    if given is not None:
        return Decision(given, "given")
    base = math.ceil(paper_epochs(fraction))
    need = paper_steps(fraction)
    epochs = max(base, math.ceil(need / steps_per_epoch))
    paper = f"the paper's {base} epochs at {fraction:.3g} of the labels (60 at 1%, 30 at 10%)"
    if epochs == base:
        return Decision(epochs, paper)
    return Decision(
        epochs,
        f"{paper} make {base * steps_per_epoch} steps here ({steps_per_epoch} an epoch); "
        f"raised to the {need} steps the paper's schedule takes on ImageNet at this fraction",
    )


def finetune_recipe(
    n_labelled: int,
    n_train: int,
    batch_size: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    world_size: int = 1,
) -> FinetuneRecipe:
    """The fine-tuning settings for ``n_labelled`` labelled of ``n_train`` training images.

    Args:
        n_labelled: images in the labelled subset
            (:func:`~fastclr.finetune.subset.choose_labelled`).
        n_train: training images the subset was drawn from (the fraction is their ratio).
        batch_size, epochs, lr: given values win over the rule (reason "given").
        world_size: ranks the global batch is split over (it must divide evenly).

    Returns:
        :class:`FinetuneRecipe`; ``rows()`` gives (name, value, reason) for the header.

    Raises:
        ValueError: sizes out of range, a batch larger than the subset or not divisible by the
            ranks, values < 1 or lr <= 0.

    Example:
        >>> r = finetune_recipe(14, 1438)  # 1% of the digits
        >>> r.batch_size.value, r.epochs.value, round(r.lr.value, 5)
        (14, 188, 0.00273)
    """
    _check(n_labelled, n_train, batch_size, epochs)
    batch = _batch(n_labelled, batch_size, world_size)
    b = int(batch.value)
    steps = (n_labelled // world_size) // (b // world_size)
    per = f" over {world_size} ranks" if world_size > 1 else ""
    return FinetuneRecipe(
        batch_size=batch,
        steps_per_epoch=Decision(
            steps, f"{n_labelled} labelled images // batch {b}{per} (full batches)"
        ),
        lr=_lr(b, lr),
        epochs=_epochs(n_labelled / n_train, steps, epochs),
    )
