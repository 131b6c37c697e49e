"""Evaluation of a pretrained encoder on frozen features: linear probe and kNN.

* kNN (Wu et al. 2018, the monitor most SimCLR code uses): cosine similarity of L2-normalised
  features, the k nearest training features vote with weights ``exp(sim / τ)``, τ = 0.1; top-1
  accuracy on the held-out split. k defaults to :func:`knn_k_for`: Wu et al.'s 200 is about 16%
  of an ImageNet class's 1,300 training images, so k is 15% of the smallest class's training
  images, at most 200 (on 1,438 digits, ~143 a class, k = 200 would fill every vote with more
  than a whole class; there kNN on the same features rose from 77% at k = 200 to 90% at k = 20).
* linear probe: multinomial logistic regression on standardised frozen features, fitted with
  full-batch L-BFGS in torch (fp64 parameters and arithmetic, small L2 penalty); top-1 on the
  held-out split.

Inputs are the clean images (no augmentation): uint8 → [0, 1] → the pretraining normalisation,
channels_last, resized to the model's image size where needed (:mod:`fastclr.features`: decoded
in memory, or streamed from the files of a folder too large for that, with the same numbers).
:func:`evaluate_checkpoint` shows its progress (feature extraction per batch, the probe's L-BFGS
evaluations) on stderr, and says what it needs when the data cannot be evaluated (labels: at
least two class subfolders).

Memory at scale: the (N, F) fp32 features, the kNN's normalised copy and one similarity block of
at most :data:`KNN_BLOCK_BYTES`; the probe works on float64 blocks of rows of at most
:data:`~fastclr.downstream.probe.PROBE_BLOCK_BYTES` and never upcasts the whole feature
matrix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastclr import options
from fastclr.checkpoint import CheckpointError
from fastclr.data import ImageData, TensorImageDataset
from fastclr.data.split import FileSet
from fastclr.distributed import resolve_device
from fastclr.downstream.load import load_simclr
from fastclr.downstream.probe import LINEAR_L2, LINEAR_MAX_ITER, fit_linear_probe
from fastclr.errors import UsageError
from fastclr.features import EvalData, eval_data, extract_features, stream_features
from fastclr.models import ARCHS
from fastclr.options import KNN_K, KNN_TEMPERATURE, check_options, option
from fastclr.reference import l2_normalize

__all__ = [
    "EvalConfig",
    "EvalResult",
    "check_finite_features",
    "evaluate_checkpoint",
    "extract_features",
    "knn_accuracy",
    "knn_k_for",
    "linear_probe_accuracy",
]

KNN_CLASS_FRACTION = 0.15  # ~ Wu et al.'s 200 of ImageNet's ~1,300 training images a class
#: Largest (test rows × training features) fp32 similarity block of the kNN: the test rows per
#: block shrink as the training set grows (1024 rows up to 65,536 training features, 52 at
#: ImageNet's 1.28 M).
KNN_BLOCK_BYTES = 256 << 20


def knn_k_for(train_labels: Tensor | None) -> tuple[int, str]:
    """(k, reason): 15% of the smallest class's training images, in [1, 200]."""
    if train_labels is None or train_labels.numel() == 0:
        return KNN_K, "no labels"
    counts = torch.bincount(train_labels.long().flatten().cpu())
    smallest = int(counts[counts > 0].min())
    k = max(1, min(KNN_K, round(KNN_CLASS_FRACTION * smallest)))
    if k == KNN_K:
        return k, f"Wu et al. 2018's 200; the smallest class has {smallest} training images"
    return k, (
        f"15% of the smallest class's {smallest} training images; Wu et al.'s 200 is ~16% of "
        "an ImageNet class"
    )


