"""The ``fastclr`` command line: ``fastclr pretrain ...`` and ``fastclr linear-eval ...``.

With no options, ``fastclr pretrain`` trains a small ResNet-18 (width 0.25, CIFAR stem) on the
embedded digits for 15 epochs (16-px views, one CPU thread), about a minute on a CPU, and writes its
checkpoint, CSV logs and loss plot to ``runs/simclr``. Under torchrun it trains data-parallel.

The ``pretrain`` options are generated from the fields of
:class:`~fastclr.train.config.TrainConfig`: name, type, choices, help and defaults (including the
digits demo's) come from there, so every training option is reachable and each default is written
once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from fastclr.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from fastclr.downstream.export import add_export_arguments, run_export_command
from fastclr.evaluate import KNN_K, KNN_TEMPERATURE, evaluate_checkpoint
from fastclr.models import ARCHS
from fastclr.train import NonFiniteLossError, TrainConfig, pretrain
from fastclr.train.config import cli_defaults, resumed_config

__all__ = ["build_parser", "main", "pretrain_config", "resume_config"]


def _option_type(hint: Any) -> type:
    """The scalar type argparse converts to: ``X | None`` → X, ``Literal[...]`` → str."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Literal:
        return str
    if args:  # a union with None
        return _option_type(args[0])
    return hint if isinstance(hint, type) else str


def _show(value: Any, meta: Mapping[str, Any]) -> str:
    if value is None:
        return str(meta.get("unset", "none"))
    return str(value)


def _default_text(f: dataclasses.Field[Any]) -> str:
    """The default as ``--help`` shows it, once; by dataset where the digits demo differs."""
    meta = f.metadata
    digits, other = meta.get("digits", f.default), meta.get("other_data", f.default)
    if digits == other:
        return _show(digits, meta)
    return f"{_show(digits, meta)} for --data digits, else {_show(other, meta)}"


#: ``--resume`` given without a value: resume the ``--out`` folder.
_RESUME_OUT = ""


def _add_option(p: argparse.ArgumentParser, f: dataclasses.Field[Any], hint: Any) -> None:
    """One ``--flag`` for a :class:`TrainConfig` field (given flags only reach the namespace)."""
    meta, flag = f.metadata, f.name.replace("_", "-")
    kind = _option_type(hint)
    if kind is bool:  # a switch: it turns on what is off by default, or off what is on
        if meta.get("digits", f.default) != meta.get("other_data", f.default):
            p.add_argument(  # the default depends on the data: both directions
                f"--{flag}",
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{meta['help']} (default: {_default_text(f)})",
            )
            return
        on = not f.default
        p.add_argument(
            f"--{flag}" if on else f"--no-{flag}",
            dest=f.name,
            action="store_true" if on else "store_false",
            default=argparse.SUPPRESS,
            help=meta["help"] if on else f"turn off the {meta['help']}",
        )
        return
    text = f"{meta['help']} (default: {_default_text(f)})"
    bare: dict[str, Any] = {"nargs": "?", "const": _RESUME_OUT} if f.name == "resume" else {}
    p.add_argument(
        f"--{flag}",
        dest=f.name,
        type=kind,
        choices=meta.get("choices"),
        default=argparse.SUPPRESS,
        help=text.replace("%", "%%"),
        **bare,
    )


