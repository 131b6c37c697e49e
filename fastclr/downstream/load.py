"""A pretrained encoder from a fastclr run in a few lines: load_encoder, load_simclr.

Both read a checkpoint written by ``fastclr pretrain`` (a run folder, whose ``checkpoint.pt`` is
read, or the file itself; a finished run or one stopped mid-way), verify its digest
(:func:`fastclr.checkpoint.load_checkpoint`), rebuild the architecture it records (ResNet-18/34/50,
any width, either stem) and load the weights. A file that is not a fastclr checkpoint, is
corrupted, or lacks the fields needed raises :class:`~fastclr.checkpoint.CheckpointError` with one
sentence naming the file.

The encoder comes back in eval mode (BatchNorm uses its running statistics), its parameters still
trainable, on ``map_location`` (CPU by default), and knows the input it was trained on:
``encoder.preprocess`` (:class:`~fastclr.downstream.preprocess.Preprocess`) turns uint8 or [0, 1]
images into that input, and ``mean`` / ``std`` / ``image_size`` give the numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from fastclr.checkpoint import (
    EVAL_FIELDS,
    CheckpointError,
    check_finite_weights,
    load_checkpoint,
    load_model_state,
    require_fields,
)
from fastclr.distributed import check_device
from fastclr.downstream.preprocess import Preprocess, as_triple
from fastclr.models import ARCHS, STEMS, Architecture, ResNet, SimCLR

__all__ = ["PretrainedEncoder", "PretrainedSimCLR", "RunInfo", "load_encoder", "load_simclr"]

Device = str | torch.device | None


@dataclass(frozen=True)
class RunInfo:
    """What a checkpoint says about the network it holds and the input it was trained on."""

    path: str
    arch: str
    stem: str
    width: float
    proj_dim: int
    head_bn: bool
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: epochs finished and optimiser steps taken when the checkpoint was written (None if absent)
    epoch: int | None
    global_step: int | None
    #: what wrote it: "pretrain", or "finetune" (``fastclr finetune``: a fine-tuned encoder)
    kind: str = "pretrain"
    #: the ``--data`` the run trained on, as its checkpoint records it ("digits" or a folder's
    #: absolute path); None when the checkpoint does not say
    data: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The metadata record an export stores beside the weights (plain types only)."""
        return {
            "arch": self.arch,
            "stem": self.stem,
            "width": self.width,
            "proj_dim": self.proj_dim,
            "head_bn": self.head_bn,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "epoch": self.epoch,
            "global_step": self.global_step,
        }

    def architecture(self) -> Architecture:
        """The network the checkpoint records (build it with ``.build()``)."""
        return Architecture(self.arch, self.stem, self.width, self.proj_dim, self.head_bn)

    def preprocess(self) -> Preprocess:
        """The preprocessing of the input the network was trained on."""
        return Preprocess(self.mean, self.std, self.image_size)


class PretrainedEncoder(ResNet):
    """A fastclr ResNet encoder with the preprocessing it was trained with.

    It maps a normalised (N, 3, S, S) batch to pooled features (N, ``feature_dim``); its
    parameter names are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...).

    Attributes:
        feature_dim: size of the features (512 × width for ResNet-18/34, 2048 × width for 50).
        preprocess: :class:`Preprocess`; ``encoder(encoder.preprocess(images))`` gives features.
        info: :class:`RunInfo` of the checkpoint it came from.
    """

    def __init__(self, info: RunInfo) -> None:
        super().__init__(info.arch, stem=info.stem, width=info.width)  # type: ignore[arg-type]
        self.info = info
        self.preprocess = info.preprocess()

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of the normalisation (after scaling pixels to [0, 1])."""
        return self.info.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation of the normalisation."""
        return self.info.std

    @property
    def image_size(self) -> int:
        """Side of the square views the encoder was trained on."""
        return self.info.image_size


class PretrainedSimCLR(SimCLR):
    """Encoder + projection head of a fastclr run: ``forward(x)`` returns ``(h, z)``.

    ``encoder`` is a :class:`PretrainedEncoder` (``model.encoder.preprocess`` and
    ``model.preprocess`` are the same); ``head`` the projection MLP (Linear, [BatchNorm1d], ReLU,
    Linear).
    """

    encoder: PretrainedEncoder

    def __init__(self, encoder: PretrainedEncoder) -> None:
        info = encoder.info
        super().__init__(encoder, encoder.feature_dim, proj_dim=info.proj_dim, head_bn=info.head_bn)

    @property
    def preprocess(self) -> Preprocess:
        """The encoder's :class:`Preprocess`."""
        return self.encoder.preprocess

    @property
    def info(self) -> RunInfo:
        """:class:`RunInfo` of the checkpoint."""
        return self.encoder.info


def read_run(
    path: str | os.PathLike[str], allow_legacy: bool = False
) -> tuple[RunInfo, dict[str, Any]]:
    """The verified checkpoint of a run folder or file: its :class:`RunInfo` and model weights.

    Raises:
        CheckpointError: missing, unreadable, foreign, corrupted (digest; no digest unless
            ``allow_legacy``), lacking the fields a pretrained model needs, holding NaN/Inf
            weights; an architecture this fastclr does not build.
    """
    state, where = open_run(path, allow_legacy)
    weights = model_weights(state, where, EVAL_FIELDS, "loading a pretrained encoder")
    spec = state["model_spec"]
    if spec.get("arch") not in ARCHS or spec.get("stem") not in STEMS:
        raise CheckpointError(
            f"checkpoint {where} holds a {spec.get('arch')!r} encoder with stem "
            f"{spec.get('stem')!r}; this fastclr builds {sorted(ARCHS)} with stems {list(STEMS)}"
        )
    return run_info(state, where), weights


