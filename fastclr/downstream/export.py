"""``fastclr export``: a run's pretrained encoder as a file other code loads without fastclr.

Formats (:data:`FORMATS`):

* ``torchvision``: the encoder's state dict under torchvision's ResNet key names, for
  ``torchvision.models.resnet18/34/50(weights=None)``. Every backbone key matches; torchvision's
  classifier ``fc.weight`` / ``fc.bias`` is absent (SimCLR trains none), so load with
  ``model.fc = torch.nn.Identity()`` (the model then returns the pooled features) or with
  ``strict=False``. Only for the networks torchvision has: width 1.0 and the ImageNet stem.
* ``state-dict``: ``{"encoder": ..., "head": ..., "metadata": ...}``, plain tensors: the encoder's
  state dict (torchvision key names, any width or stem), the projection head's (an
  ``nn.Sequential``: ``0`` Linear, [``1`` BatchNorm1d], ReLU, Linear; ``metadata["head_layers"]``
  lists them with their sizes), and the record of :func:`metadata` (architecture, stem, width,
  mean/std, image size). ``torch.load(file, weights_only=True)`` reads it.
* ``torchscript``: the encoder traced in eval mode (:func:`torch.jit.trace`): runs in any Python
  with torch, or in C++ (libtorch), without fastclr. Input: the normalised (N, 3, H, W) batch
  :func:`~fastclr.downstream.load.load_encoder` takes; output: the same features. The metadata
  record is stored in the archive as the extra file ``fastclr.json``.

Files are written atomically (a temporary file in the same folder, fsynced, then moved into
place), and an existing ``out`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastclr.atomic import write_atomic
from fastclr.downstream.load import PretrainedSimCLR, RunInfo, load_simclr
from fastclr.errors import UsageError
from fastclr.models import ResNet
from fastclr.options import check_options, legacy_option, option

__all__ = [
    "FORMATS",
    "METADATA_FILE",
    "ExportConfig",
    "ExportResult",
    "export",
    "metadata",
    "run_export",
]

FORMATS = ("torchvision", "state-dict", "torchscript")
#: Name of the metadata record inside a TorchScript archive (``torch.jit.load(_extra_files=)``).
METADATA_FILE = "fastclr.json"
#: Marks the ``state-dict`` format's metadata record.
STATE_DICT_FORMAT = "fastclr-encoder-state-dict-v1"
#: The one network torchvision builds for each of fastclr's architectures.
_TORCHVISION_WIDTH, _TORCHVISION_STEM = 1.0, "imagenet"


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    path: Path
    format: str
    info: RunInfo
    feature_dim: int
    nbytes: int
    #: torchvision format: backbone keys present in both (all of ours), and torchvision's keys
    #: the file does not have (its classifier)
    matched: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """The lines ``fastclr export`` prints."""
        i = self.info
        net = f"{i.arch} (stem={i.stem}, width={i.width:g}, {i.image_size}-px views)"
        lines = [f"wrote {self.path} ({self.format}, {self.nbytes / 1e6:.1f} MB): {net}"]
        if self.format == "torchvision":
            lines += [
                f"  matched: all {len(self.matched)} backbone keys of torchvision.models."
                f"{i.arch} (conv1, bn1, layer1-layer4)",
                f"  absent:  {', '.join(self.absent)} (torchvision's classifier; SimCLR trains "
                "none)",
                f"  load:    m = torchvision.models.{i.arch}(weights=None); m.fc = "
                "torch.nn.Identity(); m.load_state_dict(torch.load(FILE))",
            ]
        elif self.format == "state-dict":
            lines.append(
                '  keys:    "encoder" (torchvision names), "head" (nn.Sequential: '
                f'{", ".join(_head_layers(i, self.feature_dim))}), "metadata"'
            )
        else:
            lines.append(
                "  load:    m = torch.jit.load(FILE); features = m(normalised images); "
                f"metadata in the extra file {METADATA_FILE!r}"
            )
        lines.append(
            f"  input:   {i.image_size}x{i.image_size} RGB in [0, 1], normalised by mean "
            f"{_fmt(i.mean)} std {_fmt(i.std)}"
        )
        return lines


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _head_layers(info: RunInfo, f: int) -> list[str]:
    """The projection head's layers with their sizes (``f`` features in), as ``nn.Sequential``
    indexes them."""
    layers = [f"Linear({f}, {f}{', bias=False' if info.head_bn else ''})"]
    if info.head_bn:
        layers.append(f"BatchNorm1d({f})")
    return [*layers, "ReLU", f"Linear({f}, {info.proj_dim})"]


def metadata(model: PretrainedSimCLR, fmt: str) -> dict[str, Any]:
    """The record stored beside exported weights: what the network is and what input it takes."""
    from fastclr._version import __version__

    info, f = model.info, model.feature_dim
    return {
        "format": STATE_DICT_FORMAT if fmt == "state-dict" else f"fastclr-{fmt}",
        **info.as_dict(),
        "feature_dim": f,
        "head_layers": _head_layers(info, f),
        "source": info.path,
        "fastclr_version": __version__,
    }


def _plain(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies (a checkpoint's conv weights are channels_last)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def torchvision_state_dict(model: PretrainedSimCLR) -> tuple[dict[str, Tensor], list[str]]:
    """The encoder's weights for torchvision's ResNet, and torchvision's keys they lack (fc).

    The key set and every shape are checked against fastclr's torchvision-layout network
    (``ResNet(arch, num_classes=1000)``, whose names and parameter counts equal torchvision's);
    :class:`~fastclr.errors.UsageError` when the encoder is not one torchvision has.
    """
    info = model.info
    if info.width != _TORCHVISION_WIDTH or info.stem != _TORCHVISION_STEM:
        others = [f for f in FORMATS if f != "torchvision"]
        raise UsageError(
            f"--format torchvision needs a network torchvision has (width 1.0, imagenet stem), "
            f"and {info.path} holds {info.arch} with stem={info.stem}, width={info.width:g}; "
            f"use --format {' or --format '.join(others)}"
        )
    ours = _plain(model.encoder.state_dict())
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        reference = ResNet(info.arch, stem="imagenet", num_classes=1000).state_dict()
    extra = sorted(set(ours) - set(reference))
    wrong = [k for k in ours if k in reference and ours[k].shape != reference[k].shape]
    if extra or wrong:  # a fastclr bug: the layouts are built to be equal
        raise RuntimeError(
            f"the {info.arch} encoder does not have torchvision's layout: unknown keys {extra}, "
            f"shapes differing at {wrong}"
        )
    return ours, [k for k in reference if k not in ours]


def _torchscript(model: PretrainedSimCLR, meta: dict[str, Any]) -> bytes:
    """The encoder traced on a (2, 3, S, S) batch, with ``meta`` as an extra file."""
    enc = model.encoder
    p = next(enc.parameters())
    example = torch.zeros(2, 3, enc.image_size, enc.image_size, device=p.device)
    example = example.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():  # recent torch marks torch.jit deprecated: said in --help
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(enc, example)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    return buf.getvalue()


def _serialise(model: PretrainedSimCLR, fmt: str) -> tuple[bytes, list[str], list[str]]:
    """(file contents, matched keys, absent keys) of ``model`` in format ``fmt``."""
    meta = metadata(model, fmt)
    if fmt == "torchscript":
        return _torchscript(model, meta), [], []
    buf = io.BytesIO()
    if fmt == "torchvision":
        state, absent = torchvision_state_dict(model)
        torch.save(state, buf)
        return buf.getvalue(), list(state), absent
    payload = {
        "encoder": _plain(model.encoder.state_dict()),
        "head": _plain(model.head.state_dict()),
        "metadata": meta,
    }
    torch.save(payload, buf)
    return buf.getvalue(), [], []


def export(
    checkpoint: str | os.PathLike[str],
    format: str,
    out: str | os.PathLike[str],
    overwrite: bool = False,
    allow_legacy: bool = False,
) -> ExportResult:
    """Write a run's pretrained encoder to ``out`` in ``format`` (see the module docstring).

    Args:
        checkpoint: run folder or checkpoint file of ``fastclr pretrain``.
        format: one of :data:`FORMATS`.
        out: the file to write; its folder is created.
        overwrite: replace an existing ``out`` (otherwise it is refused).
        allow_legacy: read a checkpoint without an integrity digest (only a file you trust).

    Returns:
        :class:`ExportResult`: the path, size, and for ``torchvision`` the matched and absent keys.

    Raises:
        CheckpointError: ``checkpoint`` is not a readable, intact fastclr checkpoint.
        ValueError: an unknown format, ``torchvision`` for a network torchvision does not have,
            or ``out`` exists without ``overwrite`` (or is a folder).
        OSError: the file could not be written (nothing is left behind).
    """
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    target = Path(out)
    _check_target(target, overwrite)
    model = load_simclr(checkpoint, allow_legacy=allow_legacy)
    data, matched, absent = _serialise(model, format)
    write_atomic(target, data, overwrite=overwrite)
    return ExportResult(target, format, model.info, model.feature_dim, len(data), matched, absent)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.is_dir():
        raise UsageError(f"--out {target} is a folder; give the path of the file to write")
    if target.exists() and not overwrite:
        raise UsageError(f"--out {target} already exists; pass --overwrite to replace it")


@dataclass
class ExportConfig:
    """What ``fastclr export`` writes (one flag per field, generated by the CLI)."""

    checkpoint: str = option(None, "run folder or checkpoint file", required=True)
    format: str = option(
        None,
        "torchvision: state dict for torchvision.models.resnet18/34/50 (width 1.0, imagenet stem "
        "only); state-dict: encoder + head state dicts and a metadata record; torchscript: the "
        "traced encoder, loadable without fastclr (recent torch versions warn that torch.jit is "
        "deprecated; the file still loads)",
        choices=FORMATS,
        required=True,
    )
    out: str = option(None, "file to write", required=True)
    overwrite: bool = option(False, "replace --out if it exists")
    allow_legacy_checkpoint: bool = legacy_option()


def run_export(cfg: ExportConfig) -> int:
    """``fastclr export``: write the file and print what was written."""
    check_options(cfg)
    result = export(
        cfg.checkpoint,
        cfg.format,
        cfg.out,
        overwrite=cfg.overwrite,
        allow_legacy=cfg.allow_legacy_checkpoint,
    )
    print("\n".join(result.describe()))
    return 0
