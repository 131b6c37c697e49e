"""One run per folder: a lock on ``--out`` held for the life of a run.

A second ``fastclr pretrain`` into a folder that a live run is writing (a second new run, or a
``--resume`` of a run that is still going) would interleave two runs' log rows and replace one
run's checkpoint with the other's. :class:`RunLock` prevents it: ``OUT/.fastclr.lock`` is
opened and locked with ``flock`` (released by the operating system when the holding process
ends, however it ends, so a lock can never outlive its run) and holds the holder's PID, host and
start time, which the refusal names. A lock file left by a process that died (its lock released)
is taken over and said to be stale, naming that PID.

Where ``flock`` does not exist (Windows), or the folder's file system does not support it, the
file itself is the lock: created exclusively, and treated as stale when its PID is no longer a
running process on this host.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from fastclr.atomic import pid_alive
from fastclr.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".fastclr.lock"


class RunLockedError(UsageError):
    """``--out`` is being written by another live fastclr run."""


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _holder(info: dict[str, Any]) -> str:
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"PID {info.get('pid', '?')} on {info.get('host', '?')}, started {when}"


class RunLock:
    """The lock of run folder ``folder`` (module docstring); a context manager.

    :meth:`acquire` raises :class:`RunLockedError` naming the holder when a live run holds it,
    and warns (naming the dead PID) when it takes over a stale one. :meth:`release` unlocks and
    removes the file. ``stale`` is the dead holder's description when one was taken over.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None
        self.stale: str | None = None

    def _me(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}

    def _refuse(self, info: dict[str, Any]) -> RunLockedError:
        folder = self.path.parent
        return RunLockedError(
            f"--out {folder} is in use by another fastclr run ({_holder(info)}): wait for it to "
            f"end or stop it, or choose another --out (the lock is {self.path})"
        )

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self._acquire_exclusive()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refuse(_read(self.path)) from None
                return self._acquire_exclusive()  # no flock on this file system
            if self._still_linked(fd):
                return self._hold(fd)
            os.close(fd)  # a releasing holder removed the file we locked: lock the new one
        raise self._refuse(_read(self.path))

    def _still_linked(self, fd: int) -> bool:
        """Whether the file locked through ``fd`` is still the one at :attr:`path`."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _hold(self, fd: int) -> RunLock:
        previous = _read(self.path)
        if previous.get("pid") not in (None, os.getpid()):
            self.stale = _holder(previous)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self._me()).encode())
        os.fsync(fd)
        self._fd = fd
        self._warn_stale()
        return self

    def _acquire_exclusive(self) -> RunLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read(self.path)
                pid = info.get("pid")
                same_host = info.get("host") == socket.gethostname()
                if isinstance(pid, int) and same_host and not pid_alive(pid):
                    self.stale = _holder(info)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._refuse(info) from None
            os.write(fd, json.dumps(self._me()).encode())
            self._fd = fd
            self._warn_stale()
            return self
        raise self._refuse(_read(self.path))

    def _warn_stale(self) -> None:
        if self.stale is not None:
            warnings.warn(
                f"fastclr: took over the stale lock of {self.path.parent} left by a run that "
                f"is no longer running ({self.stale})",
                RuntimeWarning,
                stacklevel=4,
            )

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
