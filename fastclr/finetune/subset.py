"""The labelled subset of semi-supervised fine-tuning: ``--labels``, a class-balanced seeded draw,
and the file list that records it in the run folder.

SimCLR (Chen et al. 2020, Section 6 / Table 7) fine-tunes on 1% and 10% of ImageNet's labels,
"sampled in a class-balanced way" (~12.8 and ~128 images a class), and publishes the lists so
that others use the same images. Here:

* :func:`parse_labels`: ``--labels`` as ``P%`` (0 < P <= 100) or ``N-per-class``;
* :func:`choose_labelled`: which training images are labelled. A fraction labels
  ``K = round(P% of N)`` images spread as evenly over the classes as their sizes allow (each class
  ``floor(K/C)`` or one more; a class with fewer images gives all it has and the rest go to the
  others); ``N-per-class`` labels N of every class. Within a class the images are ranked by
  SHA-256 of ``"seed:image id"``, so a seed gives the same subset on every machine and library
  version, and one listed in another order;
* :func:`write_subset` / :func:`read_subset` / :func:`resolve_subset`: the file list,
  ``labelled.txt`` in the run folder: two comment lines (how it was drawn), then one
  ``<image id>\\t<class>`` line per labelled image, image ids being paths relative to the data
  folder (or whatever ids the caller uses, such as ``digits/123``).

Only training images are ever drawn: the caller passes the training part (never ``val/`` or the
held-out split), so validation images cannot enter the labelled subset.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SUBSET_FILE",
    "LabelSpec",
    "LabelledSubset",
    "choose_labelled",
    "parse_labels",
    "read_subset",
    "resolve_subset",
    "write_subset",
]

#: Name of the file list in the run folder.
SUBSET_FILE = "labelled.txt"
_HEADER = "# fastclr labelled subset:"
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")
_PER_CLASS = re.compile(r"^\s*(\d+)\s*-per-class\s*$")
_FORMS = (
    "a percentage of the training images such as 1% or 10% (more than 0, at most 100%), or "
    "N-per-class such as 4-per-class"
)


@dataclass(frozen=True)
class LabelSpec:
    """A parsed ``--labels``: exactly one of ``fraction`` (in (0, 1]) and ``per_class`` is set."""

    text: str
    fraction: float | None = None
    per_class: int | None = None

    def __str__(self) -> str:
        return self.text


def parse_labels(text: str) -> LabelSpec:
    """``--labels`` → :class:`LabelSpec`; ``ValueError`` naming ``--labels`` for anything else.

    Accepts ``P%`` with 0 < P <= 100 (``1%``, ``10%``, ``0.5%``, ``100%``) and ``N-per-class``
    with N >= 1. A bare number is refused (is ``0.01`` one percent or a hundredth of one?).

    Example:
        >>> parse_labels("1%").fraction
        0.01
        >>> parse_labels("4-per-class").per_class
        4
    """
    if not isinstance(text, str):
        raise ValueError(f"--labels must be {_FORMS}; got {text!r}")
    m = _PERCENT.match(text)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ValueError(
                f"--labels {text.strip()}: the labelled fraction must be more than 0% and at "
                "most 100%"
            )
        return LabelSpec(f"{pct:g}%", fraction=pct / 100)
    m = _PER_CLASS.match(text)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ValueError(f"--labels {text.strip()}: at least 1 labelled image per class")
        return LabelSpec(f"{n}-per-class", per_class=n)
    hint = ""
    try:
        value = float(text)
        hint = f" (for a fraction write {value * 100:g}%)" if 0 < value <= 1 else ""
    except ValueError:
        pass
    raise ValueError(f"--labels must be {_FORMS}; got {text!r}{hint}")


@dataclass(frozen=True)
class LabelledSubset:
    """The labelled images: positions in the training part, and how they were drawn."""

    #: positions of the labelled images in the training part, ascending
    indices: tuple[int, ...]
    #: labelled images per class (class index → count)
    per_class: tuple[int, ...]
    spec: LabelSpec
    seed: int
    n_train: int

    @property
    def fraction(self) -> float:
        """Labelled images / training images."""
        return len(self.indices) / self.n_train

    def describe(self) -> str:
        """One line: how many images of how many, per class."""
        lo, hi = min(self.per_class), max(self.per_class)
        each = f"{lo}" if lo == hi else f"{lo} to {hi}"
        return (
            f"{len(self.indices):,} of {self.n_train:,} training images ({self.fraction:.2%}), "
            f"{each} per class over {len(self.per_class)} classes"
        )


def _rank(seed: int, key: str) -> bytes:
    """The seeded order of ids: SHA-256 of ``"seed:key"`` (same on every machine)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def _quotas(counts: Sequence[int], total: int, order: Sequence[int]) -> list[int]:
    """``total`` images spread evenly over classes of ``counts`` images (water-filling); the
    classes first in ``order`` take the remainder that does not divide evenly."""
    alloc = [0] * len(counts)
    left = total
    while left > 0:
        open_ = [c for c in order if alloc[c] < counts[c]]
        share = left // len(open_)
        if share == 0:
            for c in open_[:left]:
                alloc[c] += 1
            break
        for c in open_:
            give = min(share, counts[c] - alloc[c])
            alloc[c] += give
            left -= give
    return alloc


def _check_inputs(ids: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> None:
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} image ids but {len(labels)} labels")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    bad = [y for y in labels if not 0 <= int(y) < len(classes)]
    if bad:
        raise ValueError(f"label {bad[0]} is outside the {len(classes)} classes")


