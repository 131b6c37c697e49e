"""The ``fastclr`` command line: ``fastclr pretrain``, ``linear-eval`` and ``export``.

With no options, ``fastclr pretrain`` trains a small ResNet-18 (width 0.25, CIFAR stem) on the
embedded digits for 15 epochs (16-px views, one CPU thread), about a minute on a CPU, and writes its
checkpoint, CSV logs and loss plot to ``runs/simclr``. Under torchrun it trains data-parallel.

Every command's options are generated from the fields of its configuration dataclass
(:class:`~fastclr.train.config.TrainConfig`, :class:`~fastclr.evaluate.EvalConfig`): name, type,
choices, help and default come from there (:mod:`fastclr.options`), so every option is reachable,
each default is written once, and the library and the command line share it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from fastclr.checkpoint import CHECKPOINT_NAME, RESUME_OUT, CheckpointError, read_resumed
from fastclr.distributed import is_main
from fastclr.downstream.export import ExportConfig, run_export
from fastclr.errors import UsageError
from fastclr.evaluate import EvalConfig, evaluate_checkpoint
from fastclr.finetune.command import run_finetune
from fastclr.finetune.config import FinetuneConfig
from fastclr.options import field_types, flag
from fastclr.train import NonFiniteLossError, TrainConfig, pretrain
from fastclr.train.config import resumed_config
from fastclr.train.header import finished_line, resuming_line

__all__ = [
    "add_options",
    "build_parser",
    "main",
    "pretrain_config",
    "resume_config",
    "run",
]


def _default_text(f: dataclasses.Field[Any]) -> str:
    """The default as ``--help`` shows it: the value, or what leaving it unset means."""
    if f.default is None:
        return str(f.metadata.get("unset", "none"))
    return str(f.default)


def _add_option(p: argparse.ArgumentParser, f: dataclasses.Field[Any], kind: type) -> None:
    """One flag for a config field (given flags only reach the namespace)."""
    meta, name = f.metadata, flag(f.name)
    text = f"{meta['help']} (default: {_default_text(f)})".replace("%", "%%")
    common: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
    if kind is bool and f.default is None:  # on, off, or decided by a rule
        p.add_argument(name, action=argparse.BooleanOptionalAction, help=text, **common)
    elif kind is bool:  # a switch turning on what is off by default, or off what is on
        on = not f.default
        p.add_argument(
            name if on else "--no-" + name[2:],
            action="store_true" if on else "store_false",
            help=meta["help"] if on else f"turn off the {meta['help']}",
            **common,
        )
    elif meta.get("required"):
        p.add_argument(
            name,
            type=kind,
            choices=meta.get("choices"),
            required=True,
            help=meta["help"],
            dest=f.name,
        )
    else:
        extra: dict[str, Any] = {"nargs": "?", "const": RESUME_OUT} if f.name == "resume" else {}
        convert = _converter(meta["parse"]) if meta.get("parse") else kind
        p.add_argument(
            name, type=convert, choices=meta.get("choices"), help=text, **common, **extra
        )


def _converter(parse: Any) -> Any:
    """argparse's ``type=`` for an option with its own parser: its rule as the message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"must be {e}, got {text!r}") from None

    return convert


