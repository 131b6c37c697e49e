"""The default recipe: learning rate, warm-up, augmentation preset and kNN k for the run the user
asked for, each chosen by a stated rule and printed with its reason when the run starts.

SimCLR's published defaults (lr = 0.3 × B/256, 10 warm-up epochs) were made for ImageNet at batch
4,096 over 100 to 1,000 epochs. A CPU run of 20 epochs on a few thousand 28-px images is far from
that; each rule says which setting of the paper applies to which run. A value the user set is
kept (and printed as theirs).

* **View size** (when not given): the paper's 224 px, or the images' own size when they are
  smaller: the median shorter side of up to 100 evenly spaced training files (their headers
  only), at least :data:`MIN_AUTO_SIZE` (16) px. A folder of 28-px digits or 32-px CIFAR images
  then trains on 28- or 32-px views, as the paper's CIFAR-10 runs do, with the CIFAR stem and
  augmentation those sizes select, instead of upsampling every image 8× to 224 px, which adds
  compute and no detail: a width-1.0 ResNet-18 forward is 0.91 GFLOP per view at 28 px (CIFAR
  stem) against 3.63 at 224 px (ImageNet stem), counted with ``torch.utils.flop_counter``.
* **Batch size** (when not given): the largest power of two at most the default 256
  (:data:`DEFAULT_BATCH`) that still gives an epoch of at least
  :data:`MIN_STEPS_PER_EPOCH` (8) steps, at least :data:`MIN_AUTO_BATCH` (32). A 1,437-image
  folder at 256 is 5 steps an epoch, so 20 epochs are 100 optimiser steps, and kNN on the
  features first falls and only recovers after ~250 steps (bench/results/quality.md). The rule
  gives it 128 (11 steps an epoch). Measured on that 28-px digits folder, one seed each: batch
  128 against 256 gave linear 97.8 vs 96.8 (3-seed mean) at 20 epochs, kNN 93.9 vs 92.8 at 40;
  batch 64 was worse on the linear probe at both lengths (95.8 and 96.9), so the rule stops
  halving at 8 steps an epoch rather than 16. The learning rate then follows from the batch.
* **Learning rate** (Chen et al. 2020, *A Simple Framework for Contrastive Learning of Visual
  Representations*, Appendix B.1 and Figure B.1): linear scaling ``0.3 × B / 256`` for large
  batches and long schedules; square-root scaling ``0.075 × √B``, which the paper finds better
  with small batches and short training, otherwise. The switch, stated here: **linear when
  B ≥ 4096 and epochs ≥ 100, square-root otherwise.** 4,096 is the paper's main batch, where both
  rules give 4.8; 100 epochs is its shortest ImageNet schedule. Measured on a 28-px folder (bench/
  results/quality.md): at B = 256 over 100 steps the linear rule's 0.3 gives 89.4% linear top-1,
  the square-root rule's 1.2 gives 97.5%.
* **Warm-up**: 10% of the run's steps, at most the paper's 10 epochs (10 epochs are 10% of its
  100-epoch schedule and 1% of its 1,000-epoch one), at least one step.
* **Augmentation preset**, from the images: views smaller than CIFAR's 32 px get ``small`` (the
  CIFAR recipe with crops of at least 30% of the area: an 8% crop of a 28-px image is an 8-px
  patch blown up 3.5×); 32 to 64 px the paper's ``cifar`` recipe; larger the ``imagenet`` one.
  Grayscale data (R = G = B in every one of 32 evenly spaced training images,
  :func:`fastclr.data.select.images_are_grey`) get the same recipe without horizontal flips
  (``small-grey``, ``cifar-grey``, ``imagenet-grey``): grey collections are mostly handwriting,
  characters, documents and scans, where a mirror image is another symbol (b/d, 2/5) or another
  anatomy, while colour photographs, the paper's data, keep their flips. Measured on the 28-px
  digits folder, 3 seeds of 40 epochs (bench/results/quality.md): with flips linear 97.49 ±
  0.74%, kNN 93.96 ± 1.53%; without, 98.61 ± 0.48% and 96.66 ± 0.00%. The embedded digits keep
  their demo preset (``digits``: the same crops, no flips).
* **kNN k** (the monitor, and ``linear-eval``'s default): 15% of the smallest class's training
  images, at most Wu et al. (2018)'s 200 (:func:`fastclr.evaluate.knn_k_for`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from fastclr.augment.presets import GREY_SUFFIX
from fastclr.errors import UsageError
from fastclr.optim import BASE_LR, scaled_lr

__all__ = [
    "CIFAR_MAX_SIZE",
    "MAX_WARMUP_FRACTION",
    "batch_for",
    "linear_lr",
    "lr_for",
    "preset_for",
    "rule_batch",
    "size_for",
    "sqrt_lr",
    "stem_for",
    "warmup_for",
]

DEFAULT_IMAGE_SIZE = 224  # the paper's ImageNet views: the view size of large images
MIN_AUTO_SIZE = 16  # smaller images are upsampled to this (the digits demo's size)
DEFAULT_BATCH = 256  # the batch of a run whose data are large enough
MIN_STEPS_PER_EPOCH = 8  # fewer, and a short run takes too few optimiser steps
MIN_AUTO_BATCH = 32  # below this, too few negatives per positive pair
SQRT_BASE_LR = 0.075  # × √batch (paper, B.1)
LINEAR_MIN_BATCH = 4096  # the paper's main batch; both rules give 4.8 there
LINEAR_MIN_EPOCHS = 100  # the paper's shortest ImageNet schedule
WARMUP_FRACTION = 0.1
WARMUP_MAX_EPOCHS = 10.0  # the paper's warm-up
#: A given ``--warmup-epochs`` never takes more than this fraction of a run.
MAX_WARMUP_FRACTION = 0.1
SMALL_BELOW = 32  # CIFAR's size: smaller views get the "small" preset
#: Views up to this size get the CIFAR recipe (3×3 stem without max-pool, CIFAR augmentation);
#: larger ones the ImageNet recipe.
CIFAR_MAX_SIZE = 64


def size_for(sides: Sequence[int]) -> tuple[int, str]:
    """(view size, reason) when no size was given: :data:`DEFAULT_IMAGE_SIZE`, or the median
    of the images' shorter ``sides`` (px) when it is smaller, at least :data:`MIN_AUTO_SIZE`.

    ``sides``: the shorter side of each probed image (none: the data's size is unknown).

    Example:
        >>> size_for([28] * 100)[0], size_for([375, 480, 500])[0], size_for([8, 8])[0]
        (28, 224, 16)
    """
    if not sides:
        return DEFAULT_IMAGE_SIZE, "the default (the paper's ImageNet views)"
    side = int(statistics.median_low(sides))
    probed = f"the median shorter side of {len(sides)} probed image(s) is {side} px"
    if side >= DEFAULT_IMAGE_SIZE:
        return DEFAULT_IMAGE_SIZE, f"the default (the paper's ImageNet views; {probed})"
    size = max(MIN_AUTO_SIZE, side)
    at_least = f", raised to {MIN_AUTO_SIZE}" if size > side else ""
    return size, (
        f"the images' own size: {probed}{at_least}, under {DEFAULT_IMAGE_SIZE} "
        "(upsampling to it would add compute, not detail)"
    )


def rule_batch(n_images: int, floor: int, world_size: int = 1) -> int:
    """The batch rule's value, shared by pretraining and fine-tuning (their floors differ): the
    largest power of two at most :data:`DEFAULT_BATCH` giving at least
    :data:`MIN_STEPS_PER_EPOCH` full batches an epoch, at least ``floor``, at most
    ``n_images``, and a multiple of ``world_size`` (at least one image a rank)."""
    batch = DEFAULT_BATCH
    while batch > floor and n_images // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    batch = min(batch, n_images)
    return max(world_size, batch // world_size * world_size)


def batch_for(n_images: int, world_size: int = 1) -> tuple[int, str]:
    """(global batch, reason) for ``n_images`` training images when no batch size was given.

    The largest power of two at most :data:`DEFAULT_BATCH` with at least
    :data:`MIN_STEPS_PER_EPOCH` full batches an epoch, at least :data:`MIN_AUTO_BATCH` (and at
    least ``world_size``, a multiple of it, so that every rank gets the same share). Fewer
    images than :data:`MIN_AUTO_BATCH`: all of them in one batch (a smoke test on a handful of
    files; fine-tuning's rule does the same).

    Raises:
        UsageError: fewer than 2 images (no negatives).
    """
    if n_images < 2:
        raise UsageError(
            f"--data has {n_images} training image(s): contrastive learning needs at least 2 "
            "(each image's views are told apart from the other images' views)"
        )
    batch = rule_batch(n_images, MIN_AUTO_BATCH, world_size)
    if n_images < MIN_AUTO_BATCH:
        whole = (
            "all of them" if batch == n_images else f"{batch} (a multiple of {world_size} ranks)"
        )
        return batch, (
            f"{n_images} images, fewer than the rule's smallest batch {MIN_AUTO_BATCH}: {whole} "
            "in one step"
        )
    steps = n_images // batch
    if batch == DEFAULT_BATCH:
        return batch, f"the default; {n_images} images give {steps} steps an epoch"
    floor = " (the smallest the rule picks)" if batch == MIN_AUTO_BATCH else ""
    return batch, (
        f"{n_images} images: the largest power of two <= {DEFAULT_BATCH} giving >= "
        f"{MIN_STEPS_PER_EPOCH} steps an epoch{floor}; {steps} steps an epoch, "
        f"{n_images // DEFAULT_BATCH} at {DEFAULT_BATCH}"
    )


def linear_lr(batch: int, base_lr: float = BASE_LR) -> float:
    """The paper's linear rule, ``base_lr × batch / 256`` (``base_lr`` 0.3, ``--base-lr``)."""
    return scaled_lr(batch, base_lr)


def sqrt_lr(batch: int) -> float:
    """The paper's square-root rule, ``0.075 × √batch``."""
    return SQRT_BASE_LR * math.sqrt(batch)


def lr_for(batch: int, epochs: int, base_lr: float = BASE_LR) -> tuple[float, str]:
    """(learning rate, reason) by the rule: linear iff batch ≥ 4096 and epochs ≥ 100."""
    if batch >= LINEAR_MIN_BATCH and epochs >= LINEAR_MIN_EPOCHS:
        return linear_lr(batch, base_lr), (
            f"linear rule {base_lr:g} × {batch}/256: batch >= {LINEAR_MIN_BATCH} and "
            f"{epochs} epochs >= {LINEAR_MIN_EPOCHS}, large and long (SimCLR paper, App. B.1)"
        )
    why = f"batch {batch} < {LINEAR_MIN_BATCH}" if batch < LINEAR_MIN_BATCH else ""
    if epochs < LINEAR_MIN_EPOCHS:
        why += (" and " if why else "") + f"{epochs} epochs < {LINEAR_MIN_EPOCHS}"
    return sqrt_lr(batch), (
        f"square-root rule 0.075 × √{batch}: {why}, small or short "
        f"(SimCLR paper, App. B.1; the linear rule would give {linear_lr(batch, base_lr):.3g})"
    )


def warmup_for(steps_per_epoch: int, total_steps: int) -> tuple[int, str]:
    """(warm-up steps, reason): 10% of the run, at most 10 epochs, at least one step."""
    tenth = round(WARMUP_FRACTION * total_steps)
    cap = round(WARMUP_MAX_EPOCHS * steps_per_epoch)
    steps = max(1, min(tenth, cap))
    if cap < tenth:
        why = f"the paper's {WARMUP_MAX_EPOCHS:g} epochs, less than 10% of this run"
    else:
        why = f"10% of the run's {total_steps} steps (at most {WARMUP_MAX_EPOCHS:g} epochs)"
    return steps, f"{steps / max(steps_per_epoch, 1):.3g} epochs; {why}"


def stem_for(size: int) -> tuple[str, str]:
    """(stem, reason): the CIFAR stem for views of at most :data:`CIFAR_MAX_SIZE` px."""
    if size <= CIFAR_MAX_SIZE:
        return "cifar", f"{size}-px views <= {CIFAR_MAX_SIZE}: 3×3 stem, no max-pool (paper, B.9)"
    return "imagenet", f"{size}-px views > {CIFAR_MAX_SIZE}: 7×7 stride-2 stem + max-pool"


def preset_for(size: int, grey: bool = False) -> tuple[str, str]:
    """(augmentation preset, reason) from the size of the training views and their colour."""
    if size < SMALL_BELOW:
        patch = max(1, round(size * math.sqrt(0.08)))
        name, why = (
            "small",
            (
                f"{size}-px views < {SMALL_BELOW}: the CIFAR recipe with crops of at least 30% "
                f"of the area; an 8% crop would be a {patch}-px patch"
            ),
        )
    elif size <= CIFAR_MAX_SIZE:
        name, why = (
            "cifar",
            f"{size}-px views, {SMALL_BELOW} to {CIFAR_MAX_SIZE}: the paper's CIFAR recipe",
        )
    else:
        name, why = "imagenet", f"{size}-px views > {CIFAR_MAX_SIZE}: the paper's ImageNet recipe"
    if not grey:
        return name, why
    return name + GREY_SUFFIX, why + (
        "; grayscale images: no horizontal flips (in handwriting, characters, documents and "
        "scans a mirror image is another symbol or another anatomy), and of the colour "
        "distortion only brightness and contrast change them"
    )
