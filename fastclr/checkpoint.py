"""Checkpoint files: the format, atomic writing, reading, and the architecture check.

A leaf module (torch only) so that both training (:mod:`fastclr.train`) and evaluation
(:mod:`fastclr.evaluate`) can read checkpoints without importing each other. What goes *into* a
training checkpoint (optimiser, RNG streams, position) is decided by
:class:`fastclr.train.checkpoint.CheckpointSaver`; this module only knows the file.

Guarantees:

* **atomic**: the state is serialised in memory, written to ``.NAME.tmp-PID`` in the same folder,
  fsynced and renamed over the old file; a crash or a full disk at any point leaves the previous
  checkpoint or the new one, never a torn file. Temporary files left by killed writers are
  removed by :func:`remove_stale_temps` (a run calls it when it starts).
* **verified**: every file carries ``format_version`` and a SHA-256 ``digest`` of its contents
  (:func:`fastclr.digest.state_digest`); :func:`load_checkpoint` recomputes it, so a flipped byte
  in the weights is refused instead of loaded. A file without a digest (fastclr before the
  check, or one whose ``format_version`` key is itself damaged) is refused unless the caller
  asks for a legacy file (``allow_legacy``, ``--allow-legacy-checkpoint``).
* **finite**: :func:`check_finite_weights` refuses to save, and loaders refuse to use, weights
  that hold NaN or Inf (a run that diverged at its last step).
* **one sentence per failure**: a missing, foreign (text, image, a pickled module), truncated,
  corrupted or too-new file raises :class:`CheckpointError` with one sentence naming the file.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from fastclr.atomic import pid_alive, write_atomic
from fastclr.digest import DIGEST_ALGORITHM, state_digest
from fastclr.errors import UsageError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "FORMAT_VERSION",
    "RESUME_OUT",
    "CheckpointError",
    "check_finite_weights",
    "check_spec",
    "first_non_finite",
    "load_checkpoint",
    "load_model_state",
    "model_spec",
    "read_resumed",
    "remove_stale_temps",
    "require_fields",
    "save_checkpoint_atomic",
    "still_current",
]

#: ``--resume`` given without a value: resume the ``--out`` folder.
RESUME_OUT = ""

#: What evaluation reads from a checkpoint, and what resuming a run reads besides.
EVAL_FIELDS = ("model_spec", "model", "image_size", "mean", "std")
RESUME_FIELDS = (
    *EVAL_FIELDS,
    "config",
    "epoch",
    "step_in_epoch",
    "global_step",
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
)

CHECKPOINT_FORMAT = "fastclr-simclr-v1"
CHECKPOINT_NAME = "checkpoint.pt"
#: Version of the file layout. 1: no digest (fastclr before the integrity check; still read,
#: unverified); 2: ``format_version`` and ``digest`` fields, verified on load.
FORMAT_VERSION = 2
_DIGEST_KEY = "digest"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) serialisation
_PICKLE_MAGIC = b"\x80"  # torch.save's legacy serialisation starts with a pickle protocol byte


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


class ModelFields(Protocol):
    """The architecture fields of a run's configuration (``TrainConfig`` has them)."""

    @property
    def arch(self) -> str: ...
    @property
    def stem(self) -> str: ...
    @property
    def width(self) -> float: ...
    @property
    def proj_dim(self) -> int: ...
    @property
    def head_bn(self) -> bool: ...


