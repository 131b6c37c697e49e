"""Options of fastclr's commands: declared once, as dataclass fields, with their rules.

Every command's configuration is a dataclass (:class:`fastclr.train.TrainConfig`,
:class:`fastclr.evaluate.EvalConfig`, ...) whose fields are made by :func:`option`. A field's
metadata holds everything the command line and the checks need: the help line, what an unset
(``None``) value means, the accepted values of a closed set, and the numeric rule (at least N,
> 0, below a bound). So

* :mod:`fastclr.cli` generates each command's flags from the dataclass (name, type, choices,
  help with its default, written once here);
* :func:`check_options` validates any such dataclass from the same metadata, each failure one
  :class:`~fastclr.errors.UsageError` naming the flag (``--batch-size must be ...``).

Options shared by several commands (the kNN vote, decode workers, the device, progress bars)
are made by the functions below, so that their help text and rule are written once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from fastclr.errors import UsageError

__all__ = [
    "check_options",
    "device_option",
    "expected_arch_option",
    "flag",
    "knn_k_option",
    "knn_temperature_option",
    "legacy_option",
    "num_workers_option",
    "option",
    "progress_option",
    "resumed_options",
]

#: Neighbours of the kNN vote at most (Wu et al. 2018), and the vote's temperature; the rule of
#: :func:`fastclr.evaluate.knn_k_for` gives at most KNN_K.
KNN_K = 200
KNN_TEMPERATURE = 0.1


def flag(name: str) -> str:
    """The command-line flag of field ``name`` (``batch_size`` → ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    unset: str | None = None,
    at_least: int | None = None,
    at_most: float | None = None,
    positive: bool = False,
    non_negative: bool = False,
    below: float | None = None,
    why: str = "",
    cli: bool = True,
    required: bool = False,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with the metadata :mod:`fastclr.cli` and :func:`check_options` read.

    Args:
        default: the one default (library and command line alike).
        help: one line for ``--help``; the default is appended there.
        choices: the accepted values of a closed set.
        unset: what ``None`` means, for fields that may be left unset (an automatic rule).
        at_least: integers: the smallest accepted value.
        at_most: integers and numbers: the largest accepted value.
        positive: numbers: finite and > 0.
        non_negative: numbers: finite and >= 0.
        below: numbers: also < this bound.
        why: appended to the refusal of a value (why the rule exists).
        cli: whether the command line has a flag for it.
        required: no default: the field must be given (a required flag).
        parse: for a value of several kinds (an integer or a word, say): turns the command
            line's text into the value, and is also the check (it raises ``ValueError`` with
            the rule for a value it refuses).
    """
    meta: dict[str, Any] = {"help": help, "cli": cli, "required": required, "parse": parse}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if unset is not None:
        meta["unset"] = unset
    if at_least is not None:
        meta["at_least"] = at_least
    if at_most is not None:
        meta["at_most"] = at_most
    meta.update(positive=positive, non_negative=non_negative, below=below, why=why)
    if required:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def knn_k_option() -> Any:
    """``--knn-k``: neighbours of the kNN vote (unset: the class-size rule)."""
    return option(
        None,
        "neighbours that vote in the kNN",
        unset=f"15% of the smallest class's training images, at most {KNN_K}",
        at_least=1,
    )


def knn_temperature_option() -> Any:
    """``--knn-temperature``: temperature of the kNN vote's weights ``exp(sim / τ)``."""
    return option(KNN_TEMPERATURE, "temperature of the kNN vote", positive=True)


def num_workers_option() -> Any:
    """``--num-workers``: image-decoding worker processes (unset: the loader's rule)."""
    return option(
        None,
        "image-decoding worker processes (0: inline)",
        unset="auto: min(8, usable CPUs per local rank - 1) where files stream, 0 for data "
        "decoded once into memory and for DALI",
        at_least=0,
    )


def expected_arch_option(archs: Iterable[str]) -> Any:
    """``--arch`` of a command that reads a checkpoint: the architecture it must hold."""
    return option(
        None,
        "expected architecture, checked against the checkpoint's",
        choices=sorted(archs),
        unset="not checked",
    )


def device_option() -> Any:
    """``--device``: cpu, cuda, cuda:N (unset: CUDA when present)."""
    return option(None, "cpu, cuda, cuda:1, ...", unset="cuda if present, else cpu")


def legacy_option() -> Any:
    """``--allow-legacy-checkpoint``: read a checkpoint that carries no integrity digest."""
    return option(
        False,
        "read a checkpoint without an integrity digest (written before fastclr verified them; "
        "a damaged file can look like one, so only for files you trust)",
    )


def progress_option() -> Any:
    """``--no-progress`` turns the progress bars off."""
    return option(True, "progress bars")


def _scalar(hint: Any) -> Any:
    """``X | None`` → X; ``Literal[...]`` → str."""
    if typing.get_origin(hint) is Literal:
        return str
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _scalar(args[0]) if args else hint


