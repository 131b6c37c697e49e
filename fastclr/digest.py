"""A content digest of a checkpoint's state: what the integrity check of a checkpoint compares.

:func:`state_digest` hashes (SHA-256) a canonical encoding of a nested state — dicts in their
insertion order, lists, tuples, strings, numbers, None, ``torch.dtype``/``torch.device``/
``torch.Size`` and tensors (dtype, shape and raw bytes) — so it is the same before ``torch.save``
and after ``torch.load``, and any flipped byte in a tensor's storage or any changed value gives
another digest. Encoding each item with a type tag and a length keeps distinct states from
encoding to the same bytes (e.g. ``["ab"]`` and ``["a", "b"]``, ``1`` and ``True`` and ``1.0``).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import torch
from torch import Tensor

__all__ = ["DIGEST_ALGORITHM", "state_digest"]

DIGEST_ALGORITHM = "sha256"


def _length(h: Any, n: int) -> None:
    h.update(struct.pack("<Q", n))


def _bytes(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag)
    _length(h, len(data))
    h.update(data)


def _tensor(h: Any, t: Tensor) -> None:
    t = t.detach()
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"state_digest: {t.layout} tensors are not supported")
    _bytes(h, b"X", f"{t.dtype}|{tuple(t.shape)}".encode())
    flat = t.cpu().contiguous().reshape(-1)
    if flat.numel():
        _bytes(h, b"x", flat.view(torch.uint8).numpy().tobytes())
    else:
        _bytes(h, b"x", b"")


def _feed(h: Any, obj: object) -> None:
    if obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):  # before int: bool is an int subclass
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, int):
        _bytes(h, b"I", str(obj).encode())
    elif isinstance(obj, float):
        _bytes(h, b"F", obj.hex().encode())
    elif isinstance(obj, str):
        _bytes(h, b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, bytes):
        _bytes(h, b"Y", obj)
    elif isinstance(obj, Tensor):
        _tensor(h, obj)
    elif isinstance(obj, dict):
        h.update(b"D")
        _length(h, len(obj))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, torch.Size):
        _bytes(h, b"Z", repr(tuple(obj)).encode())
    elif isinstance(obj, (list, tuple)):
        h.update(b"L" if isinstance(obj, list) else b"T")
        _length(h, len(obj))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, (torch.dtype, torch.device)):
        _bytes(h, b"R", f"{type(obj).__name__}:{obj}".encode())
    else:
        raise TypeError(f"state_digest: cannot encode a {type(obj).__name__}")


def state_digest(state: object) -> str:
    """Hex SHA-256 of the canonical encoding of ``state`` (module docstring)."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()
