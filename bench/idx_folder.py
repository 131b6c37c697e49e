"""An image folder from IDX files (the format of MNIST, Fashion-MNIST, KMNIST and EMNIST).

    python bench/idx_folder.py SRC OUT --train-per-class 500 --val-per-class 100

``SRC`` holds the four files of such a data set (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; ``.idx3-ubyte``
spellings and ``.gz`` copies are found too). ``OUT/train/<label>/`` gets the first
``--train-per-class`` images of each class of the training file, in file order, and
``OUT/val/<label>/`` the first ``--val-per-class`` of each class of the test file, as grayscale
PNGs: the ImageNet layout every fastclr command reads (``pretrain`` ignores the labels, ``finetune``
and the semi-supervised suite score on ``val/``). Taking the first images of each class, rather
than a random draw, makes the folder the same wherever it is built from the same files.

The suite uses it for a second 28-px grayscale folder beside scikit-learn's digits:
``python bench/quality.py --suite semi --folder OUT``.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

SPLITS = {"train": "train", "val": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """The array an IDX file holds (unsigned bytes only, the type image data sets use)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (it does not start with two zero bytes)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX type 0x{raw[2]:02x}; only unsigned bytes (0x08) are read")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    size = int(np.prod(shape)) if shape else 0
    if len(raw) - start != size:
        have = len(raw) - start
        raise ValueError(f"{path}: header says {shape} ({size} bytes), the file has {have}")
    return np.frombuffer(raw, np.uint8, size, start).reshape(shape)


def find(src: Path, prefix: str, kind: str) -> Path:
    """The file for ``prefix`` (train / t10k) and ``kind`` (images / labels) under ``src``."""
    dims = 3 if kind == "images" else 1
    for sep in ("-", "."):
        for gz in ("", ".gz"):
            p = src / f"{prefix}-{kind}{sep}idx{dims}-ubyte{gz}"
            if p.is_file():
                return p
    raise FileNotFoundError(f"SRC {src}: no {prefix}-{kind}-idx{dims}-ubyte (or .gz) there")


def first_per_class(labels: np.ndarray, per_class: int, what: str = "") -> np.ndarray:
    """Indices of the first ``per_class`` items of every class, in file order (``what`` names
    the option that asked, for the error)."""
    keep = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise ValueError(f"class {c} has {len(where)} images, fewer than {what}{per_class}")
        keep.append(where[:per_class])
    return np.sort(np.concatenate(keep))


def export(src: Path, out: Path, per_class: dict[str, int]) -> dict[str, int]:
    """Write ``out/{train,val}/<label>/NNNNN.png``; returns the image count of each split."""
    from PIL import Image

    chosen = {}
    for split, prefix in SPLITS.items():  # every check before the first file is written
        images = read_idx(find(src, prefix, "images"))
        labels = read_idx(find(src, prefix, "labels"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{prefix}: images {images.shape} and labels {labels.shape} do not pair up"
            )
        idx = first_per_class(labels, per_class[split], f"--{split}-per-class ")
        chosen[split] = (images, labels, idx)
    for split, (images, labels, idx) in chosen.items():
        for i in idx:
            folder = out / split / str(int(labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")
    return {split: len(idx) for split, (_, _, idx) in chosen.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="folder holding the four IDX files")
    p.add_argument("out", type=Path, help="image folder to create (must not exist)")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    a = p.parse_args(argv)
    for name in ("train_per_class", "val_per_class"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.out.exists():
        p.error(f"OUT {a.out} exists; give a new folder")
    try:
        counts = export(a.src, a.out, {"train": a.train_per_class, "val": a.val_per_class})
    except (OSError, ValueError) as e:
        p.error(str(e))
    print(f"{a.out}: train/ {counts['train']} images, val/ {counts['val']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
