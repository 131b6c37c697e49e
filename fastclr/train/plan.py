"""The run plan: every setting a pretraining run derives, decided once, each with its reason.

:func:`plan_run` turns what the user asked for (:class:`~fastclr.train.config.TrainConfig`,
where ``None``/``"auto"`` means "by the rule") and what the data are (the data plan: the folder
listed once and split once, :mod:`fastclr.data.plan`) into an immutable :class:`RunPlan`. It runs
on rank 0 alone, and the other ranks receive its result. The run header prints the plan, the
checkpoint stores it, a resume reads it back, and the builders only read it: no rule is
evaluated twice, so no two parts of a run can disagree about a setting.

The order of the decisions and the rule of each (:mod:`fastclr.train.recipe` holds the rules):

1. the embedded digits' demo recipe, for ``--data digits``: the settings left unset become
   16-px views of a quarter-width encoder for 15 epochs at batch 128 and lr 6, no BatchNorm in
   the head, one thread (about a minute on two CPU cores);
2. view size (224 px, or the images' own size when they are smaller: the median shorter side of
   up to 100 probed files), width (1.0), epochs (100), BatchNorm in the head (on), the stem
   (cifar up to 64 px, else imagenet);
3. the loader (the in-memory one decodes the folder here, once, so that every later rule sees
   the images that could be read), its decode workers, and where the views are finished
   (``augment_in``: the stream loader's workers or the training process, :func:`_augment_in`);
4. the batch (256, halved while an epoch would have fewer than 8 steps), steps per epoch;
5. the augmentation preset (from the view size and whether the images are grayscale);
6. the learning rate (the paper's linear or square-root rule) and the warm-up (10% of the run,
   at most 10 epochs);
7. kNN k of the monitor (15% of the smallest class of its training images);
8. the precision (bf16 on CUDA, fp32 on the CPU);
9. the images per encoder forward (``--chunk-size``: the whole per-rank batch, a given chunk,
   or ``auto``, the largest whose expected memory fits, :mod:`fastclr.train.memory`); the run
   header states the contrastive batch, the chunk and the expected peak memory.

On ``--resume`` the decisions that shape the run (size, width, stem, head, batch, preset,
learning rate, warm-up, chunk, where the views are finished: the two paths draw different random
views) are the checkpoint's; the others (epochs when extended, loader, workers, precision,
threads, kNN k) are decided again, since they may change between sessions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from fastclr.cpu_info import cpu_bf16_support, cpu_has_native_bf16
from fastclr.data import ImageData
from fastclr.data.plan import DataPlan, plan_data
from fastclr.data.select import (
    check_mostly_readable,
    image_sides,
    images_are_grey,
    monitor_picks,
    resolve_loader,
    resolve_num_workers,
)
from fastclr.decisions import DecidedPlan, Decision
from fastclr.errors import UsageError
from fastclr.evaluate import knn_k_for
from fastclr.models import Architecture
from fastclr.optim import WarmupCosine
from fastclr.train.config import TrainConfig
from fastclr.train.memory import budget_bytes, format_bytes, memory_model
from fastclr.train.precision import resolve_precision
from fastclr.train.recipe import (
    MAX_WARMUP_FRACTION,
    batch_for,
    lr_for,
    preset_for,
    size_for,
    stem_for,
    warmup_for,
)
from fastclr.train.views import workers_blocked

__all__ = ["DEMO", "DecidedPlan", "Decision", "RunPlan", "plan_run"]

#: The embedded digits' demo recipe (settings left unset; see the module docstring). The
#: paper's LARS rate (0.3 × 128/256) moves the weights by ~0.005% a step, made for thousands of
#: steps; the ~165-step demo uses lr 6 so that the loss visibly falls. One intra-op thread: on
#: ops this small OpenMP barriers cost more than the work.
DEMO: dict[str, Any] = {
    "image_size": 16,
    "width": 0.25,
    "epochs": 15,
    "batch": 128,
    "lr": 6.0,
    "head_bn": False,
    "threads": 1,
}
_DEMO_WHY = "the digits demo: about a minute on a CPU"
#: The decisions a resume takes from the checkpoint (they shape the model, batches, schedule).
KEPT_ON_RESUME = (
    *("image_size", "width", "stem", "head_bn", "batch", "preset", "lr", "warmup"),
    *("total", "rebase", "chunk", "views_forward", "augment_in"),
)


@dataclass(frozen=True)
class RunPlan(DecidedPlan):
    """Every derived setting of one run (module docstring); read it, never recompute it.

    ``decisions`` holds each value with its reason, in the order they were made (the run header
    prints them in that order); the properties below are typed views of it. ``data`` is the data
    plan (listing, split, the images when decoded in memory).
    """

    decisions: dict[str, Decision]
    data: DataPlan
    world_size: int = 1
    data_identity: dict[str, Any] = field(default_factory=dict)

    image_size = property(lambda self: int(self["image_size"]))
    width = property(lambda self: float(self["width"]))
    stem = property(lambda self: str(self["stem"]))
    head_bn = property(lambda self: bool(self["head_bn"]))
    preset = property(lambda self: str(self["preset"]))

    @property
    def total_steps(self) -> int:
        """Steps of the whole run (epochs × steps, or as adapted on a changed data set)."""
        if "total" in self.decisions:
            return int(self["total"])
        return self.steps_per_epoch * self.epochs

    warmup_steps = property(lambda self: int(self["warmup"]))

    def schedule(self) -> WarmupCosine:
        """The learning-rate multiplier per step: warm-up, then cosine (continued from where it
        was when a resume changed the run's length)."""
        rebase = self.decisions.get("rebase")
        at = None if rebase is None else (int(rebase.value[0]), float(rebase.value[1]))
        return WarmupCosine(self.warmup_steps, self.total_steps, at)

    #: ``joint`` (both views in one forward) or ``separate`` (one forward a view)
    views_forward = property(lambda self: str(self["views_forward"]))
    #: where the views are finished: ``main`` or ``workers``
    augment_in = property(lambda self: str(self["augment_in"]))

    @property
    def chunk(self) -> int | None:
        """Images per encoder forward on each rank; None: the whole per-rank batch at once."""
        value = self.decisions.get("chunk")
        if value is None or int(value.value) >= self.per_rank:
            return None
        return int(value.value)

    @property
    def knn_k(self) -> int | None:
        """Neighbours of the kNN monitor; None when the data have no held-out labels."""
        value = self["knn_k"]
        return None if value is None else int(value)

    @property
    def rule_lr(self) -> float:
        """The recipe's learning rate for this batch and length: the rule's, or the digits
        demo's hand-tuned one (the plateau watcher and the NaN advice compare the lr with it)."""
        return float(self["rule_lr"])

    def architecture(self, cfg: TrainConfig) -> Architecture:
        """The model this run trains: ``cfg``'s architecture with the decided stem, width and
        head."""
        return Architecture(cfg.arch, self.stem, self.width, cfg.proj_dim, self.head_bn)


class _Planner:
    """Makes the decisions of one run in order (each method one rule; see the module doc)."""

    def __init__(
        self,
        cfg: TrainConfig,
        world_size: int,
        device: torch.device,
        saved: dict[str, Any],
        resume_at: tuple[int, int, int] | None,
    ) -> None:
        self.cfg, self.world_size, self.device, self.saved = cfg, world_size, device, saved
        self.resume_at = resume_at
        self.demo = cfg.data == "digits"
        self.d: dict[str, Decision] = {}

    def put(self, name: str, value: Any, reason: str) -> Any:
        self.d[name] = Decision(value, reason)
        return value

    def kept(self, name: str) -> bool:
        """Take decision ``name`` from the checkpoint being resumed, if it has one."""
        entry = self.saved.get(name)
        if name not in KEPT_ON_RESUME or not isinstance(entry, dict) or "value" not in entry:
            return False
        self.put(name, entry["value"], "the checkpoint's")
        return True

    def setting(self, name: str, given: Any, default: Any, why: str = "the default") -> Any:
        """A setting with a plain default: given, the checkpoint's, the demo's, the default."""
        if given is not None:
            return self.put(name, given, "given")
        if self.kept(name):
            return self[name]
        if self.demo and name in DEMO:
            return self.put(name, DEMO[name], _DEMO_WHY)
        return self.put(name, default, why)

    def __getitem__(self, name: str) -> Any:
        return self.d[name].value

    @property
    def image_size(self) -> int:
        return int(self["image_size"])

    def model(self, data: DataPlan) -> None:
        cfg = self.cfg
        if self.setting("image_size", cfg.image_size, None) is None:  # the data's size rule
            self.put("image_size", *size_for(image_sides(data)))
        self.setting("width", cfg.width, 1.0)
        saved_epochs = self.saved.get("epochs", {}).get("value")
        if cfg.epochs is None and saved_epochs is not None:
            self.put("epochs", saved_epochs, "the checkpoint's")
        else:
            self.setting("epochs", cfg.epochs, 100)
        self.setting("head_bn", cfg.head_bn, True, "the default (SimCLR's own head has it)")
        self.setting(
            "views_forward",
            cfg.views_forward,
            "joint",
            "the default: SimCLR's one forward of both views (one per view measured up to "
            "1.13x faster on the CPU in fp32, same quality)",
        )
        if cfg.stem != "auto":
            self.put("stem", cfg.stem, "given")
        elif not self.kept("stem"):
            self.put("stem", *stem_for(self.image_size))
        self.setting("threads", cfg.threads, None, "torch's choice")


def _loader(p: _Planner, data: DataPlan) -> DataPlan:
    """Decisions 3: the loader and its workers; the in-memory loader decodes a folder here."""
    cfg = p.cfg
    name, why = resolve_loader(cfg.loader, data, p.image_size, p.device)
    p.put("loader", name, why)
    workers, w_why = resolve_num_workers(cfg.num_workers, name)
    p.put("workers", workers, w_why)
    if name == "memory" and data.memory is None:
        data = data.decoded(p.image_size, workers)
    elif data.memory is None:
        check_mostly_readable(data)
    return data


def _augment_in(p: _Planner, own_augment: bool) -> None:
    """Decision 3, last part: where the views are finished. ``workers`` (crop, resize and
    augmentation in one native pass in the stream loader's workers) where it can apply
    (:func:`~fastclr.train.views.workers_blocked`), measured not slower and with less CPU per
    image; a resume keeps the checkpoint's (``main`` when the checkpoint predates the decision).
    """
    asked = p.cfg.augment_in
    blocked = workers_blocked(p.device, str(p["loader"]), own_augment, p.cfg.augment_backend)
    if p.resume_at is not None:
        if not p.kept("augment_in"):
            p.put("augment_in", "main", "the checkpoint's run predates this decision: main")
        if asked not in ("auto", p["augment_in"]):
            raise UsageError(
                f"--augment-in {asked} differs from the {p['augment_in']} the checkpoint's run "
                "trained with; an exact resume keeps it: leave --augment-in out"
            )
        if p["augment_in"] == "workers" and blocked:
            raise UsageError(
                "--augment-in workers: the checkpoint's run finished its views in the stream "
                f"loader's workers and an exact resume must too, but {blocked}"
            )
    elif asked == "workers" and blocked:
        raise UsageError(f"--augment-in workers cannot apply: {blocked}; use main or auto")
    elif asked != "auto":
        p.put("augment_in", asked, "given")
    elif blocked:
        p.put("augment_in", "main", f"auto: {blocked}")
    else:
        n = int(p["workers"])
        where = f"the loader's {n} decode worker{'s' if n != 1 else ''}" if n else "this process"
        why = f"stream loader, native augmentation, CPU: crop+resize+augment in {where}"
        p.put("augment_in", "workers", f"auto: {why} (bench/results/augment-in.md)")


def _batch(p: _Planner, data: DataPlan) -> None:
    """Decision 4: the global batch and the steps of an epoch."""
    cfg, world = p.cfg, p.world_size
    n = data.n_train
    if cfg.batch_size is not None:
        p.put("batch", cfg.batch_size, "given")
    elif not p.kept("batch"):
        if p.demo:
            p.put("batch", DEMO["batch"], _DEMO_WHY)
        else:
            p.put("batch", *batch_for(n, world))
    batch = int(p["batch"])
    if batch % world:
        raise UsageError(f"--batch-size {batch} does not split evenly over {world} ranks")
    if batch > n:
        raise UsageError(
            f"batch size {batch} is larger than the dataset ({n} training images of {data.name})"
        )
    steps = (n // world) // (batch // world)
    why = f"{n:,} training images // batch {batch}"
    if cfg.limit_steps is not None and cfg.limit_steps < steps:
        steps, why = cfg.limit_steps, f"--limit-steps (an epoch has {steps})"
    p.put("steps", steps, why)


def _check_data(p: _Planner, data: DataPlan) -> dict[str, Any]:
    """The data's identity; on a resume, refused if it changed (unless ``--data-changed ok``)."""
    now = data.identity()
    before = p.saved.get("data_identity")
    if not isinstance(before, dict) or before == now:
        return now
    what = _change(before, now)
    if p.cfg.data_changed != "ok":
        raise UsageError(
            f"--data {data.name} is not the data the checkpoint was trained on: {what}. Restore "
            "it, or pass --data-changed ok to resume on the data as they are now (the schedule "
            "is adapted to the new epoch length)"
        )
    p.put("data_change", what, "--data-changed ok: resumed on the data as they are now")
    return now


def _change(before: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two data identities, in words."""
    parts = []
    if before.get("root") != now.get("root"):
        parts.append(f"the folder moved from {before.get('root')} to {now.get('root')}")
    b, n = int(before.get("files", 0)), int(now.get("files", 0))
    if b != n:
        more = "more" if n > b else "fewer"
        parts.append(f"it holds {n:,} files, {more} than the {b:,} of the checkpoint's run")
    elif before.get("digest") != now.get("digest"):
        parts.append(f"its {n:,} files are not the same ones (their listing's digest differs)")
    return "; ".join(parts) or "its listing's digest differs"


def _preset(p: _Planner, data: DataPlan) -> None:
    """Decision 5: the augmentation preset."""
    cfg = p.cfg
    if cfg.augment_preset != "auto":
        p.put("preset", cfg.augment_preset, "given")
    elif not p.kept("preset"):
        if p.demo:
            p.put("preset", "digits", "the embedded digits' demo preset: crops >= 30%, no flips")
        else:
            p.put("preset", *preset_for(p.image_size, images_are_grey(data)))


def _schedule(p: _Planner) -> None:
    """Decision 6: the learning rate and the warm-up."""
    cfg = p.cfg
    batch, epochs, steps = int(p["batch"]), int(p["epochs"]), int(p["steps"])
    rule, rule_why = lr_for(batch, epochs, cfg.base_lr)
    if p.demo:  # the demo's hand-tuned rate is its recipe: no advice to move away from it
        p.put("rule_lr", DEMO["lr"], f"{_DEMO_WHY}; the rule would give {rule:.3g}")
    else:
        p.put("rule_lr", rule, rule_why)
    if cfg.lr is not None:
        p.put("lr", cfg.lr, f"given; the rule would give {rule:.3g}")
    elif not p.kept("lr"):
        if p.demo:
            p.put("lr", DEMO["lr"], f"{_DEMO_WHY}; the rule would give {rule:.3g}")
        else:
            p.put("lr", rule, rule_why)
    total = _total(p, steps, epochs)
    if cfg.warmup_epochs is not None:
        want = round(cfg.warmup_epochs * steps)
        cap = int(total * MAX_WARMUP_FRACTION)
        p.put(
            "warmup", min(want, cap), f"given: {cfg.warmup_epochs:g} epochs, at most 10% of the run"
        )
    elif not p.kept("warmup"):
        p.put("warmup", *warmup_for(steps, total))
    _rebase(p, total)


def _total(p: _Planner, steps: int, epochs: int) -> int:
    """Steps of the whole run: epochs × steps, unless a resume changed the epoch's length
    (``--data-changed ok``): then the steps done plus those left at the new length (and a run
    adapted so once keeps its total, extended by whole epochs if ``--epochs`` grows)."""
    saved_steps = p.saved.get("steps", {}).get("value")
    if p.resume_at is not None and saved_steps is not None and int(saved_steps) != steps:
        epoch, step, done = p.resume_at
        if step >= steps:  # the shorter epoch is over: the next one starts
            epoch, step = epoch + 1, 0
        left = (steps - step if step else 0) + (epochs - epoch - (1 if step else 0)) * steps
        why = f"the epoch's length changed from {saved_steps} to {steps} steps"
        return int(p.put("total", done + left, why))
    saved_total = p.saved.get("total", {}).get("value")
    if saved_total is not None:
        more = (epochs - int(p.saved["epochs"]["value"])) * steps
        return int(p.put("total", int(saved_total) + more, "the checkpoint's"))
    return steps * epochs


def _rebase(p: _Planner, total: int) -> None:
    """Where an adapted schedule continues the cosine from (no jump in the learning rate)."""
    adapted_now = p.d.get("total") is not None and p.d["total"].reason != "the checkpoint's"
    if not adapted_now:
        p.kept("rebase")
        return
    assert p.resume_at is not None
    done, warmup = p.resume_at[2], int(p["warmup"])
    if done <= warmup:
        return  # still warming up: the cosine starts later, over the new length
    old_total = int(p.saved["steps"]["value"]) * int(p["epochs"])
    progress = WarmupCosine(warmup, max(old_total, warmup + 1)).progress(done)
    why = f"the cosine goes on from {progress:.0%} (step {done}) over the {total - done} steps left"
    p.put("rebase", (done, progress), why)


def _knn(p: _Planner, data: DataPlan) -> None:
    """Decision 7: k of the kNN monitor (None: the data have no held-out labels)."""
    labels = _monitor_labels(data, p.image_size)
    if labels is None:
        p.put("knn_k", None, "no held-out labelled images: no kNN monitor")
    elif p.cfg.knn_k is not None:
        p.put("knn_k", p.cfg.knn_k, "given")
    else:
        p.put("knn_k", *knn_k_for(labels))


def _monitor_labels(data: DataPlan, size: int) -> torch.Tensor | None:
    """The labels of the kNN monitor's training images, or None when there is no monitor."""
    mem = data.memory
    if mem is not None:
        held = mem.heldout
        if held is None or held.labels is None or mem.train.labels is None or len(held) == 0:
            return None
        return mem.train.labels
    if data.train is None or data.heldout is None or len(data.heldout) == 0:
        return None
    pick_tr, _ = monitor_picks(len(data.train), len(data.heldout), size)
    return torch.from_numpy(data.train.labels[pick_tr])


def plan_run(
    cfg: TrainConfig,
    *,
    world_size: int = 1,
    device: torch.device | None = None,
    data: ImageData | DataPlan | None = None,
    saved: dict[str, Any] | None = None,
    resume_at: tuple[int, int, int] | None = None,
    own_augment: bool = True,
) -> RunPlan:
    """Decide every derived setting of a run (module docstring), once.

    Args:
        cfg: what was asked; validated before.
        world_size: ranks of the run (the batch is split over them).
        device: where it trains (the loader and precision depend on it; default CPU).
        data: the data instead of ``cfg.data``: in memory, or a data plan already made.
        saved: the plan stored in the checkpoint being resumed (its run-shaping decisions are
            kept, and its data identity compared with the data now).
        resume_at: the checkpoint's (epoch, step in the epoch, global step), for adapting the
            schedule when the data's size changed.
        own_augment: whether training builds the augmentation from the plan (False: the caller
            gave ``pretrain`` its own, which runs in the training process).

    Raises:
        UsageError: a batch that does not fit the data or the ranks, or data that cannot be
            used (:func:`~fastclr.data.plan.plan_data`).
    """
    device = device if device is not None else torch.device("cpu")
    p = _Planner(cfg, world_size, device, saved or {}, resume_at)
    if isinstance(data, DataPlan):
        dplan = data
    else:
        dplan = plan_data(data if data is not None else cfg.data)
    p.demo = p.demo and data is None
    identity = _check_data(p, dplan)
    p.model(dplan)
    dplan = _loader(p, dplan)
    _augment_in(p, own_augment)
    _batch(p, dplan)
    _preset(p, dplan)
    _schedule(p)
    _knn(p, dplan)
    _precision(p)
    _chunk(p)
    return RunPlan(dict(p.d), dplan, world_size, identity)


def _chunk(p: _Planner) -> None:
    """Decision 9: images per encoder forward on each rank (gradient caching below the batch)."""
    asked, per_rank = p.cfg.chunk_size, int(p["batch"]) // p.world_size
    if asked is not None and p["views_forward"] == "separate":
        raise UsageError(
            "--chunk-size forwards a chunk of both views at once: it does not combine with "
            "--views-forward separate (drop one of them)"
        )
    if asked is None:
        p.put("chunk", per_rank, "the rank's whole batch in one forward")
        return
    if p.kept("chunk"):
        return
    arch = Architecture(p.cfg.arch, str(p["stem"]), float(p["width"]), p.cfg.proj_dim, True)
    model = arch.build().to(p.device)
    mem = memory_model(model, p.image_size, str(p["precision"]), p.device, per_rank, arch.proj_dim)
    del model
    if asked == "auto":
        budget, where = budget_bytes(p.device)
        chunk = mem.largest_chunk(budget, per_rank)
        how = f"auto: the largest that fits {where}"
    else:
        chunk, how = min(int(asked), per_rank), "given"
    passes = -(-per_rank // chunk)
    p.put(
        "chunk",
        chunk,
        f"{how}; the loss sees the whole batch of {p['batch']}, the encoder {passes} "
        f"forward{'s' if passes != 1 else ''} of {chunk} per rank; expected peak "
        f"{format_bytes(mem.peak(chunk))} (one forward of the batch: "
        f"{format_bytes(mem.peak(per_rank))})",
    )


def _precision(p: _Planner) -> None:
    """Decision 8: the numeric precision."""
    asked, device = p.cfg.precision, p.device
    precision = resolve_precision(asked, device)
    if asked != "auto":
        why = "given"
    elif device.type == "cuda":
        why = "auto: bf16 autocast on CUDA (fp16 + loss scaling where bf16 is missing)"
    else:
        why = "auto: fp32 on the CPU"
        if cpu_has_native_bf16():
            flags = cpu_bf16_support().removeprefix("native bf16: ")
            why += (
                f"; it has native bf16 ({flags}): --precision bf16 made the step 2.9-3.2x "
                "faster in fastclr's CPU bench, but its demo-suite linear probe was 0.56 "
                "points lower than fp32's (more than fp32's spread), so not the default"
            )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("--precision bf16 needs a GPU with bf16 support; use fp16")
    if precision == "fp16" and device.type == "cpu":
        why += "; emulated on the CPU (no fp16 matrix units): slow, use fp32 or bf16 there"
        warnings.warn(
            "--precision fp16 on the CPU is emulated (CPUs have no fp16 matrix units) and much "
            "slower than fp32; use --precision fp32 (or bf16) on the CPU",
            RuntimeWarning,
            stacklevel=3,
        )
    p.put("precision", precision, why)
