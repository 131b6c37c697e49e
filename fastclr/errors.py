"""The one exception class that means "the user's mistake", and how errors cross ranks.

:class:`UsageError` is raised wherever fastclr refuses what it was asked (a bad option value, a
folder that cannot be used, a missing optional dependency). It subclasses ``ValueError`` so that
library callers who catch ``ValueError`` keep working; the command line turns it (and
:class:`~fastclr.checkpoint.CheckpointError`) into exit status 2, while any other exception is a
failure while running (exit 1) or a bug. So a ``ValueError`` raised by a bug inside fastclr or
torch is reported as what it is, not blamed on the user.
"""

from __future__ import annotations

import pickle

__all__ = ["MissingDependencyError", "NonFiniteLossError", "UsageError", "portable"]


class UsageError(ValueError):
    """The user's mistake: an argument, a file or a folder fastclr cannot use (CLI exit 2)."""


class MissingDependencyError(UsageError, ImportError):
    """An optional dependency the request needs is not installed (the message names the extra)."""


class NonFiniteLossError(FloatingPointError):
    """Training diverged (a NaN/Inf loss, weights or features); it stopped, and the last good
    checkpoint, if any, was kept (CLI exit 1)."""


def portable(error: BaseException) -> BaseException:
    """``error`` itself if it survives pickling (to be sent to other ranks), else a
    ``RuntimeError`` with its type and message, so that a rank can always raise what another
    rank met."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
