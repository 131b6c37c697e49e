"""The fine-tuning recipe: SimCLR's semi-supervised protocol, and how it scales to small folders.

SimCLR (Chen et al. 2020, Appendix B.5) fine-tunes the whole network on 1% or 10% of ImageNet's
labels with Nesterov momentum 0.9 (fastclr: LARS on the weights, "Optimiser" below), batch
4096, learning rate 0.05 × batch / 256 (0.8), no weight decay or other regularisation, no
warm-up, random crop + horizontal flip as the only augmentation, for 60 epochs at 1% and 30
epochs at 10% (about 12,800 and 128,000 images: 188 and 939 steps of 4096). A small folder's
labelled subset is a few batches or one, so three settings need a rule; :func:`finetune_recipe`
returns each value with its reason, for the run's header.

* **Batch**: the largest power of two at most :data:`DEFAULT_BATCH` (256) that gives at least
  :data:`MIN_STEPS_PER_EPOCH` (8) full batches an epoch, at least :data:`MIN_BATCH` (16), at most
  the labelled images (pretraining's batch rule with a smaller floor): 40 labelled images get 16
  (2 steps an epoch), 130 get 16 (8), 1,295 get 128, ImageNet's 1% 256. Small batches give an
  epoch several steps, so validation after every epoch costs less per step; this choice was not
  measured against one batch of the whole subset.
* **Learning rate**: the paper's square-root scaling, ``0.0125 × √batch`` (0.05 at 16, 0.2 at 256),
  which equals its linear rule 0.05 × batch / 256 at its batch of 4096 (0.8) and which its
  Appendix B.1 recommends for small batches; the linear rule from batch 4096 on. The linear rule
  at small batches starves the network trained from scratch: measured on the 28-px digits folder
  (``bench/results/finetune-recipe.md``: one pretrained run, one seed, scored on the training
  folder's own held-out 10%, not on the suite's ``val/``), batch 16 and the paper's steps,
  4 labelled images a class: linear 0.003 gave 88.1% fine-tuned / 63.6% from scratch,
  square-root 0.05 89.5% / 81.8%, three times that 83.9% / 83.2%; 10% of the labels: 98.6% /
  94.4%, 98.6% / 97.9%, 97.2% / 96.5%. The square-root rate is the best or equal best for the
  pretrained network at both sizes and does not handicap the baseline; a larger one helps the
  baseline and hurts the pretrained network.
* **Epochs**: the paper's epochs at the labelled fraction (60 at 1%, 30 at 10%, log-linear
  between, held outside), raised to the epochs that take at least the paper's number of optimiser
  steps at that fraction (188 at 1%, 939 at 10%): 60 epochs of 40 images would be 120 steps of
  16. Same measurement: the paper's epochs alone (92 and 240 steps) gave 90.2% / 79.7% (4 a class)
  and 97.2% / 96.5% (10%), the paper's steps 89.5% / 81.8% and 98.6% / 97.9%: equal within noise
  for the pretrained network (one image is 0.7 points), better for the baseline.

* **Crop**: pretraining's preset crop, as the paper does (its fine-tuning crop is its
  pretraining crop), except for views under 32 px (the ``small`` presets), which fine-tune on
  crops of :data:`SMALL_CROP_MIN` (0.8) to all of the image instead of pretraining's 0.3 to 1;
  ``--crop-min`` sets the smallest crop area. On the 28-px digits folder's semi-supervised suite
  (``python bench/quality.py --suite semi``: 3 pretrainings, fine-tuning with the LARS rule
  below, top-1 on the 359 ``val/`` images; ``bench/results/quality-semi.md``) crops of 0.8 to 1
  gave 91.4% ± 1.3 fine-tuned at 4 labels a class and 98.7% ± 0.2 at 10%, against 88.6% ± 2.6
  and 96.6% ± 0.9 with 0.3 to 1; the same network from scratch gains more at 4 a class (90.6%
  against 82.6%), so the difference pretraining makes there falls from 5.9 to 0.7 points, and
  at 10% fine-tuning passes the linear probe (97.2%). On one pretraining at full width and
  seed 0 (``bench/results/finetune-recipe.md``, the training folder's own held-out 10%) 0.8 gave
  95.1% / 99.3% against 89.5% / 98.6%; with the paper's SGD it had cost 2.1 points at 10%. At
  32 px and more the preset's crop stays (not measured there).

* **Optimiser** (:func:`optimizer_choice`): not the paper's. Its Nesterov SGD moves every weight
  by the same rate times its gradient, and a pretrained network's layers take that very unequally:
  in one measurement (the probe below as the classifier, BatchNorm on its running statistics) one
  step at 0.0005 moved the first convolution by 0.6% of its norm, the other layers by under 0.15%,
  and took the held-out top-1 from 88.1% to 78.3%. fastclr fine-tunes with LARS, SimCLR's
  pretraining optimiser, on the conv and linear weights: each layer moves by at most
  :data:`LARS_LR` × 0.001 of its own norm a step (before momentum), whatever its gradient's size;
  the linear classifier (it starts at zero, where that ratio is undefined), biases and BatchNorm
  take plain momentum SGD at the learning rate above. Measured on the same digits folder and
  held-out images, on a quarter-width pretraining (one seed; one image is 0.7 points;
  ``bench/results/finetune-recipe.md``): 4 labels a class, LARS at 1 gave 92.3% fine-tuned / 83.2%
  from scratch against SGD's 88.1% / 81.8% (LARS at 0.3: 89.5% / 81.1%; at 3: 86.7% / 85.3%); 10%
  of the labels, 99.3% / 96.5% against 97.2% / 97.9% (at 0.3: 96.5% / 95.8%). The linear probe on
  the frozen encoder: 88.1% and 98.6%. Two more fine-tuning seeds on that pretraining (other
  labelled images) did not confirm a best rate: over the three, fine-tuned at 4 labels a class
  LARS at 1 90.0% ± 3.5, SGD 90.0% ± 1.8, LARS at 0.3 91.4% ± 2.6, at 3 89.0% ± 2.0; at 10%
  98.6% ± 1.2, 97.9% ± 0.7, 97.4% ± 1.6, 98.1% ± 0.8 (σ over seeds). LARS at 1 stays the
  default on that and on the semi-supervised suite (3 pretrainings at quarter width, the
  suite's own validation images, pretraining's crops as then): with 4 labels a class 88.6% ±
  2.6 against SGD's 84.7% ± 1.6.
  ``--optimizer sgd`` is the paper's.

The rule is the same for a pretrained start and for ``--from-scratch``: the two runs compared
differ in their initial weights only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from fastclr.decisions import Decision
from fastclr.train.recipe import DEFAULT_BATCH, MIN_STEPS_PER_EPOCH, SMALL_BELOW, rule_batch

__all__ = [
    "DEFAULT_BATCH",
    "IMAGENET_TRAIN_IMAGES",
    "LARS_LR",
    "MIN_BATCH",
    "OPTIMIZERS",
    "PAPER_BATCH",
    "SMALL_CROP_MIN",
    "FinetuneRecipe",
    "crop_scale",
    "finetune_recipe",
    "optimizer_choice",
    "paper_epochs",
    "paper_steps",
    "sqrt_lr",
]

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 training images
#: smallest fine-tuning crop area for views under SMALL_BELOW px (module docstring, "Crop")
SMALL_CROP_MIN = 0.8
PAPER_BATCH = 4096  # Appendix B.5
PAPER_LR_PER_256 = 0.05  # learning rate = 0.05 × batch / 256
#: × √batch: the square-root rule equal to the linear one at the paper's batch (0.8 at 4096)
SQRT_BASE_LR = PAPER_LR_PER_256 * PAPER_BATCH / 256 / math.sqrt(PAPER_BATCH)
#: (labelled fraction, epochs) the paper gives; other fractions interpolate in log(fraction)
PAPER_EPOCHS = ((0.01, 60), (0.10, 30))
#: Smallest batch the rule picks (BatchNorm's statistics come from the batch)
MIN_BATCH = 16
#: ``--optimizer``: LARS on the weights, SGD on the rest (the default), or the paper's SGD on all
OPTIMIZERS = ("lars", "sgd")
#: LARS's rate for the conv and linear weights: a step of at most lr × η = 0.1% of each layer's
#: norm before momentum (module docstring, "Optimiser")
LARS_LR = 1.0


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


def crop_scale(
    size: int, preset_scale: tuple[float, float], given: float | None
) -> tuple[tuple[float, float], str]:
    """The crop areas of fine-tuning (module docstring, "Crop") and the reason: ``given`` to 1;
    else :data:`SMALL_CROP_MIN` to 1 under ``SMALL_BELOW`` px; else the preset's
    ``preset_scale`` for ``size``-px views."""
    if given is not None:
        return (given, 1.0), "given (--crop-min)"
    if size < SMALL_BELOW:
        return (SMALL_CROP_MIN, 1.0), (
            f"{size}-px views < {SMALL_BELOW}: milder than the pretraining preset's "
            f"{preset_scale[0]:g} to {preset_scale[1]:g}; measured better on a 28-px folder's "
            "semi-supervised suite (fastclr.finetune.recipe); --crop-min sets the smallest area"
        )
    return preset_scale, (
        f"the {size}-px pretraining preset's (paper B.5: fine-tuning's random crop is "
        "pretraining's); --crop-min sets the smallest area"
    )


def optimizer_choice(
    name: str | None, lars_lr: float | None, momentum: float, weight_decay: float
) -> Decision:
    """The optimiser (module docstring, "Optimiser") as a plan decision: its value is
    ``{"name", "lars_lr", "momentum", "weight_decay"}`` (``lars_lr`` None for SGD).

    Raises:
        ValueError: ``lars_lr`` given with ``name`` "sgd" (SGD has no LARS rate).
    """
    chosen = name or "lars"
    if chosen == "sgd" and lars_lr is not None:
        raise ValueError(
            f"--lars-lr {lars_lr:g} is LARS's rate and --optimizer sgd does not use LARS: "
            "leave out one of them"
        )
    rate = (lars_lr if lars_lr is not None else LARS_LR) if chosen == "lars" else None
    value = {"name": chosen, "lars_lr": rate, "momentum": momentum, "weight_decay": weight_decay}
    if name == "sgd":
        paper = (momentum, weight_decay) == (0.9, 0.0)
        return Decision(value, "given (--optimizer sgd)" + ("; paper B.5" if paper else ""))
    why = "given" if name == "lars" else "the default"
    if lars_lr is None:
        why += (
            f"; LARS rate {LARS_LR:g}: SimCLR's pretraining optimiser keeps each layer's step "
            "in proportion to its weights; the paper's SGD (--optimizer sgd) did as well or "
            "worse on the digits (fastclr.finetune.recipe)"
        )
    return Decision(value, why)


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
    b = rule_batch(n_labelled, MIN_BATCH, world_size)  # pretraining's rule, a smaller floor
    why = (
        f"{n_labelled} labelled images: the largest power of two <= {DEFAULT_BATCH} giving >= "
        f"{MIN_STEPS_PER_EPOCH} steps an epoch, at least {MIN_BATCH}"
    )
    if b == n_labelled:
        why += f"; here all {n_labelled} labelled images in one step"
    return Decision(b, why)


def sqrt_lr(batch: int) -> float:
    """The square-root rule ``0.0125 × √batch`` (the paper's 0.8 at its batch 4096)."""
    return SQRT_BASE_LR * math.sqrt(batch)


def _lr(batch: int, given: float | None) -> Decision:
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {given}")
        return Decision(given, "given")
    linear = PAPER_LR_PER_256 * batch / 256
    if batch >= PAPER_BATCH:
        return Decision(linear, f"the paper's linear rule 0.05 x {batch}/256 (B.5)")
    return Decision(
        sqrt_lr(batch),
        f"square-root rule 0.0125 x sqrt({batch}) (the paper's 0.8 at its batch {PAPER_BATCH}; "
        f"App. B.1 for small batches); the linear rule's {linear:.3g} starves a network "
        "trained from scratch (fastclr.finetune.recipe)",
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
        >>> r = finetune_recipe(40, 1295)  # 4 labelled digits a class
        >>> r.batch_size.value, r.steps_per_epoch.value, r.epochs.value, round(r.lr.value, 4)
        (16, 2, 219, 0.05)
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
