"""The ``fastclr`` command line: ``fastclr pretrain ...`` and ``fastclr linear-eval ...``.

With no options, ``fastclr pretrain`` trains a small ResNet-18 (width 0.25, CIFAR stem) on the
embedded digits for 15 epochs (16-px views, one CPU thread), about a minute on a CPU, and writes its
checkpoint, CSV logs and loss plot to ``runs/simclr``. Under torchrun it trains data-parallel.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from fastclr.models import ARCHS, STEMS
from fastclr.train.config import LOADERS, PRECISIONS

__all__ = ["main"]

# Defaults for the embedded digits (1,438 training images, 8×8 originals stored at 32 px): 16-px
# views of a quarter-width ResNet-18 keep the whole run near a minute on two CPU cores. The
# paper's LARS rate (0.3 × 128/256) moves the weights by ~0.005% a step, made for thousands of
# steps; the ~165-step demo uses lr 6 so that the loss visibly falls. Other data: paper defaults.
DIGITS_DEFAULTS: dict[str, float | None] = {
    "width": 0.25,
    "epochs": 15,
    "batch_size": 128,
    "image_size": 16,
    "lr": 6.0,
    # one intra-op thread: on ops this small OpenMP barriers cost more than the work, and on a
    # shared (oversubscribed) CPU two threads made each step 5-10× slower in our measurements
    "threads": 1,
}
GENERAL_DEFAULTS: dict[str, float | None] = {
    "width": 1.0,
    "epochs": 100,
    "batch_size": 256,
    "image_size": 224,
    "lr": None,
    "threads": None,
}


def _pretrain_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pretrain",
        help="SimCLR pretraining",
        description="SimCLR pretraining (LARS, warm-up + cosine, NT-Xent). Defaults in brackets "
        "marked 'digits' apply to --data digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", choices=sorted(ARCHS), default="resnet18")
    p.add_argument(
        "--stem",
        choices=STEMS,
        default=None,
        help="default: cifar for images <= 64 px, else imagenet",
    )
    p.add_argument(
        "--width", type=float, default=None, help="channel multiplier (digits: 0.25, else 1)"
    )
    p.add_argument("--data", default="digits", help="'digits' or an image folder")
    p.add_argument(
        "--batch-size", type=int, default=None, help="global batch (digits: 128, else 256)"
    )
    p.add_argument("--epochs", type=int, default=None, help="digits: 15, else 100")
    p.add_argument(
        "--lr", type=float, default=None, help="digits: 6, else the paper's 0.3 × batch / 256"
    )
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--warmup-epochs", type=float, default=10.0, help="at most 10%% of the run")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU",
    )
    p.add_argument("--augment-backend", default="auto")
    p.add_argument(
        "--augment-preset",
        choices=("auto", "cifar", "imagenet", "digits"),
        default="auto",
        help="auto: digits for --data digits, else cifar (<= 64 px) or imagenet",
    )
    p.add_argument(
        "--loss-backend", choices=("auto", "reference", "native", "triton"), default="auto"
    )
    p.add_argument("--out", default="runs/simclr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default=None, help="checkpoint file or run folder")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--num-workers", type=int, default=0, help="image-decoding worker processes (0: inline)"
    )
    p.add_argument(
        "--loader",
        choices=LOADERS,
        default="auto",
        help="memory: decode the folder once into RAM; stream: decode each batch in "
        "--num-workers processes; dali: NVIDIA DALI (nvJPEG on CUDA); auto: memory for digits "
        "and small folders of small square images, else dali on CUDA when installed, else stream",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="size of the training views (digits: 16, else 224)",
    )
    p.add_argument("--head-bn", action="store_true", help="BatchNorm in the projection head")
    p.add_argument("--limit-steps", type=int, default=None, help="cap steps per epoch")
    p.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="end this run after N epochs (resume later)",
    )
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU intra-op threads (digits: 1, else torch's)"
    )


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "linear-eval",
        help="linear-probe and kNN accuracy of a pretrained encoder",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    p.add_argument("--data", default="digits", help="'digits' or a labelled image folder")
    p.add_argument(
        "--arch",
        choices=sorted(ARCHS),
        default=None,
        help="expected architecture (checked against the checkpoint)",
    )
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--knn-temperature", type=float, default=0.1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastclr", description="fast SimCLR")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    _eval_parser(sub)
    return parser


def _run_pretrain(args: argparse.Namespace) -> int:
    from fastclr.train import TrainConfig, pretrain

    defaults = DIGITS_DEFAULTS if args.data == "digits" else GENERAL_DEFAULTS
    image_size = args.image_size or int(defaults["image_size"] or 0)
    cfg = TrainConfig(
        arch=args.arch,
        stem=args.stem or ("cifar" if image_size <= 64 else "imagenet"),
        width=args.width if args.width is not None else float(defaults["width"] or 1.0),
        data=args.data,
        image_size=image_size,
        batch_size=args.batch_size or int(defaults["batch_size"] or 0),
        epochs=args.epochs or int(defaults["epochs"] or 0),
        lr=args.lr if args.lr is not None else defaults["lr"],
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        temperature=args.temperature,
        head_bn=args.head_bn,
        precision=args.precision,
        augment_backend=args.augment_backend,
        augment_preset=args.augment_preset,
        loss_backend=args.loss_backend,
        out=args.out,
        seed=args.seed,
        resume=args.resume,
        compile=args.compile,
        num_workers=args.num_workers,
        loader=args.loader,
        limit_steps=args.limit_steps,
        stop_after_epochs=args.stop_after_epochs,
        log_every=args.log_every,
        progress=not args.no_progress,
        device=args.device,
    )
    threads = args.threads if args.threads is not None else defaults["threads"]
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    result = pretrain(cfg)
    if result.out and _is_main():
        knn = "n/a" if result.knn_top1 is None else f"{result.knn_top1:.2%}"
        print(
            f"done: {result.epochs_done} epochs, {result.global_step} steps in "
            f"{time.perf_counter() - t0:.1f}s; final loss {result.last_loss:.4f}; "
            f"kNN top-1 {knn}; checkpoint {result.out / 'checkpoint.pt'}"
        )
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _run_eval(args: argparse.Namespace) -> int:
    from fastclr.evaluate import evaluate_checkpoint

    t0 = time.perf_counter()
    r = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        arch=args.arch,
        device=args.device,
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature,
        num_workers=args.num_workers,
    )
    print(
        f"{r.arch} on {r.data} ({r.n_train} train / {r.n_test} held-out): "
        f"linear top-1 {r.linear_top1:.2%}  kNN top-1 {r.knn_top1:.2%}  "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastclr`` console script; returns the exit status."""
    from fastclr.train import CheckpointError, NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            return _run_pretrain(args)
        return _run_eval(args)
    except (
        CheckpointError,
        NonFiniteLossError,
        FileNotFoundError,
        NotADirectoryError,
        ValueError,
    ) as e:
        print(f"fastclr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastclr: interrupted", file=sys.stderr)
        return 130
