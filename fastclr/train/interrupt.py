"""Ctrl-C and SIGTERM during training: finish the step, checkpoint, then stop.

The first SIGINT (Ctrl-C) or SIGTERM (what batch schedulers send before they kill a job) only
sets :attr:`InterruptFlag.requested`, which the loop reads at step boundaries: it writes a
checkpoint and raises :class:`Interrupted`, which carries the signal so that the command exits
with the status shells expect (130 for SIGINT, 143 for SIGTERM). A second signal interrupts at
once. Outside the main thread no handler is installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["SIGNALS", "InterruptFlag", "Interrupted"]

#: The signals that stop a run at the next step boundary, with a checkpoint.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (``signum``) after checkpointing."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class InterruptFlag:
    """SIGINT/SIGTERM set a flag read at step boundaries; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum

    def stop(self) -> Interrupted:
        """The exception that ends the run for the signal received."""
        return Interrupted(self.signum)

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
