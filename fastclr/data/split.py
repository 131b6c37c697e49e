"""The one train / held-out split, used by pretraining (its kNN monitor) and evaluation alike.

* ``ROOT/train`` + ``ROOT/val``: the folder's own split;
* otherwise a fixed stratified :data:`FOLDER_HELDOUT_FRACTION` (10%) of each class is held out,
  drawn from a generator seeded with :data:`SPLIT_SEED` whatever the run's seed (so a run, its
  resume and ``linear-eval`` hold out the same files), at least one image of every class that
  has two or more;
* an unlabelled (flat) folder has no held-out part.

The split is made on the listing, before anything is decoded, so it does not depend on which
files turn out to be readable or on the loader that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fastclr.data.files import FileList, FolderListing

__all__ = [
    "DIGITS_HELDOUT_FRACTION",
    "FOLDER_HELDOUT_FRACTION",
    "SPLIT_SEED",
    "FileSet",
    "split_listing",
    "stratified_split",
]

DIGITS_HELDOUT_FRACTION = 0.2
FOLDER_HELDOUT_FRACTION = 0.1
SPLIT_SEED = 0  # the held-out split is fixed, independent of the training seed


@dataclass
class FileSet:
    """Image files and their labels (-1: unlabelled), in listing order, nothing decoded."""

    files: FileList
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def select(self, index: np.ndarray) -> FileSet:
        """The files at ``index`` (in that order) with their labels."""
        return FileSet(self.files.select(index), self.labels[index])


def stratified_split(labels: Tensor | np.ndarray, fraction: float) -> tuple[Tensor, Tensor]:
    """Sorted indices (train, held-out): ``fraction`` of every class, at least one of each class
    that has two or more images, drawn with :data:`SPLIT_SEED`."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(SPLIT_SEED)
    train_idx: list[Tensor] = []
    held_idx: list[Tensor] = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_held = round(idx.numel() * fraction) if idx.numel() >= 2 else 0
        n_held = max(n_held, 1) if idx.numel() >= 2 else 0
        held_idx.append(idx[:n_held])
        train_idx.append(idx[n_held:])
    return torch.cat(train_idx).sort().values, torch.cat(held_idx).sort().values


def split_listing(
    listing: FolderListing, held: FolderListing | None
) -> tuple[FileSet, FileSet | None]:
    """(train, held-out) files of a folder (module docstring): ``held`` is the listing of
    ``ROOT/val`` when the folder has one; a labelled folder without it holds out
    :data:`FOLDER_HELDOUT_FRACTION` of each class; a flat folder holds out nothing."""
    everything = FileSet(listing.files, listing.labels)
    if held is not None:
        return everything, FileSet(held.files, held.labels)
    if len(listing.classes) < 2:
        return everything, None
    tr, ho = stratified_split(listing.labels, FOLDER_HELDOUT_FRACTION)
    return everything.select(tr.numpy()), everything.select(ho.numpy())