def choose_labelled(
    ids: Sequence[str],
    labels: Sequence[int],
    classes: Sequence[str],
    spec: LabelSpec,
    seed: int,
) -> LabelledSubset:
    """The class-balanced, seeded labelled subset of a training part.

    Args:
        ids: a unique id per training image (its path relative to the data folder, say).
        labels: class index of each image, in ``range(len(classes))``.
        classes: class names (every class must have training images).
        spec: :func:`parse_labels`'s result.
        seed: the draw's seed; the same seed and images give the same subset anywhere.

    Returns:
        :class:`LabelledSubset`.

    Raises:
        ValueError: fewer labelled images than classes, a class without training images, a
            class with fewer images than ``N-per-class``.
    """
    _check_inputs(ids, labels, classes)
    members: list[list[int]] = [[] for _ in classes]
    for i, y in enumerate(labels):
        members[int(y)].append(i)
    empty = [classes[c] for c, m in enumerate(members) if not m]
    if empty:
        raise ValueError(f"class {empty[0]!r} has no training images to label")
    counts = [len(m) for m in members]
    quotas = _class_quotas(counts, classes, spec, seed)
    chosen: list[int] = []
    for m, q in zip(members, quotas, strict=True):
        chosen += sorted(m, key=lambda i: _rank(seed, ids[i]))[:q]
    return LabelledSubset(tuple(sorted(chosen)), tuple(quotas), spec, seed, len(ids))


def _class_quotas(
    counts: list[int], classes: Sequence[str], spec: LabelSpec, seed: int
) -> list[int]:
    """Labelled images per class for ``spec``, or ``ValueError`` saying why there can be none."""
    n, c = sum(counts), len(counts)
    if spec.per_class is not None:
        short = [(classes[i], k) for i, k in enumerate(counts) if k < spec.per_class]
        if short:
            name, k = short[0]
            more = f"; {len(short)} classes have fewer" if len(short) > 1 else ""
            raise ValueError(
                f"--labels {spec}: class {name!r} has only {k} training image(s){more}"
            )
        return [spec.per_class] * c
    assert spec.fraction is not None
    total = min(n, math.floor(spec.fraction * n + 0.5))
    if total < c:
        need = 100 * c / n
        raise ValueError(
            f"--labels {spec} of {n:,} training images is {total} labelled image(s), fewer than "
            f"the {c} classes: at least one a class needs --labels {need:.3g}% or more "
            "(or use 1-per-class)"
        )
    order = sorted(range(c), key=lambda k: _rank(seed, f"class:{classes[k]}"))
    return _quotas(counts, total, order)


def write_subset(
    folder: str | os.PathLike[str],
    subset: LabelledSubset,
    ids: Sequence[str],
    labels: Sequence[int],
    classes: Sequence[str],
) -> Path:
    """Write ``folder/labelled.txt`` atomically; returns its path.

    ``ValueError`` for an id or class name holding a tab or a line break (the format's
    separators).
    """
    from fastclr.atomic import write_atomic

    rows = [(ids[i], classes[int(labels[i])]) for i in subset.indices]
    for text in {t for row in rows for t in row}:
        if any(ch in text for ch in "\t\r\n"):
            raise ValueError(f"cannot list {text!r}: ids and class names hold no tabs or newlines")
    lines = [
        f"{_HEADER} --labels {subset.spec} --seed {subset.seed}",
        f"# {subset.describe()}",
        *(f"{i}\t{c}" for i, c in rows),
    ]
    path = Path(folder) / SUBSET_FILE
    write_atomic(path, ("\n".join(lines) + "\n").encode(), overwrite=True)
    return path


@dataclass(frozen=True)
class SubsetFile:
    """A read file list: the ``--labels`` and ``--seed`` it records, and its (id, class) rows."""

    path: Path
    labels: str
    seed: int | None
    rows: tuple[tuple[str, str], ...]


def read_subset(path: str | os.PathLike[str]) -> SubsetFile:
    """Read a file list (``labelled.txt`` of a run folder, or the file itself).

    Raises:
        ValueError: missing file, or a line that is not ``<id>\\t<class>`` (line number named),
            or an id listed twice.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SUBSET_FILE
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"labelled subset {p} cannot be read: {e}") from e
    labels, seed = "", None
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(_HEADER):
            m = re.search(r"--labels (\S+) --seed (-?\d+)", line)
            if m:
                labels, seed = m.group(1), int(m.group(2))
            continue
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"labelled subset {p}, line {n}: expected '<image id><TAB><class>'")
        rows.append((parts[0], parts[1]))
    seen: set[str] = set()
    for i, _ in rows:
        if i in seen:
            raise ValueError(f"labelled subset {p} lists {i!r} twice")
        seen.add(i)
    return SubsetFile(p, labels, seed, tuple(rows))


def resolve_subset(
    listed: SubsetFile, ids: Sequence[str], labels: Sequence[int], classes: Sequence[str]
) -> tuple[int, ...]:
    """Positions in the training part of the images a file list names, checked against it.

    Raises:
        ValueError: an id that is not a training image here, or listed under another class
            (the first one named), or an empty list.
    """
    if not listed.rows:
        raise ValueError(f"labelled subset {listed.path} lists no images")
    where = {i: k for k, i in enumerate(ids)}
    out = []
    for image, cls in listed.rows:
        k = where.get(image)
        if k is None:
            raise ValueError(
                f"labelled subset {listed.path} lists {image!r}, which is not among the "
                f"{len(ids):,} training images"
            )
        have = classes[int(labels[k])]
        if have != cls:
            raise ValueError(
                f"labelled subset {listed.path} lists {image!r} as class {cls!r}, but it is "
                f"in class {have!r} here"
            )
        out.append(k)
    return tuple(sorted(out))