def open_run(
    path: str | os.PathLike[str], allow_legacy: bool = False
) -> tuple[dict[str, Any], str]:
    """The verified contents of a run folder's checkpoint or a checkpoint file, and the file's
    name (:func:`fastclr.checkpoint.load_checkpoint`; its ``CheckpointError`` when it cannot)."""
    return load_checkpoint(path, allow_legacy=allow_legacy), _checkpoint_file(path)


def model_weights(
    state: dict[str, Any], where: str, fields: tuple[str, ...], purpose: str
) -> dict[str, Any]:
    """The network weights of checkpoint contents ``state`` (of file ``where``), after checking
    that it holds ``fields`` (needed for ``purpose``), a ``model_spec`` and ``model`` of the
    right types, and no NaN or Inf weight; a ``CheckpointError`` naming the file otherwise."""
    require_fields(state, fields, where, purpose)
    spec = state["model_spec"]
    weights = state["model"]
    if not isinstance(spec, dict) or not isinstance(weights, dict):
        raise CheckpointError(f"checkpoint {where} has a malformed model_spec or model entry")
    check_finite_weights(weights, f"checkpoint {where}")
    return weights


def run_info(state: dict[str, Any], where: str, record: str = "model description") -> RunInfo:
    """The :class:`RunInfo` that checkpoint contents ``state`` (of file ``where``) record; a
    ``CheckpointError`` saying the file has a malformed ``record`` when a field is missing or of
    the wrong type."""
    try:
        spec = state["model_spec"]
        return RunInfo(
            path=str(where),
            arch=str(spec["arch"]),
            stem=str(spec["stem"]),
            width=float(spec["width"]),
            proj_dim=int(spec["proj_dim"]),
            head_bn=bool(spec["head_bn"]),
            image_size=int(state["image_size"]),
            mean=as_triple(state["mean"], "mean"),
            std=as_triple(state["std"], "std"),
            epoch=_optional_int(state.get("epoch")),
            global_step=_optional_int(state.get("global_step")),
            kind=str(state.get("kind", "pretrain")),
            data=_run_data(state.get("config")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {where} has a malformed {record}: {e}") from e


def _checkpoint_file(path: str | os.PathLike[str]) -> str:
    from fastclr.checkpoint import CHECKPOINT_NAME

    return str(os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path)


def _run_data(config: object) -> str | None:
    """The ``data`` setting of a checkpoint's ``config`` record, None where it has none."""
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, str) and data else None


def _optional_int(v: object) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _load_weights(model: PretrainedSimCLR, weights: dict[str, Any], info: RunInfo) -> None:
    """``load_state_dict``; a mismatch is a :class:`CheckpointError` naming the first problem."""
    net = f"the {info.arch} (stem={info.stem}, width={info.width:g}) it records"
    load_model_state(model, weights, f"checkpoint {info.path} does not fit {net}")


def _device(map_location: Device) -> torch.device:
    """The device to load onto (None: the CPU); a ``ValueError`` naming ``map_location`` when
    this process cannot use it."""
    check_device(map_location, "map_location")
    return torch.device("cpu") if map_location is None else torch.device(map_location)


def load_simclr(
    run_folder_or_checkpoint: str | os.PathLike[str],
    map_location: Device = None,
    allow_legacy: bool = False,
) -> PretrainedSimCLR:
    """The encoder and projection head of a fastclr run, in eval mode.

    Args:
        run_folder_or_checkpoint: a run folder (its ``checkpoint.pt`` is read) or a checkpoint
            file written by ``fastclr pretrain`` (finished or mid-run).
        map_location: device to put the model on (``"cpu"``, ``"cuda"``, a ``torch.device``);
            None: the CPU.
        allow_legacy: read a checkpoint without an integrity digest (only a file you trust).

    Returns:
        a :class:`PretrainedSimCLR` whose ``forward(x)`` gives ``(h, z)``: features and the
        projection the loss saw; ``model.encoder`` is the :class:`PretrainedEncoder`.

    Raises:
        CheckpointError: not a fastclr checkpoint (one sentence naming the file), corrupted, or
            weights that do not fit the architecture it records.
        ValueError: ``map_location`` is not a device this process can use.
    """
    device = _device(map_location)
    info, weights = read_run(run_folder_or_checkpoint, allow_legacy)
    model = PretrainedSimCLR(PretrainedEncoder(info))
    _load_weights(model, weights, info)
    model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model.eval()


def load_encoder(
    run_folder_or_checkpoint: str | os.PathLike[str],
    map_location: Device = None,
    allow_legacy: bool = False,
) -> PretrainedEncoder:
    """The pretrained encoder of a fastclr run, in eval mode, with its preprocessing.

    Args:
        run_folder_or_checkpoint: a run folder or a checkpoint file of ``fastclr pretrain``.
        map_location: device to put the encoder on; None: the CPU.
        allow_legacy: read a checkpoint without an integrity digest (only a file you trust).

    Returns:
        a :class:`PretrainedEncoder`: (N, 3, S, S) normalised images → (N, ``feature_dim``)
        pooled features; ``preprocess`` prepares images, ``mean`` / ``std`` / ``image_size``
        are the numbers it uses.

    Raises:
        CheckpointError: not a fastclr checkpoint (one sentence naming the file), corrupted, or
            weights that do not fit the architecture it records.
        ValueError: ``map_location`` is not a device this process can use.

    Example:
        >>> enc = fastclr.load_encoder("runs/simclr")
        >>> with torch.no_grad():
        ...     h = enc(enc.preprocess(images_uint8))  # (N, enc.feature_dim)
    """
    return load_simclr(run_folder_or_checkpoint, map_location, allow_legacy).encoder
