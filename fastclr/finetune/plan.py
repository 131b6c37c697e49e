"""The fine-tuning plan: every setting a ``fastclr finetune`` run derives, decided once, with its
reason (the same structure as pretraining's :mod:`fastclr.train.plan`).

:func:`plan_finetune` turns what was asked (:class:`~fastclr.finetune.config.FinetuneConfig`),
the pretraining run it starts from and the data (listed once and split once by
:func:`fastclr.data.plan.plan_data`, the split every fastclr command uses) into an immutable
:class:`FinetunePlan`. It runs on rank 0 alone; the header prints it, the checkpoint stores it,
a resume reads it back, and the builders only read it.

The decisions, in order:

1. the network (architecture, width, stem, head) and its input (view size, normalisation): the
   pretraining checkpoint's, whether its weights are used or not (``--from-scratch``), so that
   the two runs compared differ in their initial weights only;
2. the starting weights, and the layer of the projection head the classifier sits on;
3. validation: the folder's ``val/``, else the held-out 10% of each class; never a labelled
   image (labelled images are drawn from the training part only);
4. the labelled subset (:mod:`fastclr.finetune.subset`), or the one a file lists;
5. the loader of the labelled images and its decode workers, and how validation is read;
6. batch, steps, learning rate and epochs (:mod:`fastclr.finetune.recipe`);
7. the optimiser (LARS on the weights, or the paper's Nesterov SGD) and the fixed parts of the
   paper's protocol: the schedule, the augmentation (crop and flip of the preset pretraining's
   rule picks for these images), the classifier's start;
8. precision and threads.

On ``--resume`` the run's shape (network, input, start, head layer, batch, learning rate,
epochs unless extended, augmentation, optimiser) is the checkpoint's, and the labelled subset
is the run folder's ``labelled.txt``; the rest is decided again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from fastclr.augment.presets import preset_config
from fastclr.data.plan import DataPlan, plan_data
from fastclr.data.select import (
    decoded_bytes,
    fits_in_memory,
    images_are_grey,
    resolve_loader,
    resolve_num_workers,
)
from fastclr.data.split import FileSet
from fastclr.decisions import DecidedPlan, Decision
from fastclr.downstream.load import RunInfo
from fastclr.errors import UsageError
from fastclr.finetune.config import FinetuneConfig
from fastclr.finetune.recipe import crop_scale, finetune_recipe, optimizer_choice
from fastclr.finetune.subset import (
    LabelledSubset,
    choose_labelled,
    parse_labels,
    read_subset,
    resolve_subset,
)
from fastclr.models import Architecture, ProjectionHead, head_layers
from fastclr.train.precision import resolve_precision
from fastclr.train.recipe import preset_for

__all__ = ["KEPT_ON_RESUME", "FinetunePlan", "plan_finetune", "training_ids"]

#: The decisions a resume takes from the checkpoint (they shape the model and the schedule).
KEPT_ON_RESUME = (
    "network",
    "input",
    "init",
    "head_layer",
    "batch",
    "lr",
    "augment",
    "crop",
    "optimizer",
)


@dataclass(frozen=True)
class FinetunePlan(DecidedPlan):
    """Every derived setting of one fine-tuning run (module docstring); read, never recompute.

    ``labelled`` are the positions of the labelled images in the training part of ``data``;
    ``subset`` is the draw that chose them (None when a file named them).
    """

    decisions: dict[str, Decision]
    data: DataPlan
    labelled: tuple[int, ...]
    subset: LabelledSubset | None = None
    world_size: int = 1
    notes: tuple[str, ...] = field(default=())
    #: what a resume compares to tell whether the data changed (:meth:`DataPlan.identity`)
    data_identity: dict[str, Any] = field(default_factory=dict)

    image_size = property(lambda self: int(self["input"]["image_size"]))
    mean = property(lambda self: tuple(float(v) for v in self["input"]["mean"]))
    std = property(lambda self: tuple(float(v) for v in self["input"]["std"]))
    pretrained = property(lambda self: self["init"] == "pretrained")
    head_layer = property(lambda self: int(self["head_layer"]))
    preset = property(lambda self: str(self["augment"]))

    @property
    def crop(self) -> tuple[float, float] | None:
        """The crop areas decided (None: a run planned before the crop was a decision of its
        own, which crops as its preset does)."""
        if "crop" not in self.decisions:
            return None
        lo, hi = self["crop"]
        return float(lo), float(hi)

    #: "lars" or "sgd" (:func:`~fastclr.finetune.recipe.optimizer_choice`)
    optimizer = property(lambda self: str(self["optimizer"]["name"]))

    @property
    def lars_lr(self) -> float | None:
        """LARS's rate for the weights (None with SGD)."""
        rate = self["optimizer"]["lars_lr"]
        return None if rate is None else float(rate)

    classes = property(lambda self: list(self.data.classes))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def architecture(self) -> Architecture:
        """The SimCLR network fine-tuned (the pretraining checkpoint's)."""
        return Architecture(**self["network"])

    @property
    def stream_validation(self) -> bool:
        """Whether the validation images are decoded from their files at every evaluation."""
        return bool(self["validation"]["streamed"])


