"""Ctrl-C during training: finish the step, checkpoint, then raise ``KeyboardInterrupt``.

The first SIGINT only sets :attr:`InterruptFlag.requested`, which the loop reads at step
boundaries; a second one interrupts at once. Outside the main thread no handler is installed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["InterruptFlag"]


class InterruptFlag:
    """SIGINT sets a flag read at step boundaries; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