@torch.no_grad()
def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int | None = None,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> float:
    """Weighted kNN top-1 accuracy (cosine similarity, votes ``exp(sim/τ)``, k capped by N).

    The votes are computed as ``exp((sim − max sim) / τ)`` per test row, the same ranking of the
    classes without overflow at any τ.

    ``k=None``: :func:`knn_k_for` of the training labels. Test rows go in blocks of ``chunk``,
    fewer where a block's (rows × N_train) similarities would pass :data:`KNN_BLOCK_BYTES`.
    Memory: an L2-normalised fp32 copy of both feature sets plus one block.
    """
    if len(train_features) == 0 or len(test_features) == 0:
        raise UsageError("kNN needs at least one training and one test feature")
    if k is None:
        k = knn_k_for(train_labels)[0]
    k = min(k, len(train_features))
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    ftr = l2_normalize(train_features.float())
    fte = l2_normalize(test_features.float())
    rows = max(1, min(chunk, KNN_BLOCK_BYTES // (4 * len(ftr))))
    correct = 0
    for i in range(0, len(fte), rows):
        sim = fte[i : i + rows] @ ftr.T
        top_sim, top_idx = sim.topk(k, dim=1)
        del sim
        # exp((sim − row max) / τ): the classes' vote ratios of exp(sim / τ), but never above 1
        # (sim / τ overflows float32 above ~88, e.g. every close neighbour at τ = 0.01)
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()
        votes = torch.zeros(len(top_idx), n_classes, device=fte.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        correct += int((votes.argmax(1) == test_labels[i : i + rows]).sum())
    return correct / len(fte)


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    l2: float = LINEAR_L2,
    max_iter: int = LINEAR_MAX_ITER,
    progress: bool = False,
    block_bytes: int | None = None,
) -> float:
    """Top-1 of a logistic-regression probe fitted with L-BFGS on frozen, standardised features
    (:func:`~fastclr.downstream.probe.fit_linear_probe`, which returns the probe itself).

    ``progress``: a tqdm bar (stderr) over the loss evaluations L-BFGS may make.

    Memory: the features are used as given (fp32 from :func:`evaluate_checkpoint`), never
    upcast whole: the standardisation, the loss and its gradient are computed in float64 over
    blocks of rows of at most ``block_bytes`` (rows × (F + classes) × 8 bytes; None:
    :data:`~fastclr.downstream.probe.PROBE_BLOCK_BYTES`, 256 MB), with float64 parameters and
    accumulation. Beyond the features it needs a few blocks (the rows, their logits and
    gradients) and L-BFGS's history, 2 × 20 × (F + 1) × classes × 8 bytes (655 MB for F = 2048
    and 1,000 classes). Data within one block (say 10,000 × 2048 features of 1,000 classes) are
    fitted exactly as one full batch.
    """
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    probe = fit_linear_probe(
        train_features,
        train_labels,
        num_classes=n_classes,
        l2=l2,
        max_iter=max_iter,
        progress=progress,
        block_bytes=block_bytes,
    )
    return probe.accuracy(test_features, test_labels)


@dataclass
class EvalConfig:
    """What ``fastclr linear-eval`` evaluates (one flag per field, generated by the CLI)."""

    checkpoint: str = option(None, "checkpoint file or run folder", required=True)
    data: str | None = option(
        None,
        "'digits' or a labelled image folder",
        unset="the data the checkpoint was pretrained on",
    )
    arch: str | None = options.expected_arch_option(ARCHS)
    knn_k: int | None = options.knn_k_option()
    knn_temperature: float = options.knn_temperature_option()
    num_workers: int | None = options.num_workers_option()
    device: str | None = options.device_option()
    progress: bool = options.progress_option()
    allow_legacy_checkpoint: bool = options.legacy_option()

    def validate(self) -> None:
        """:class:`~fastclr.errors.UsageError` naming the first flag that cannot be used."""
        check_options(self)


@dataclass
class EvalResult:
    linear_top1: float
    knn_top1: float
    n_train: int
    n_test: int
    arch: str
    data: str
    #: which path the features took: "decoded in memory (...)" or "streamed from N files, ..."
    features: str = ""


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | ImageData | None = None,
    arch: str | None = None,
    device: str | None = None,
    knn_k: int | None = None,
    knn_temperature: float = KNN_TEMPERATURE,
    num_workers: int | None = None,
    progress: bool = True,
    header: bool = False,
    allow_legacy_checkpoint: bool = False,
) -> EvalResult:
    """Linear-probe and kNN top-1 of a pretraining checkpoint's encoder on a labelled dataset.

    ``data`` None: the data the run was pretrained on, as its checkpoint records it (a
    :class:`~fastclr.errors.UsageError` when the checkpoint does not say or that folder is not
    there). An image folder whose decoded squares would pass the in-memory limit streams its
    features (:mod:`fastclr.features`); ``num_workers`` decode processes (None: auto).
    ``arch``, when given, must match the checkpoint's (a :class:`CheckpointError` names both).
    Arguments are checked first (:class:`~fastclr.errors.UsageError` naming the flag);
    ``progress`` shows tqdm bars and ``header`` prints what is evaluated and which path the
    features take before they are extracted. Weights and features that hold NaN or Inf are
    refused (:class:`CheckpointError`), never scored.
    """
    EvalConfig(
        str(checkpoint), "digits", arch, knn_k, knn_temperature, num_workers, device, progress
    ).validate()
    dev = resolve_device(device)
    model = load_simclr(checkpoint, dev, allow_legacy_checkpoint)  # verified, finite weights
    info = model.info
    if arch is not None and arch != info.arch:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds a {info.arch} encoder, not the requested {arch}"
        )
    image_size = info.image_size
    ed = eval_data(
        _pretrained_on(checkpoint, info.data) if data is None else data, image_size, num_workers
    )
    train, held = _labelled_split(ed)
    if header:
        sizes = (len(train), len(held))
        print(_header(checkpoint, info.arch, image_size, ed, sizes, data is None), flush=True)
    mean, std = info.mean, info.std
    bars = ("features (train)", "features (held-out)") if progress else (None, None)
    f_tr, y_tr = _features(model.encoder, train, ed, (mean, std), image_size, dev, bars[0])
    f_te, y_te = _features(model.encoder, held, ed, (mean, std), image_size, dev, bars[1])
    for f in (f_tr, f_te):
        check_finite_features(f, f"the encoder of checkpoint {checkpoint}")
    if ed.streamed:
        ed.summary.report(ed.name)
    return EvalResult(
        linear_top1=linear_probe_accuracy(f_tr, y_tr, f_te, y_te, progress=progress),
        knn_top1=knn_accuracy(f_tr, y_tr, f_te, y_te, k=knn_k, temperature=knn_temperature),
        n_train=len(f_tr),
        n_test=len(f_te),
        arch=info.arch,
        data=ed.name,
        features=ed.how,
    )