def training_ids(data: DataPlan) -> tuple[list[str], list[int]]:
    """An id and a class index per training image: paths relative to the training folder, or
    ``<name>/<index>`` for data in memory (the ids ``labelled.txt`` lists)."""
    if data.train is not None:
        files = data.train.files
        return [files.relative(i) for i in range(len(files))], data.train.labels.tolist()
    assert data.memory is not None and data.memory.train.labels is not None
    n = len(data.memory.train)
    return [f"{data.name}/{i}" for i in range(n)], data.memory.train.labels.tolist()


class _Planner:
    """Makes the decisions of one run in order (each method one rule; module docstring)."""

    def __init__(self, cfg: FinetuneConfig, world: int, device: torch.device) -> None:
        self.cfg, self.world, self.device = cfg, world, device
        self.d: dict[str, Decision] = {}

    def put(self, name: str, value: Any, reason: str) -> Any:
        self.d[name] = Decision(value, reason)
        return value

    def __getitem__(self, name: str) -> Any:
        return self.d[name].value

    def network(self, source: RunInfo) -> None:
        """Decisions 1-2 from the pretraining checkpoint."""
        cfg = self.cfg
        net = {
            "arch": source.arch,
            "stem": source.stem,
            "width": source.width,
            "proj_dim": source.proj_dim,
            "head_bn": source.head_bn,
        }
        done = "" if source.epoch is None else f", after {source.epoch} epochs of pretraining"
        self.put("source", source.path, f"the pretraining run{done}")
        self.put("network", net, "the checkpoint's")
        inp = {"image_size": source.image_size, "mean": list(source.mean), "std": list(source.std)}
        self.put("input", inp, "the checkpoint's: what its encoder was trained on")
        if cfg.from_scratch:
            self.put("init", "random", "--from-scratch: the same network from random weights")
        else:
            self.put("init", "pretrained", "the checkpoint's weights")

    def head_layer(self) -> None:
        k = self.cfg.from_head_layer
        if k == 0:
            self.put("head_layer", 0, "SimCLR fine-tunes from the encoder")
            return
        spec = self["network"]
        layers = len(head_layers(ProjectionHead(2, out_dim=2, batch_norm=spec["head_bn"])))
        if k > layers:
            raise UsageError(
                f"--from-head-layer {k} is beyond the projection head, which has {layers} "
                f"layers (0: the encoder's output, 1: the head's first layer, {layers}: all of "
                "it)"
            )
        self.put("head_layer", k, "given (SimCLRv2: the head's first layer helps at 1% labels)")


def _check_labelled_data(data: DataPlan) -> None:
    """Refuse data without classes to learn or images to validate on."""
    if len(data.classes) < 2:
        raise UsageError(
            f"fastclr finetune needs labelled images of at least two classes, and {data.name} "
            f"has {len(data.classes)} class folders (arrange it as ROOT/<class>/<image>)"
        )
    held = data.memory.heldout if data.memory is not None else data.heldout
    if held is None or len(held) == 0:
        raise UsageError(
            f"{data.name} has too few images per class to hold some out for validation "
            "(each class needs at least two), and no val/ folder"
        )