def save_checkpoint_atomic(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` plus ``format_version`` and ``digest`` to ``path`` atomically.

    Serialised in memory, written to a temporary file in the same folder, fsynced, then renamed
    over ``path`` (``os.replace``). A crash or an ``OSError`` (disk full, read-only folder) at any
    point leaves the previous file untouched and no temporary file behind (a SIGKILL can leave
    the temporary file; :func:`remove_stale_temps` clears it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in state.items() if k != _DIGEST_KEY}
    body["format_version"] = FORMAT_VERSION
    body[_DIGEST_KEY] = {"algorithm": DIGEST_ALGORITHM, "value": state_digest(body)}
    buf = io.BytesIO()
    torch.save(body, buf)
    try:
        write_atomic(path, buf.getbuffer().tobytes())
    except OSError as e:
        kept = "the previous checkpoint is unchanged" if path.exists() else "nothing was saved"
        raise OSError(
            e.errno, f"could not write checkpoint {path}: {e.strerror or e}; {kept}"
        ) from e


def remove_stale_temps(folder: str | os.PathLike[str], name: str = CHECKPOINT_NAME) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files in ``folder`` whose writer is no longer running.

    A writer killed (SIGKILL, power loss) between creating its temporary file and renaming it
    leaves the file behind. Files whose PID is a live process other than this one are kept (a
    writer may still be busy). Returns the removed paths.
    """
    pattern = re.compile(rf"^\.{re.escape(name)}\.tmp-(\d+)$")
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and pid_alive(pid):
            continue
        try:
            p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


def _what_is(p: Path) -> str:
    """A few words on what a file that is not a PyTorch checkpoint looks like."""
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return "an unreadable file"
    if not head:
        return "an empty file"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return "a binary file of another kind"
    return "a text file"


def load_checkpoint(path: str | os.PathLike[str], allow_legacy: bool = False) -> dict[str, Any]:
    """Read and verify a fastclr checkpoint (a file, or a run folder holding ``checkpoint.pt``).

    Raises :class:`CheckpointError`, one sentence naming the file, when it is missing, not a
    PyTorch file, holds pickled Python objects (``weights_only`` loading refuses those: a whole
    ``nn.Module``, for instance), is truncated, is not a fastclr checkpoint, was written by a
    newer fastclr, does not match its digest, or has no digest (unless ``allow_legacy``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a regular file")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {p} cannot be read: {e.strerror or e}") from e
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(
            f"{p} is not a fastclr checkpoint: it is {_what_is(p)}, not a PyTorch file"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(
                f"{p} is not a fastclr checkpoint: it holds pickled Python objects (such as a "
                "whole nn.Module), which fastclr never loads"
            ) from e
        raise CheckpointError(
            f"checkpoint {p} is truncated or corrupted: PyTorch cannot read it ({type(e).__name__})"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{p} is not a fastclr SimCLR checkpoint (expected format {CHECKPOINT_FORMAT!r})"
        )
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {p} has format version {version!r}; this fastclr reads versions up to "
            f"{FORMAT_VERSION} (upgrade fastclr)"
        )
    if version < 2 and not allow_legacy:
        raise CheckpointError(
            f"checkpoint {p} carries no integrity digest: it was written before fastclr verified "
            "its checkpoints, or its format_version field is damaged; if you trust the file, "
            "pass --allow-legacy-checkpoint (allow_legacy=True)"
        )
    if version >= 2:
        stored = state.pop(_DIGEST_KEY, None)
        try:
            ok = (
                isinstance(stored, dict)
                and stored.get("algorithm") == DIGEST_ALGORITHM
                and stored.get("value") == state_digest(state)
            )
        except TypeError:
            ok = False
        if not ok:
            raise CheckpointError(
                f"checkpoint {p} is corrupted: its contents do not match the {DIGEST_ALGORITHM} "
                "digest stored in it"
            )
    state[READ_FROM] = _identity(p)
    return state


#: Key :func:`load_checkpoint` adds to what it returns: the file it read, as it was then
#: (path, inode, size, modification time), so that :func:`still_current` can tell whether the
#: file has been replaced since.
READ_FROM = "_read_from"


def _identity(p: Path) -> list[Any]:
    st = p.stat()
    return [str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns]


def still_current(state: dict[str, Any]) -> bool:
    """Whether the file ``state`` was read from (by :func:`load_checkpoint`) is unchanged."""
    read = state.get(READ_FROM)
    if not isinstance(read, list):
        return False
    try:
        return _identity(Path(read[0])) == read
    except OSError:
        return False


def first_non_finite(state: dict[str, Tensor]) -> str | None:
    """The name of the first floating tensor of ``state`` (a state dict) holding NaN or Inf."""
    for name, t in state.items():
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite_weights(state: dict[str, Tensor], desc: str) -> None:
    """Raise :class:`CheckpointError` naming the first tensor of ``state`` (a state dict) that
    holds NaN or Inf: weights a run diverged to, never worth evaluating."""
    name = first_non_finite(state)
    if name is not None:
        raise CheckpointError(
            f"{desc}: the weights hold NaN or Inf ({name}); the run that wrote them diverged"
        )


def require_fields(
    state: dict[str, Any], fields: tuple[str, ...], path: str | os.PathLike[str], purpose: str
) -> None:
    """Raise :class:`CheckpointError` naming the first of ``fields`` that ``state`` lacks."""
    missing = [f for f in fields if f not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} cannot be used for {purpose}: it lacks {', '.join(missing)} "
            "(it was not written by fastclr pretrain)"
        )


def model_spec(cfg: ModelFields) -> dict[str, Any]:
    """The architecture fields a checkpoint must agree on to be loaded into a model."""
    return {
        "arch": cfg.arch,
        "stem": cfg.stem,
        "width": float(cfg.width),
        "proj_dim": cfg.proj_dim,
        "head_bn": cfg.head_bn,
    }


def _describe(spec: dict[str, Any]) -> str:
    return (
        f"{spec['arch']} (stem={spec['stem']}, width={spec['width']}, "
        f"proj_dim={spec['proj_dim']}, head_bn={spec['head_bn']})"
    )


def check_spec(
    ckpt_spec: dict[str, Any], want: dict[str, Any], path: str | os.PathLike[str]
) -> None:
    """Raise :class:`CheckpointError` naming both architectures when they differ."""
    if any(ckpt_spec.get(k) != v for k, v in want.items()):
        raise CheckpointError(
            f"checkpoint {path} is for {_describe(ckpt_spec)} but the model is {_describe(want)}"
        )


def load_model_state(model: nn.Module, state: dict[str, Tensor], desc: str) -> None:
    """``model.load_state_dict(state)``, a mismatch raised as :class:`CheckpointError` naming
    the first missing, unexpected or wrongly shaped key (torch's own first line says only
    "Error(s) in loading state_dict")."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        detail = lines[0] if lines else str(e).strip()
        detail = detail if len(detail) <= 240 else detail[:237] + "..."
        raise CheckpointError(f"{desc}: {detail}") from e


def read_resumed(given: dict[str, Any], default_out: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a command's ``--resume`` names in the options ``given``, and its contents.

    ``--resume`` alone (:data:`RESUME_OUT`) resumes ``--out`` (``default_out`` when not given);
    a folder stands for its ``checkpoint.pt``; without ``--out`` the run continues in the
    checkpoint's own folder. ``given["resume"]`` and ``given["out"]`` are set accordingly.

    Raises:
        UsageError: ``--resume`` with ``--overwrite``.
        CheckpointError: the file cannot be read as a fastclr checkpoint.
    """
    if given.get("overwrite"):
        raise UsageError("--resume and --overwrite contradict each other: pass one of them")
    if given["resume"] == RESUME_OUT:
        given["resume"] = given.get("out", default_out)
    src = Path(given["resume"])
    path = src / CHECKPOINT_NAME if src.is_dir() else src
    given.setdefault("out", str(path.parent))
    return path, load_checkpoint(path)
