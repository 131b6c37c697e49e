"""One look at a folder's image headers before a run: sizes and readability, read once.

Three planning rules look at the files before anything is decoded: the view-size rule (the
images' shorter sides, :func:`fastclr.train.recipe.size_for`), the ``auto`` loader rule (are the
files small squares, :func:`fastclr.data.select.resolve_loader`) and the check that a streamed
data set is mostly readable (:func:`fastclr.data.select.check_mostly_readable`). Each needs the
headers of the same evenly spaced files, so :func:`probe_headers` opens each of them once and
:meth:`fastclr.data.plan.DataPlan.headers` keeps the result for the rest of the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastclr.data.files import FileList

__all__ = ["HEADER_PROBES", "HeaderProbe", "evenly_spaced", "probe_headers"]

#: Files whose headers the planning rules look at (evenly spaced over the listing)
HEADER_PROBES = 100


@dataclass(frozen=True)
class HeaderProbe:
    """What the headers of up to :data:`HEADER_PROBES` evenly spaced files said.

    Attributes:
        probed: files looked at.
        sizes: (width, height) of each file whose header could be read.
        unreadable: (path, reason) of each file that could not be opened as an image.
    """

    probed: int
    sizes: tuple[tuple[int, int], ...]
    unreadable: tuple[tuple[str, str], ...]


def evenly_spaced(n: int, k: int) -> list[int]:
    """Up to ``k`` evenly spaced indices of ``range(n)``, first and last included."""
    return [int(i) for i in np.linspace(0, n - 1, min(n, k)).astype(np.int64)]


def probe_headers(files: FileList, k: int = HEADER_PROBES) -> HeaderProbe:
    """Open up to ``k`` evenly spaced ``files`` once each and read their headers (no decoding:
    opening an image reads and checks its header, which is how a corrupt file shows)."""
    from PIL import Image

    picked = evenly_spaced(len(files), k)
    sizes, bad = [], []
    for i in picked:
        try:
            with Image.open(files[i]) as im:
                sizes.append(im.size)
        except Exception as e:  # any failure is the file's: unreadable here
            bad.append((files[i], f"{type(e).__name__}: {e}"))
    return HeaderProbe(len(picked), tuple(sizes), tuple(bad))
