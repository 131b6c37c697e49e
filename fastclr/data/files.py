"""Listing image folders: which files are images, their class, and what is left out and why.

Layout (torchvision's ImageFolder): ``ROOT/<class>/**/<image>``; the class index is the position
of ``<class>`` in sorted order. A folder with no class subfolders is one unlabelled set of the
images at its top level. Nothing is decoded here: a listing costs about 40 bytes per file (paths
are kept packed in one byte buffer, not as Python strings, so DataLoader workers that fork do not
copy them page by page through reference counting).

Rules, each reported (never silent):

* extensions: :data:`IMAGE_EXTENSIONS`, the one set every fastclr loader accepts (case-insensitive);
* hidden files and folders (``.name``) are ignored;
* symbolic links are followed, but a folder is listed at most once: a link back to ROOT or to a
  folder already listed (a loop, or a second path to the same images) is left out and reported,
  so a link to the root never becomes an extra class that duplicates every image;
* a dangling link is reported and counted as skipped;
* images at the top level of ROOT next to class folders are not part of any class: they are left
  out, reported and counted (move them into a class folder to use them).
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "FileList",
    "FolderListing",
    "list_image_folder",
    "list_images",
]

#: Lower-case suffixes of the files every fastclr loader lists (PIL decodes all of them; DALI
#: decodes all but GIF, which its loader checks and reports as skipped like any unreadable file).
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
#: Paths quoted by name in one warning before the rest are only counted.
_SHOW = 5


class FileList:
    """An immutable list of file paths stored as one UTF-8 buffer plus offsets.

    ``paths[i]`` is ``root / rel[i]`` as a ``str``; indexing builds the string on demand.
    """

    def __init__(self, root: str | os.PathLike[str], rel: Iterable[str]) -> None:
        self.root = str(root)
        encoded = [r.encode("utf-8", "surrogateescape") for r in rel]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def relative(self, i: int) -> str:
        """The path of file ``i`` relative to the root."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"file index {i} out of range for {len(self)} files")
        i %= len(self)
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._buf[lo:hi].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, i: int) -> str:
        return os.path.join(self.root, self.relative(i))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[i] for i in range(len(self)))

    def select(self, index: Sequence[int] | np.ndarray) -> FileList:
        """A new list of the files at ``index``."""
        return FileList(self.root, [self.relative(int(i)) for i in index])

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes + self._offsets.nbytes)

    def hash_into(self, h: Any) -> None:
        """Feed the relative paths, in order, to the hash object ``h`` (``hashlib``)."""
        h.update(self._offsets.tobytes())
        h.update(self._buf.tobytes())


@dataclass
class FolderListing:
    """What :func:`list_image_folder` found.

    Attributes:
        root: the folder listed.
        files: the image files, sorted by class then path.
        labels: (N,) int64 class index per file; -1 for an unlabelled (flat) folder.
        classes: class folder names in label order (empty for a flat folder).
        skipped: (path, reason) of files left out at listing time (dangling links).
        top_level: images at the top level of a folder with classes (left out).
        links_skipped: (link, reason) of linked folders not followed (loops, duplicates).
    """

    root: Path
    files: FileList
    labels: np.ndarray
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    top_level: list[str] = field(default_factory=list)
    links_skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def report(self) -> None:
        """One RuntimeWarning per kind of thing left out, naming the first few paths."""
        if self.top_level:
            shown = ", ".join(os.path.basename(p) for p in self.top_level[:_SHOW])
            more = f" and {len(self.top_level) - _SHOW} more" if len(self.top_level) > _SHOW else ""
            warnings.warn(
                f"fastclr: {len(self.top_level)} image(s) at the top level of {self.root} are "
                f"next to class folders and belong to no class; left out ({shown}{more}). Move "
                "them into a class folder to use them.",
                RuntimeWarning,
                stacklevel=3,
            )
        for link, reason in self.links_skipped:
            warnings.warn(
                f"fastclr: not following folder link {link}: {reason}", RuntimeWarning, stacklevel=3
            )
        for path, reason in self.skipped:
            warnings.warn(f"fastclr: skipping {path} ({reason})", RuntimeWarning, stacklevel=3)