def add_options(p: argparse.ArgumentParser, config: type) -> None:
    """One flag per field of the options dataclass ``config`` (:mod:`fastclr.options`): its
    type, choices and help, with the default written once, in the dataclass."""
    kinds = field_types(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("cli", True):
            _add_option(p, f, kinds[f.name])


def _given(args: argparse.Namespace, config: type) -> dict[str, Any]:
    """The fields of ``config`` whose flags were given."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if f.name in args}


def build_parser() -> argparse.ArgumentParser:
    """The ``fastclr`` parser with its ``pretrain``, ``linear-eval`` and ``export`` commands."""
    parser = argparse.ArgumentParser(prog="fastclr", description="fast SimCLR")
    sub = parser.add_subparsers(dest="command", required=True)
    add_options(
        sub.add_parser(
            "pretrain",
            help="SimCLR pretraining",
            description="SimCLR pretraining (LARS, warm-up + cosine, NT-Xent). Settings left "
            "unset are decided by stated rules and printed with their reasons when the run "
            "starts; with --data digits (the default) they make a demo of about a minute on a "
            "CPU.",
        ),
        TrainConfig,
    )
    add_options(
        sub.add_parser(
            "linear-eval",
            help="linear-probe and kNN accuracy of a pretrained encoder",
            description="Linear-probe and kNN top-1 of a pretraining checkpoint's frozen encoder.",
        ),
        EvalConfig,
    )
    add_options(
        sub.add_parser(
            "export",
            help="write a run's pretrained encoder for torchvision or a Python without fastclr",
            description="Export a pretraining checkpoint's encoder: torchvision ResNet weights, "
            "plain state dicts with a metadata record, or TorchScript. The file is written "
            "atomically.",
        ),
        ExportConfig,
    )
    add_options(
        sub.add_parser(
            "finetune",
            help="fine-tune a pretrained network on a few labels (or train it from scratch)",
            description="SimCLR's semi-supervised fine-tuning (paper, App. B.5): a "
            "class-balanced labelled subset (written to OUT/labelled.txt), LARS on the weights "
            "(--optimizer sgd: the paper's Nesterov SGD), crop + flip; validation top-1/top-5 "
            "after every epoch. Settings left unset are decided "
            "by stated rules and printed with their reasons; the last line is 'top-1 NN.NN%'.",
        ),
        FinetuneConfig,
    )
    for p in sub.choices.values():
        p.add_argument(
            "--debug",
            action="store_true",
            help=f"print the traceback of an error (or set {DEBUG_ENV}=1)",
        )
    return parser


def pretrain_config(args: argparse.Namespace) -> TrainConfig:
    """The run ``fastclr pretrain`` makes: the given flags over the defaults.

    With ``--resume``, the flags not given are the checkpoint's (:func:`resume_config`).
    """
    return resume_config(args)[0]


def resume_config(
    args: argparse.Namespace,
) -> tuple[TrainConfig, list[str], dict[str, Any] | None]:
    """:func:`pretrain_config`, and on resume the settings it changes from the checkpoint's
    and the checkpoint itself (read once, here, and handed to the run).

    ``--resume`` alone resumes ``--out``; ``--resume PATH`` without ``--out`` resumes into the
    checkpoint's own folder. Every option not given is taken from the checkpoint's saved
    configuration; given ones are checked against it
    (:func:`~fastclr.train.config.resumed_config`).
    """
    given = _given(args, TrainConfig)
    if given.get("resume") is None:
        return TrainConfig(**given), [], None
    path, checkpoint = read_resumed(given, TrainConfig.out)
    if checkpoint.get("kind") == "finetune":
        raise UsageError(f"{path} is a fine-tuning run: resume it with fastclr finetune --resume")
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds no run configuration to --resume")
    plan = checkpoint.get("plan")
    cfg, changes = resumed_config(given, saved, str(path), plan if isinstance(plan, dict) else None)
    return cfg, changes, checkpoint


def _run_pretrain(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg, changes, checkpoint = resume_config(args)
    if cfg.resume and is_main():
        print(resuming_line(cfg.resume, changes))
    result = pretrain(cfg, checkpoint=checkpoint)
    if result.already_finished and is_main():
        print(finished_line(result.out, result.epochs_done, result.global_step))
    elif result.out and is_main():
        knn = "n/a" if result.knn_top1 is None else f"{result.knn_top1:.2%}"
        print(
            f"done: {result.epochs_done} epochs, {result.global_step} steps in "
            f"{time.perf_counter() - t0:.1f}s; final loss {result.last_loss:.4f}; "
            f"kNN top-1 {knn}; checkpoint {result.out / CHECKPOINT_NAME}"
        )
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg = EvalConfig(**_given(args, EvalConfig))
    r = evaluate_checkpoint(**dataclasses.asdict(cfg), header=True)
    print(
        f"{r.arch} on {r.data} ({r.n_train} train / {r.n_test} held-out): "
        f"linear top-1 {r.linear_top1:.2%}  kNN top-1 {r.knn_top1:.2%}  "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return 0


#: Exit statuses: a user mistake (a :class:`~fastclr.errors.UsageError`: bad argument, unusable
#: data, existing run; a foreign or corrupted checkpoint; a missing file) is 2, like argparse's
#: own errors; a failure while running (disk full, read-only folder, a NaN loss, a bug) is 1;
#: a run stopped by Ctrl-C is 130 and by SIGTERM 143 (128 + the signal), as shells expect.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 128 + signal.SIGINT
DEBUG_ENV = "FASTCLR_DEBUG"


def _explain(e: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message for an exception that ends a command."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, UsageError | CheckpointError):
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
    text = str(message)  # library warnings name fastclr themselves; the CLI's prefix says it once
    return f"fastclr: warning: {text.removeprefix('fastclr: ')}\n"


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
        if args.command == "finetune":
            return run_finetune(_given(args, FinetuneConfig))
        if args.command == "export":
            return run_export(ExportConfig(**_given(args, ExportConfig)))
        return _run_eval(args)
    except KeyboardInterrupt as e:
        signum = int(getattr(e, "signum", signal.SIGINT))
        name = "terminated" if signum == signal.SIGTERM else "interrupted"
        print(f"fastclr: {name}", file=sys.stderr)
        return 128 + signum
    except Exception as e:
        if debug:
            traceback.print_exc()
        code, message = _explain(e)
        print(f"fastclr {args.command}: error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = format_warning


def run() -> int:
    """The console script: :func:`main` on ``sys.argv``, after which further Ctrl-C are ignored,
    so that a second Ctrl-C during the interpreter's shutdown (DataLoader workers, atexit
    handlers) cannot print a traceback or turn the exit status into -2."""
    try:
        return main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
