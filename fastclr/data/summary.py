"""What a loader skipped, converted or left out, by path, with counts for the run's summary."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastclr.data.files import FolderListing

__all__ = ["DataSummary"]


@dataclass
class DataSummary:
    """Files skipped (unreadable, vanished, rejected by the rule), converted, or left out.

    ``skipped`` and ``converted`` map each path to its reason / conversion (a file is counted once
    however often it is met); ``skip_events`` counts every time a batch had to replace a file.
    Each skipped path is warned about once, when first met.
    """

    listed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    top_level: int = 0
    links_skipped: int = 0
    skip_events: int = 0

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def record(self, path: str, kind: str, detail: str) -> None:
        """Note one event from a decoder: ``kind`` is "skipped" or "converted"."""
        if kind == "skipped":
            self.skip_events += 1
            if path not in self.skipped:
                self.skipped[path] = detail
                warnings.warn(
                    f"fastclr: skipping unreadable image {path} ({detail})",
                    RuntimeWarning,
                    stacklevel=3,
                )
        elif kind == "converted":
            self.converted.setdefault(path, detail)
        else:
            raise ValueError(f"unknown event kind {kind!r}")

    def add_listing(self, listing: FolderListing, warn: bool = True) -> None:
        """Count (and, with ``warn``, warn about) what the folder listing left out."""
        if warn:
            listing.report()
        self.listed += len(listing) + len(listing.skipped)
        self.top_level += len(listing.top_level)
        self.links_skipped += len(listing.links_skipped)
        for path, reason in listing.skipped:
            self.skipped.setdefault(path, reason)

    def lines(self) -> list[str]:
        """Human-readable summary lines (empty when nothing was skipped, converted or left out)."""
        out: list[str] = []
        if self.skipped:
            of = f" of {self.listed}" if self.listed else ""
            out.append(f"skipped {len(self.skipped)}{of} image files that could not be read")
        if self.converted:
            kinds = Counter(self.converted.values())
            detail = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
            out.append(f"converted {len(self.converted)} file(s) to 8-bit RGB ({detail})")
        if self.top_level:
            out.append(f"left out {self.top_level} top-level image(s) next to class folders")
        if self.links_skipped:
            out.append(f"did not follow {self.links_skipped} folder link(s) (loops/duplicates)")
        return out

    def report(self, source: str) -> None:
        """One RuntimeWarning with the counts for ``source`` (when there is anything to say)."""
        lines = self.lines()
        if lines:
            warnings.warn(f"fastclr: {source}: {'; '.join(lines)}", RuntimeWarning, stacklevel=3)