def _dtype_mode(e: os.DirEntry[str]) -> int:
    if e.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    return stat.S_IFREG if e.is_file(follow_symlinks=False) else 0


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class _Walker:
    """Recursive listing that follows links and visits every real folder at most once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        st = os.stat(root)
        self.seen: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
        self.skipped: list[tuple[str, str]] = []
        self.links_skipped: list[tuple[str, str]] = []

    def enter(self, path: str) -> bool:
        """Mark the folder at ``path`` visited; False (reported) if it was visited before."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            target = os.path.realpath(path)
            self.links_skipped.append(
                (path, f"it leads to {target}, which is already listed (a loop or a duplicate)")
            )
            return False
        self.seen.add(key)
        return True

    def scan(self, folder: str) -> tuple[list[str], list[str]]:
        """(image files, sub-folders) directly in ``folder``, sorted; links resolved."""
        files: list[str] = []
        dirs: list[str] = []
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                # d_type answers without a stat call except for links, which are followed
                mode = os.stat(e.path).st_mode if e.is_symlink() else _dtype_mode(e)
            except OSError as err:
                if e.is_symlink() and _is_image(e.name):
                    self.skipped.append((e.path, f"dangling link: {err.strerror}"))
                elif e.is_symlink():
                    self.links_skipped.append((e.path, f"dangling link: {err.strerror}"))
                continue
            if stat.S_ISDIR(mode):
                dirs.append(e.path)
            elif stat.S_ISREG(mode) and _is_image(e.name):
                files.append(e.path)
        return files, dirs

    def walk(self, folder: str) -> list[str]:
        """Every image under ``folder`` (which the caller has entered), depth first, sorted."""
        out: list[str] = []
        stack = [folder]
        while stack:
            d = stack.pop()
            files, dirs = self.scan(d)
            out.extend(files)
            for sub in reversed(dirs):
                if self.enter(sub):
                    stack.append(sub)
        return out


def list_image_folder(root: str | os.PathLike[str]) -> FolderListing:
    """List an image folder (module docstring) without decoding anything.

    Raises FileNotFoundError / NotADirectoryError for a missing root, and ValueError when it
    holds no image at all (naming the extensions looked for).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    walker = _Walker(root)
    top_files, top_dirs = walker.scan(str(root))
    classes: list[str] = []
    rel: list[str] = []
    labels: list[int] = []
    top_level: list[str] = []
    for d in top_dirs:
        if not walker.enter(d):
            continue
        found = walker.walk(d)
        if not found:
            continue  # an empty folder is not a class
        label = len(classes)
        classes.append(os.path.basename(d))
        rel.extend(os.path.relpath(f, root) for f in found)
        labels.extend([label] * len(found))
    if classes:
        top_level = top_files
    else:
        rel = [os.path.relpath(f, root) for f in top_files]
        labels = [-1] * len(rel)
    if not rel:
        raise ValueError(
            f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class "
            "subfolders or at its top level"
        )
    return FolderListing(
        root=root,
        files=FileList(root, rel),
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
        skipped=walker.skipped,
        top_level=top_level,
        links_skipped=walker.links_skipped,
    )


def list_images(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    labels: Sequence[int] | None = None,
) -> tuple[list[str], list[int]]:
    """Image files and integer labels from a folder or an explicit file list.

    A folder is listed by :func:`list_image_folder` (its warnings included); an unlabelled folder
    gets label 0 for every file. A sequence of paths gets ``labels`` (default 0 each).
    """
    if isinstance(source, (str, os.PathLike)):
        if labels is not None:
            raise ValueError("labels can only be given with an explicit list of files")
        listing = list_image_folder(source)
        listing.report()
        return list(listing.files), [max(int(v), 0) for v in listing.labels]
    files = [str(p) for p in source]
    if not files:
        raise ValueError("the list of image files is empty")
    if labels is None:
        return files, [0] * len(files)
    if len(labels) != len(files):
        raise ValueError(f"{len(labels)} labels for {len(files)} files")
    return files, [int(x) for x in labels]
