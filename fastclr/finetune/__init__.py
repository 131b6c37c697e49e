"""Semi-supervised fine-tuning (SimCLR Appendix B.5): ``fastclr finetune`` and its parts.

``finetune(FinetuneConfig(checkpoint=RUN, data=FOLDER, labels="1%"))`` fine-tunes a pretraining
run's network on a class-balanced labelled subset (``from_scratch=True``: the same network from
random weights, the baseline). One module per job:

* :mod:`~fastclr.finetune.config`: :class:`FinetuneConfig`, the options (the CLI is made from it);
* :mod:`~fastclr.finetune.subset`: ``--labels``, the class-balanced seeded labelled subset and
  its file list (``labelled.txt``) in the run folder;
* :mod:`~fastclr.finetune.recipe`: the paper's settings and the small-folder rule;
* :mod:`~fastclr.finetune.plan`: :func:`plan_finetune`, every derived setting decided once with
  its reason (the header prints it, the checkpoint stores it, resume reads it);
* :mod:`~fastclr.finetune.data`: the labelled batches (in memory or streamed) and validation;
* :mod:`~fastclr.finetune.state`: network, optimiser, and the checkpoint (``kind: finetune``);
* :mod:`~fastclr.finetune.validate`: top-1 / top-5 over the ranks;
* :mod:`~fastclr.finetune.loop`: ``finetune`` → ``fit`` → ``train_epoch`` → ``training_step``;
* :mod:`~fastclr.finetune.command`: what the command prints (last line ``top-1 NN.NN%``).

The classifier a run leaves is loaded by :func:`fastclr.load_classifier`.
"""

from fastclr.finetune.config import FinetuneConfig
from fastclr.finetune.loop import FinetuneResult, finetune
from fastclr.finetune.plan import FinetunePlan, plan_finetune
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
    "FinetuneConfig",
    "FinetunePlan",
    "FinetuneRecipe",
    "FinetuneResult",
    "LabelSpec",
    "LabelledSubset",
    "choose_labelled",
    "finetune",
    "finetune_recipe",
    "parse_labels",
    "plan_finetune",
    "read_subset",
    "resolve_subset",
    "write_subset",
]
