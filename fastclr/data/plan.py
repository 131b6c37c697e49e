"""The data plan: what a run reads, listed once and split once.

:func:`plan_data` turns ``--data`` into a :class:`DataPlan` before anything is decoded: the
embedded digits, an in-memory :class:`~fastclr.data.ImageData`, or an image folder, listed once
(:func:`~fastclr.data.files.list_image_folder`) and split once (:mod:`fastclr.data.split`).
Pretraining (its loader and kNN monitor), ``linear-eval`` and fine-tuning all read the same plan,
so they agree on which files are trained on and which are held out.

Folder layouts:

* ``ROOT/train`` + ``ROOT/val``: the folder's own split;
* ``ROOT/train`` with class subfolders and no ``val``: ``ROOT/train`` is the data, 10% of each
  class held out (not one class named "train");
* ``ROOT/<class>/...``: 10% of each class held out; a flat folder of images: no labels, nothing
  held out;
* ``ROOT/val`` without ``ROOT/train`` is refused (:class:`~fastclr.errors.UsageError`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastclr.data.files import FolderListing, list_image_folder
from fastclr.data.headers import HeaderProbe, probe_headers
from fastclr.data.memory import DIGITS_SIZE, ImageData, decode_split, load_digits
from fastclr.data.split import FOLDER_HELDOUT_FRACTION, FileSet, split_listing
from fastclr.data.summary import DataSummary
from fastclr.errors import UsageError

__all__ = ["DataPlan", "load_data", "load_image_folder", "plan_data"]


@dataclass
class DataPlan:
    """What a run reads (module docstring).

    Attributes:
        name: what ``--data`` named (``digits``, the folder as given, or the data's name).
        root: the folder, absolute (None for digits and in-memory data).
        train, heldout: the split's files (folders; None for in-memory data, heldout None
            when nothing is held out).
        classes: class names in label order (empty when unlabelled).
        layout: how the split was made, for the run header.
        memory: the data already in memory (digits, given data, or a folder decoded by the
            in-memory loader), else None.
        summary: what the listing left out (and, once decoded, what could not be read).
    """

    name: str
    root: Path | None
    train: FileSet | None
    heldout: FileSet | None
    classes: list[str]
    layout: str
    memory: ImageData | None = None
    summary: DataSummary = field(default_factory=DataSummary)
    _headers: HeaderProbe | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_train(self) -> int:
        """Images trained on: the decoded ones when in memory, else the listed training files."""
        if self.memory is not None:
            return len(self.memory.train)
        assert self.train is not None
        return len(self.train)

    def headers(self) -> HeaderProbe:
        """The headers of up to :data:`~fastclr.data.headers.HEADER_PROBES` evenly spaced
        training files, read on the first call and kept: the view-size, loader and readability
        rules of one plan share one look at the files (an empty probe for in-memory data)."""
        if self._headers is None:
            none = HeaderProbe(0, (), ())
            self._headers = probe_headers(self.train.files) if self.train is not None else none
        return self._headers

    @property
    def is_folder(self) -> bool:
        return self.root is not None

    def without_memory(self) -> DataPlan:
        """The plan without decoded folder images (what is sent to other ranks, which decode
        for themselves); the digits and given data are kept."""
        if self.root is None:
            return self
        return replace(self, memory=None)

    def identity(self) -> dict[str, Any]:
        """What a resume compares to tell whether the data changed: the folder (absolute), the
        number of files of the split and a SHA-256 digest of its sorted listing (relative paths
        and labels); for in-memory data, a digest of the images themselves."""
        h = hashlib.sha256()
        if self.root is None:
            assert self.memory is not None
            parts = [self.memory.train, *([self.memory.heldout] if self.memory.heldout else [])]
            for part in parts:
                h.update(part.images.contiguous().cpu().numpy().tobytes())
            return {"root": None, "files": sum(len(x) for x in parts), "digest": h.hexdigest()}
        parts_f = [f for f in (self.train, self.heldout) if f is not None]
        for fs in parts_f:
            fs.files.hash_into(h)
            h.update(fs.labels.tobytes())
        files = sum(len(f) for f in parts_f)
        return {"root": str(self.root), "files": files, "digest": h.hexdigest()}

    def decoded(self, size: int, num_workers: int) -> DataPlan:
        """This plan with its folder decoded into memory at ``size`` px (in-memory loader)."""
        if self.memory is not None:
            return self
        assert self.train is not None
        mem = decode_split(
            self.name, self.train, self.heldout, self.classes, size, num_workers, self.summary
        )
        return replace(self, memory=mem)


def _layout(root: Path) -> tuple[Path, Path | None, str]:
    """(training folder, held-out folder or None, how) for the folder ``root`` (a missing
    one is left for :func:`~fastclr.data.files.list_image_folder` to refuse)."""
    if not root.is_dir():
        return root, None, _HELD_TEXT
    train, val = root / "train", root / "val"
    if train.is_dir() and val.is_dir():
        return train, val, "ROOT/train + ROOT/val"
    if val.is_dir() and not train.is_dir():
        raise UsageError(
            f"{root} has a val/ folder but no train/ folder: put the training images in "
            f"{train} (or pass the folder that holds them as --data)"
        )
    if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
        others = [p.name for p in root.iterdir() if p.is_dir() and p.name != "train"]
        if not others:
            return train, None, f"ROOT/train without ROOT/val: {_HELD_TEXT}"
    return root, None, _HELD_TEXT


_HELD_TEXT = f"{FOLDER_HELDOUT_FRACTION:.0%} of each class held out"


def _folder_plan(spec: str, warn: bool) -> DataPlan:
    root = Path(spec)
    train_root, held_root, layout = _layout(root)
    summary = DataSummary()
    listing = _list(train_root, summary, warn)
    held: FolderListing | None = None
    if held_root is not None:
        held = _list(held_root, summary, warn)
        if held.classes != listing.classes:
            raise UsageError(f"{spec}/train and {spec}/val have different class subfolders")
    train, heldout = split_listing(listing, held)
    if heldout is None:
        layout = "no class subfolders: unlabelled, nothing held out"
        if len(listing.classes) == 1:
            layout = f"one class ({listing.classes[0]!r}): nothing held out"
    absolute = Path(os.path.abspath(root))
    return DataPlan(spec, absolute, train, heldout, listing.classes, layout, None, summary)


def _list(folder: Path, summary: DataSummary, warn: bool) -> FolderListing:
    try:
        listing = list_image_folder(folder)
    except ValueError as e:  # a folder without images: the user's data
        raise UsageError(str(e)) from e
    summary.add_listing(listing, warn=warn)
    return listing


def plan_data(spec: str | ImageData, warn: bool = True) -> DataPlan:
    """The :class:`DataPlan` of ``spec``: ``"digits"``, an :class:`ImageData`, or a folder path.

    ``warn``: warn about what the listing leaves out (only the process that reports does).
    Raises ``FileNotFoundError`` / ``NotADirectoryError`` for a missing folder or a file, and
    :class:`~fastclr.errors.UsageError` for a folder without images, a ``val`` without a
    ``train``, or train/val folders whose classes differ.
    """
    if isinstance(spec, ImageData):
        held = spec.heldout is not None and len(spec.heldout) > 0
        layout = "given in memory" + ("" if held else ", nothing held out")
        summary = spec.summary if spec.summary is not None else DataSummary()
        return DataPlan(spec.name, None, None, None, spec.classes, layout, spec, summary)
    if spec == "digits":
        digits = load_digits(DIGITS_SIZE)
        return DataPlan("digits", None, None, None, digits.classes, "20% held out", digits)
    return _folder_plan(spec, warn)


def load_image_folder(root: str | os.PathLike[str], size: int, num_workers: int = 0) -> ImageData:
    """An image folder decoded into memory (``size`` squares), with its held-out split."""
    plan = plan_data(str(root)).decoded(size, num_workers)
    assert plan.memory is not None
    plan.summary.report(str(root))
    return plan.memory


def load_data(spec: str, image_size: int = 32, num_workers: int = 0) -> ImageData:
    """``"digits"`` (stored at 32 px) or an image folder decoded at ``image_size`` px."""
    if spec == "digits":
        return load_digits(DIGITS_SIZE)
    return load_image_folder(spec, image_size, num_workers)
