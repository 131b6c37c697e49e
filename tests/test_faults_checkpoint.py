"""Checkpoint files under faults: integrity digest, format version, foreign and corrupted files,
stale temporary files, and the state digest itself. In-process and small: about 2 s."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from fastclr.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint_atomic,
)
from fastclr.digest import state_digest


def _state(seed: int = 0) -> dict[str, object]:
    g = torch.Generator().manual_seed(seed)
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": 3,
        "model": OrderedDict(
            w=torch.randn(64, 32, generator=g) + 0.5, b=torch.zeros(7, dtype=torch.bfloat16)
        ),
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": []},
        "rng": [{"python": random.Random(seed).getstate(), "torch": torch.get_rng_state()}],
        "config": {"lr": None, "sizes": (1, 2), "dtype": torch.float16, "on": True},
    }


def test_round_trip_keeps_every_value_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    state = _state()
    save_checkpoint_atomic(state, path)
    got = load_checkpoint(path)
    assert got["format_version"] == FORMAT_VERSION and "digest" not in got
    assert torch.equal(got["model"]["w"], state["model"]["w"])  # type: ignore[index]
    assert got["rng"][0]["python"] == state["rng"][0]["python"]  # type: ignore[index]
    assert got["config"] == state["config"]
    assert load_checkpoint(tmp_path)["epoch"] == 3  # a run folder works too


def test_digest_distinguishes_what_it_must() -> None:
    base = _state()
    assert state_digest(base) == state_digest(_state())
    for changed in (
        {**base, "epoch": 4},
        {**base, "epoch": 3.0},
        {**base, "epoch": True},
        {**base, "config": {**base["config"], "sizes": [1, 2]}},  # type: ignore[dict-item]
        {**base, "model": OrderedDict(w=base["model"]["w"].double(), b=base["model"]["b"])},  # type: ignore[index]
        {**base, "model": OrderedDict(w=base["model"]["w"].T, b=base["model"]["b"])},  # type: ignore[index]
    ):
        assert state_digest(changed) != state_digest(base)
    assert state_digest(["ab"]) != state_digest(["a", "b"])
    w = base["model"]["w"].clone()  # type: ignore[index]
    w.view(torch.int32)[5, 7] ^= 1  # one flipped bit in the weights
    assert state_digest({**base, "model": OrderedDict(w=w, b=base["model"]["b"])}) != state_digest(  # type: ignore[index]
        base
    )


def test_flipped_weight_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    state = _state()
    save_checkpoint_atomic(state, path)
    raw = bytearray(path.read_bytes())
    weights = state["model"]["w"].numpy().tobytes()  # type: ignore[index]
    at = raw.find(weights)
    assert at > 0, "the weights are stored uncompressed in torch's zip format"
    raw[at + 1000] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path} is corrupted: its contents"):
        load_checkpoint(path)


def _pickled_module(p: Path) -> None:
    torch.save(nn.Linear(2, 2), p)


def _png(p: Path) -> None:
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_text("hello, I am a text file\n"), "it is a text file, not a PyTorch"),
        (_png, "it is a PNG image, not a PyTorch file"),
        (lambda p: p.write_bytes(b""), "it is an empty file"),
        (_pickled_module, "holds pickled Python objects"),
        (lambda p: torch.save({"state_dict": {}}, p), "not a fastclr SimCLR checkpoint"),
        (lambda p: torch.save([1, 2], p), "not a fastclr SimCLR checkpoint"),
    ],
    ids=["text", "png", "empty", "pickled-module", "foreign-dict", "foreign-list"],
)
def test_foreign_files_get_one_sentence(tmp_path: Path, make: object, match: str) -> None:
    p = tmp_path / "x.pt"
    make(p)  # type: ignore[operator]
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg and "KeyError" not in msg
    assert "Weights only" not in msg and "Unpickl" not in msg and "load key" not in msg


def test_truncated_version_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint_atomic(_state(), path)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 30):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"is truncated or corrupted"):
            load_checkpoint(path)
    newer = {**_state(), "format_version": FORMAT_VERSION + 1}
    buf = io.BytesIO()
    torch.save(newer, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match=r"format version 3; this fastclr reads versions"):
        load_checkpoint(path)
    legacy = _state()  # version 1 (before the digest): read only when asked for
    torch.save(legacy, path)
    with pytest.raises(CheckpointError, match=r"carries no integrity digest.*allow-legacy"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_legacy=True)["epoch"] == 3
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_stale_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".{CHECKPOINT_NAME}.tmp-{dead_pid}"
    live = tmp_path / f".{CHECKPOINT_NAME}.tmp-{os.getppid()}"  # a running process
    other = tmp_path / ".notes.tmp-1"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