def _pretrain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pretrain",
        help="SimCLR pretraining",
        description="SimCLR pretraining (LARS, warm-up + cosine, NT-Xent). Where a default names "
        "--data digits, the embedded digits get a short demo recipe (about a minute on a CPU).",
    )
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        _add_option(p, f, hints[f.name])


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "linear-eval",
        help="linear-probe and kNN accuracy of a pretrained encoder",
        description="Linear-probe and kNN top-1 of a pretraining checkpoint's frozen encoder.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p.add_argument(
        "--data",
        default="digits",
        help="'digits' or a labelled image folder (default: %(default)s)",
    )
    p.add_argument(
        "--arch",
        choices=sorted(ARCHS),
        default=None,
        help="expected architecture, checked against the checkpoint (default: not checked)",
    )
    p.add_argument(
        "--knn-k",
        type=int,
        default=None,
        help=f"neighbours that vote (default: 15%% of the smallest class's training images, "
        f"at most {KNN_K})",
    )
    p.add_argument(
        "--knn-temperature",
        type=float,
        default=KNN_TEMPERATURE,
        help="temperature of the kNN vote (default: %(default)s)",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="image-decoding worker processes (default: auto, as for pretrain: 0 for a folder "
        "decoded in memory, min(8, usable CPUs - 1) for one whose features stream)",
    )
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if present, else cpu)"
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="turn off the progress bars (feature extraction, probe fitting)",
    )


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's pretrained encoder for torchvision or a Python without fastclr",
        description="Export a pretraining checkpoint's encoder: torchvision ResNet weights, plain "
        "state dicts with a metadata record, or TorchScript. The file is written atomically.",
    )
    add_export_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastclr`` parser with its ``pretrain`` and ``linear-eval`` subcommands."""
    parser = argparse.ArgumentParser(prog="fastclr", description="fast SimCLR")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    _eval_parser(sub)
    _export_parser(sub)
    for p in sub.choices.values():
        p.add_argument(
            "--debug",
            action="store_true",
            help=f"print the traceback of an error (or set {DEBUG_ENV}=1)",
        )
    return parser


def pretrain_config(args: argparse.Namespace) -> TrainConfig:
    """The run ``fastclr pretrain`` makes: given flags over the defaults for their ``--data``.

    With ``--resume``, the flags not given are the checkpoint's (:func:`resume_config`).
    """
    return resume_config(args)[0]


def resume_config(args: argparse.Namespace) -> tuple[TrainConfig, list[str]]:
    """:func:`pretrain_config`, and on resume the settings it changes from the checkpoint's.

    ``--resume`` alone resumes ``--out``; ``--resume PATH`` without ``--out`` resumes into the
    checkpoint's own folder. Every option not given is taken from the checkpoint's saved
    configuration; given ones are checked against it
    (:func:`~fastclr.train.config.resumed_config`).
    """
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name in args
    }
    if given.get("resume") is None:
        return TrainConfig(**{**cli_defaults(given.get("data", TrainConfig.data)), **given}), []
    if given.get("overwrite"):
        raise ValueError("--resume and --overwrite contradict each other: pass one of them")
    if given["resume"] == _RESUME_OUT:
        given["resume"] = given.get("out", TrainConfig.out)
    src = Path(given["resume"])
    path = src / CHECKPOINT_NAME if src.is_dir() else src
    given.setdefault("out", str(path.parent))
    saved = load_checkpoint(path).get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds no run configuration to --resume")
    return resumed_config(given, saved, str(path))


def _run_pretrain(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg, changes = resume_config(args)
    if cfg.resume and _is_main():
        changed = f"; changed: {', '.join(changes)}" if changes else ""
        print(f"resuming {cfg.resume} with the settings it was started with{changed}")
    result = pretrain(cfg)
    if result.already_finished and _is_main():
        print(
            f"the run in {result.out} is already finished ({result.epochs_done}/{cfg.epochs} "
            f"epochs, {result.global_step} steps); nothing to do. Pass a larger --epochs to "
            "train it further."
        )
    elif result.out and _is_main():
        knn = "n/a" if result.knn_top1 is None else f"{result.knn_top1:.2%}"
        print(
            f"done: {result.epochs_done} epochs, {result.global_step} steps in "
            f"{time.perf_counter() - t0:.1f}s; final loss {result.last_loss:.4f}; "
            f"kNN top-1 {knn}; checkpoint {result.out / CHECKPOINT_NAME}"
        )
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _run_eval(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    r = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        arch=args.arch,
        device=args.device,
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature,
        num_workers=args.num_workers,
        progress=args.progress,
        header=True,
    )
    print(
        f"{r.arch} on {r.data} ({r.n_train} train / {r.n_test} held-out): "
        f"linear top-1 {r.linear_top1:.2%}  kNN top-1 {r.knn_top1:.2%}  "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return 0


#: Exit statuses: a user mistake (bad argument, foreign or corrupted file, existing run) is 2,
#: like argparse's own errors; a failure while running (disk full, read-only folder, a NaN loss,
#: a bug) is 1; Ctrl-C is 130.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130
DEBUG_ENV = "FASTCLR_DEBUG"


def _explain(e: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message for an exception that ends a command."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, CheckpointError | ValueError | ImportError):
        return EXIT_USAGE, first
    if isinstance(e, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return EXIT_USAGE, first
    if isinstance(e, NonFiniteLossError):
        return EXIT_FAILURE, first
    if isinstance(e, OSError):
        text = e.strerror or first
        if e.filename and str(e.filename) not in text:
            text = f"{text}: {e.filename}"
        return EXIT_FAILURE, text
    return EXIT_FAILURE, (
        f"unexpected {type(e).__name__}: {first} (a fastclr bug? run again with --debug or "
        f"{DEBUG_ENV}=1 for the traceback)"
    )


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    return f"fastclr: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastclr`` console script; returns the exit status.

    Errors end the command with one line on stderr (``fastclr <command>: error: ...``) and the
    status :data:`EXIT_USAGE` or :data:`EXIT_FAILURE`; the traceback is printed too with
    ``--debug`` or ``FASTCLR_DEBUG=1``.
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    format_warning = warnings.formatwarning
    if not debug:  # warnings as one line each, without the source line that raised them
        warnings.formatwarning = _one_line_warning
    try:
        if args.command == "pretrain":
            return _run_pretrain(args)
        if args.command == "export":
            return run_export_command(args)
        return _run_eval(args)
    except KeyboardInterrupt:
        print("fastclr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            traceback.print_exc()
        code, message = _explain(e)
        print(f"fastclr {args.command}: error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = format_warning