def field_types(cls: type) -> dict[str, Any]:
    """The scalar type of every field of dataclass ``cls`` (int, float, str or bool)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _scalar(hints[f.name]) for f in dataclasses.fields(cls)}


def _refuse(name: str, rule: str, value: object, why: str) -> UsageError:
    return UsageError(f"{flag(name)} must be {rule}, got {value!r}{f': {why}' if why else ''}")


def _check_number(name: str, v: Any, kind: Any, meta: dict[str, Any]) -> None:
    why = meta.get("why", "")
    if kind is int:
        low, high = meta.get("at_least"), meta.get("at_most")
        rule = "an integer" + (f" >= {low}" if low is not None else "")
        rule += (" and" if low is not None else "") + f" <= {high}" if high is not None else ""
        bad = isinstance(v, bool) or not isinstance(v, int)
        if bad or (low is not None and v < low) or (high is not None and v > high):
            raise _refuse(name, rule, v, why)
        return
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    below, high = meta.get("below"), meta.get("at_most")
    upto = f" and <= {high:g}" if high is not None else ""
    too_high = ok and high is not None and v > high
    if meta.get("positive") and not (ok and v > 0 and not too_high):
        raise _refuse(name, f"a finite number > 0{upto}", v, why)
    if meta.get("non_negative") and not (ok and v >= 0 and not too_high):
        raise _refuse(name, f"a finite number >= 0{upto}", v, why)
    if too_high:
        raise _refuse(name, f"a finite number <= {high:g}", v, why)
    if not ok or (below is not None and v >= below):
        low = "0" if meta.get("positive") or meta.get("non_negative") else "-inf"
        raise _refuse(name, f"in [{low}, {below})" if below is not None else "finite", v, why)


def check_options(obj: Any) -> None:
    """Raise :class:`~fastclr.errors.UsageError` naming the first field of dataclass ``obj``
    whose value breaks the rule its :func:`option` metadata states (closed sets, numeric
    ranges; ``None`` is accepted where the field has an ``unset`` meaning)."""
    kinds = field_types(type(obj))
    for f in dataclasses.fields(obj):
        meta, v = dict(f.metadata), getattr(obj, f.name)
        if v is None and "unset" in meta:
            continue
        parse = meta.get("parse")
        if parse is not None:
            try:
                parse(str(v))
            except ValueError as e:
                raise _refuse(f.name, str(e), v, "") from None
            continue
        choices = meta.get("choices")
        if choices is not None:
            if v not in choices:
                raise UsageError(f"{flag(f.name)} must be one of {', '.join(choices)}; got {v!r}")
            continue
        kind = kinds[f.name]
        if kind is bool:
            if not isinstance(v, bool):
                raise _refuse(f.name, "true or false", v, "")
        elif kind in (int, float):
            _check_number(f.name, v, kind, meta)
        elif kind is str and (not isinstance(v, str) or not v.strip()):
            raise _refuse(f.name, "a non-empty string", v, "")


_Config = typing.TypeVar("_Config")


def _inherited(
    config_type: type,
    saved: dict[str, Any],
    plan: dict[str, Any] | None,
    per_invocation: frozenset[str],
) -> dict[str, Any]:
    """The options a resumed run takes from its checkpoint: the ``saved`` configuration's fields
    of ``config_type`` but the ``per_invocation`` ones, with ``data`` the folder the saved
    ``plan`` read (absolute, as the run saw it, whatever the working directory now)."""
    names = {f.name for f in dataclasses.fields(config_type)}
    inherited = {k: v for k, v in saved.items() if k in names and k not in per_invocation}
    root = plan.get("data_root") if plan is not None else None
    if isinstance(root, str) and inherited.get("data") != "digits":
        inherited["data"] = root
    return inherited


def _same(a: Any, b: Any, path: bool) -> bool:
    """Equal values, or (``path``) two spellings of one file or folder (the digits demo is a
    name, not a path)."""
    if a == b:
        return True
    if path and isinstance(a, str) and isinstance(b, str) and "digits" not in (a, b):
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def resumed_options(
    config_type: Callable[..., _Config],
    given: dict[str, Any],
    saved: dict[str, Any],
    checkpoint: str,
    plan: dict[str, Any] | None,
    *,
    per_invocation: frozenset[str],
    may_change: Callable[[str, _Config], bool],
    paths: Iterable[str] = ("data",),
    decided: Callable[[str, Any], Any] | None = None,
    shown: Callable[[str, Any], str] = lambda name, value: str(value),
) -> tuple[_Config, list[str]]:
    """The configuration of a resumed run of any command, and the changes it makes.

    Every option not in ``given`` (those passed explicitly) is the checkpoint's ``saved`` one,
    except the ``per_invocation`` ones; ``data`` is the folder the saved ``plan`` read. A given
    option that differs from the saved one (``paths`` compared as real paths) is refused with a
    :class:`~fastclr.errors.UsageError` naming the flag and both values, unless
    ``may_change(name, cfg)``; those come back as ``--flag old → new`` notes.

    Args:
        config_type: the command's configuration dataclass.
        decided: the value the saved run's rule gave an option it left unset
            (``decided(name, saved_value)``), compared instead of the unset value.
        shown: how a value is written in a note or an error.
    """
    inherited = _inherited(config_type, saved, plan, per_invocation)  # type: ignore[arg-type]
    cfg = config_type(**{**inherited, **given})
    notes = []
    for name in sorted(given):
        if name in per_invocation or name not in inherited:
            continue
        old, new = inherited[name], getattr(cfg, name)
        if decided is not None:
            old = decided(name, old)
        if _same(old, new, name in paths):
            continue
        if may_change(name, cfg):
            notes.append(f"{flag(name)} {shown(name, old)} → {shown(name, new)}")
            continue
        raise UsageError(
            f"{flag(name)} {shown(name, new)} differs from the {shown(name, old)} that "
            f"checkpoint {checkpoint} was trained with; an exact resume keeps it: leave "
            f"{flag(name)} out (the saved value is used), or start a new run with --out elsewhere"
        )
    return cfg, notes