def _validation(p: _Planner, data: DataPlan, size: int) -> None:
    """Decision 3: which images validate, and whether they are decoded once or streamed."""
    held = data.memory.heldout if data.memory is not None else data.heldout
    assert held is not None
    n = len(held)
    which = "the folder's val/" if data.layout.startswith("ROOT/train + ROOT/val") else data.layout
    if data.memory is not None:
        p.put("validation", {"images": n, "streamed": False}, f"{which}; in memory")
        return
    mib = decoded_bytes(n, size) / 2**20
    streamed = not fits_in_memory(n, size)
    how = (
        f"streamed from the files at every evaluation ({mib:.0f} MiB decoded > 1 GiB)"
        if streamed
        else f"decoded once ({mib:.1f} MiB at {size} px)"
    )
    p.put("validation", {"images": n, "streamed": streamed}, f"{which}, never labelled; {how}")


def _labels(p: _Planner, data: DataPlan, kept_file: str | None) -> tuple[tuple[int, ...], Any]:
    """Decision 4: the labelled images (drawn, or read from a file list)."""
    cfg = p.cfg
    ids, labels = training_ids(data)
    listing = kept_file or cfg.subset
    try:
        if listing is not None:
            listed = read_subset(listing)
            idx = resolve_subset(listed, ids, labels, data.classes)
            per = [0] * len(data.classes)
            for i in idx:
                per[labels[i]] += 1
            what = f"{len(idx):,} of {len(ids):,} training images, {min(per)} to {max(per)} a class"
            why = "the run's labelled.txt" if kept_file else f"listed by --subset {cfg.subset}"
            p.put("labels", what, why)
            return idx, None
        assert cfg.labels is not None
        sub = choose_labelled(ids, labels, data.classes, parse_labels(cfg.labels), cfg.seed)
    except ValueError as e:
        raise UsageError(str(e)) from e
    why = f"--labels {sub.spec}, --seed {cfg.seed}: class-balanced, seeded draw (labelled.txt)"
    p.put("labels", sub.describe(), why)
    return sub.indices, sub


def _loader(p: _Planner, data: DataPlan, labelled: tuple[int, ...], size: int) -> None:
    """Decision 5: how the labelled images are read, and by how many workers."""
    cfg = p.cfg
    if data.train is None:
        p.put("loader", "memory", "the data are in memory")
    elif cfg.loader != "auto":
        p.put("loader", cfg.loader, "given")
    else:
        part = FileSet(data.train.files.select(labelled), data.train.labels[list(labelled)])
        only = replace(data, train=part, heldout=None)
        name, why = resolve_loader("auto", only, size, torch.device("cpu"))
        p.put("loader", name, why.replace("files", "labelled files", 1))
    workers, w_why = resolve_num_workers(cfg.num_workers, str(p["loader"]))
    p.put("workers", workers, w_why)


