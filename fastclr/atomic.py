"""Writing a file so that a crash, a full disk or a second writer never leaves it torn.

:func:`write_atomic` is the one way fastclr writes a file a user keeps (checkpoints, exports,
the labelled subset of a fine-tuning run): the bytes go to ``.NAME.tmp-PID`` in the same folder,
are fsynced, and the file is then moved into place, so a reader sees the old file or the new one,
never a part. A leaf module (standard library only).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastclr.errors import UsageError

__all__ = ["fsync_dir", "pid_alive", "temp_name", "write_atomic"]


def temp_name(path: Path, pid: int | None = None) -> Path:
    """The temporary file a writer of ``path`` uses (``.NAME.tmp-PID`` beside it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file in the same folder.

    With ``overwrite`` the file is moved over ``path`` (``os.replace``); without, it is linked
    into place, which fails if ``path`` appeared meanwhile (:class:`~fastclr.errors.UsageError`
    naming ``--out``), so an existing file is never replaced. Any failure (an ``OSError`` such as
    a full disk) leaves ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        _write_durably(tmp, data)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and fsync it (the byte-level step of a write)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _exists(path: Path) -> UsageError:
    return UsageError(f"--out {path} already exists; pass --overwrite to replace it")


def _link_new(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path`` only if nothing is there (hard link; rename where links fail)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # a file system without hard links: check, then rename
        if path.exists():
            raise _exists(path) from None
        os.replace(tmp, path)
