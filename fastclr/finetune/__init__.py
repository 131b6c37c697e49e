"""Semi-supervised fine-tuning (SimCLR Appendix B.5): the building blocks that do not train.

* :mod:`~fastclr.finetune.subset`: ``--labels``, the class-balanced seeded labelled subset and
  its file list in the run folder;
* :mod:`~fastclr.finetune.recipe`: the paper's fine-tuning settings, scaled for small folders,
  each with its reason.
"""

from fastclr.finetune.recipe import FinetuneRecipe, finetune_recipe
from fastclr.finetune.subset import (
    SUBSET_FILE,
    LabelledSubset,
    LabelSpec,
    choose_labelled,
    parse_labels,
    read_subset,
    resolve_subset,
    write_subset,
)

__all__ = [
    "SUBSET_FILE",
    "FinetuneRecipe",
    "LabelSpec",
    "LabelledSubset",
    "choose_labelled",
    "finetune_recipe",
    "parse_labels",
    "read_subset",
    "resolve_subset",
    "write_subset",
]