def _recipe(p: _Planner, n_labelled: int, n_train: int, saved: dict[str, Any]) -> None:
    """Decision 6: batch, steps, learning rate, epochs."""
    cfg = p.cfg
    kept = {k: saved[k]["value"] for k in ("batch", "lr", "epochs") if k in saved}
    try:
        r = finetune_recipe(
            n_labelled,
            n_train,
            cfg.batch_size if cfg.batch_size is not None else kept.get("batch"),
            cfg.epochs if cfg.epochs is not None else kept.get("epochs"),
            cfg.lr if cfg.lr is not None else kept.get("lr"),
            p.world,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    for name, d in (("batch", r.batch_size), ("steps", r.steps_per_epoch), ("lr", r.lr)):
        given = getattr(cfg, {"batch": "batch_size"}.get(name, name), None)
        resumed = name in kept and given is None
        p.put(name, d.value, "the checkpoint's" if resumed else d.reason)
    resumed = "epochs" in kept and cfg.epochs is None
    p.put("epochs", r.epochs.value, "the checkpoint's" if resumed else r.epochs.reason)
    if cfg.limit_steps is not None and cfg.limit_steps < p["steps"]:
        p.put("steps", cfg.limit_steps, f"--limit-steps (an epoch has {p['steps']})")
    if "steps" in saved and saved["steps"]["value"] != p["steps"]:
        raise UsageError(
            f"the run had {saved['steps']['value']} steps an epoch and now has {p['steps']}: "
            "its labelled images or the number of ranks changed; resume with the same data "
            "and ranks, or start a new run"
        )


def _protocol(p: _Planner, data: DataPlan, size: int) -> None:
    """Decision 7: optimiser, schedule, augmentation, classifier start (paper, B.5; the
    optimiser: :func:`~fastclr.finetune.recipe.optimizer_choice`)."""
    cfg = p.cfg
    try:
        choice = optimizer_choice(cfg.optimizer, cfg.lars_lr, cfg.momentum, cfg.weight_decay)
    except ValueError as e:
        raise UsageError(str(e)) from e
    p.put("optimizer", choice.value, choice.reason)
    p.put(
        "schedule",
        "cosine decay to 0, no warm-up",
        "paper B.5: no warm-up; SimCLR's code decays the rate by a cosine over the run",
    )
    grey = images_are_grey(data)
    name, _ = preset_for(size, grey)
    crop = preset_config(name, size)
    lo, hi = crop.scale
    flips = "with horizontal flips" if crop.flip_p > 0 else "no flips (grayscale images)"
    p.put(
        "augment",
        name,
        f"paper B.5: random crop + flip only, no colour, grey or blur: the flips of the preset "
        f"pretraining's rule picks for {size}-px views: {flips}; the crop below",
    )
    scale, why = crop_scale(size, (lo, hi), cfg.crop_min)
    p.put("crop", list(scale), why)
    p.put(
        "classifier",
        f"linear, {len(data.classes)} classes, zero-initialised",
        "SimCLR's fine-tuning code starts its logits layer at zero",
    )


def _precision(p: _Planner) -> None:
    """Decision 8: numeric precision and CPU threads."""
    asked = p.cfg.precision
    precision = resolve_precision(asked, p.device)
    why = "given" if asked != "auto" else f"auto on {p.device.type}"
    p.put("precision", precision, why)
    threads = p.cfg.threads
    p.put("threads", threads, "given" if threads is not None else "not given")


def plan_finetune(
    cfg: FinetuneConfig,
    source: RunInfo | None,
    *,
    world_size: int = 1,
    device: torch.device | None = None,
    saved: dict[str, Any] | None = None,
    labelled_file: str | None = None,
) -> FinetunePlan:
    """Decide every derived setting of a fine-tuning run (module docstring), once.

    Args:
        cfg: what was asked; validated before.
        source: the pretraining checkpoint's description (None on resume: ``saved`` has it).
        world_size: ranks of the run.
        device: where it trains (precision depends on it; default CPU).
        saved: the plan stored in the checkpoint being resumed.
        labelled_file: the resumed run's ``labelled.txt``.

    Raises:
        UsageError: data without two classes or a validation part, a subset that cannot be
            drawn or read, a batch that does not fit, a head layer beyond the head.
    """
    device = device if device is not None else torch.device("cpu")
    saved = saved or {}
    p = _Planner(cfg, world_size, device)
    if source is not None:
        p.network(source)
    for name in ("source", *KEPT_ON_RESUME[:4]):
        if name in saved:
            p.put(name, saved[name]["value"], "the checkpoint's")
    if "head_layer" not in saved:
        p.head_layer()
    data = plan_data(cfg.data)
    _check_labelled_data(data)
    size = int(p["input"]["image_size"])
    _validation(p, data, size)
    identity = data.identity()
    before = saved.get("data_identity")
    if isinstance(before, dict) and before != identity:
        raise UsageError(
            f"--data {data.name} is not the data the checkpoint was fine-tuned on (it had "
            f"{before.get('files')} files in {before.get('root')}, now {identity['files']} in "
            f"{identity['root']}, or other ones); resume on the same data, or start a new run"
        )
    labelled, subset = _labels(p, data, labelled_file)
    _loader(p, data, labelled, size)
    _recipe(p, len(labelled), data.n_train, saved)
    _protocol(p, data, size)
    for name in ("augment", "crop", "optimizer"):
        if name in saved:
            p.put(name, saved[name]["value"], "the checkpoint's")
    if saved and "crop" not in saved:  # planned before the crop was a decision: the preset's
        p.d.pop("crop", None)
    if not isinstance(p["optimizer"], dict):  # planned before it was a choice: its sentence
        sgd = optimizer_choice("sgd", None, cfg.momentum, cfg.weight_decay).value
        p.put("optimizer", sgd, "the checkpoint's (planned when SGD was the only optimiser)")
    _precision(p)
    return FinetunePlan(dict(p.d), data, labelled, subset, world_size, data_identity=identity)