def _pretrained_on(checkpoint: str | os.PathLike[str], recorded: str | None) -> str:
    """The data a checkpoint was pretrained on, when ``linear-eval`` was given no ``--data``."""
    if recorded is None:
        raise UsageError(
            f"--data: checkpoint {checkpoint} does not record the data it was trained on; "
            "pass --data ('digits' or a labelled image folder)"
        )
    if recorded != "digits" and not os.path.isdir(recorded):
        raise UsageError(
            f"--data: checkpoint {checkpoint} was pretrained on {recorded}, which is not a "
            "folder here; pass --data ('digits' or a labelled image folder)"
        )
    return recorded


def check_finite_features(features: Tensor, source: str) -> None:
    """Raise :class:`CheckpointError` when ``features`` hold NaN or Inf (``source`` names the
    encoder): no accuracy is computed from them."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bool(bad.any()):
        raise CheckpointError(
            f"{source} gives NaN or Inf features for {int(bad.sum())} of {len(features)} "
            "images: its weights are not usable (the run that wrote them diverged)"
        )


def _header(
    checkpoint: str | os.PathLike[str],
    arch: str,
    size: int,
    ed: EvalData,
    sizes: tuple[int, int],
    own_data: bool,
) -> str:
    """What ``linear-eval`` evaluates (``own_data``: the run's own data, no ``--data`` given),
    and which path its features take."""
    n_tr, n_te = sizes
    whose = " (what the run was pretrained on; --data to choose)" if own_data else ""
    rows = [
        ("checkpoint", f"{checkpoint} ({arch}, {size}-px images)"),
        (
            "data",
            f"{ed.name}: {n_tr:,} train / {n_te:,} held-out images, "
            f"{len(ed.classes)} classes{whose}",
        ),
        ("features", ed.how),
    ]
    return "\n".join(["fastclr linear-eval", *(f"  {k + ':':<12}{v}" for k, v in rows)])


def _features(
    encoder: nn.Module,
    part: TensorImageDataset | FileSet,
    ed: EvalData,
    norm: tuple[Sequence[float], Sequence[float]],
    size: int,
    dev: torch.device,
    label: str | None,
) -> tuple[Tensor, Tensor]:
    """(features, labels) of one labelled part, streamed from its files or from memory."""
    if isinstance(part, FileSet):
        return stream_features(
            encoder,
            part,
            *norm,
            size,
            dev,
            num_workers=ed.num_workers,
            summary=ed.summary,
            progress=label,
        )
    assert part.labels is not None
    return extract_features(encoder, part, *norm, size, dev, progress=label), part.labels.to(dev)


def _labelled_split(
    ed: EvalData,
) -> tuple[TensorImageDataset | FileSet, TensorImageDataset | FileSet]:
    """The (train, held-out) parts of labelled data, or a ``ValueError`` saying what is needed."""
    layout = "ROOT/<class>/<image>, one subfolder per class"
    if not ed.classes:
        raise UsageError(
            f"linear-eval needs labelled images, and {ed.name} has no class subfolders "
            f"(arrange it as {layout}, at least two classes)"
        )
    if len(ed.classes) < 2:
        raise UsageError(
            f"linear-eval needs at least two classes to tell apart, and {ed.name} has one "
            f"({ed.classes[0]!r}); add a subfolder for each other class ({layout})"
        )
    held = ed.heldout
    if (
        held is None
        or len(held) == 0
        or (isinstance(held, TensorImageDataset) and held.labels is None)
    ):
        raise UsageError(
            f"{ed.name} has too few images per class to hold some out for evaluation "
            "(each class needs at least two)"
        )
    return ed.train, held
