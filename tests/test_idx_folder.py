"""bench/idx_folder.py: IDX files (MNIST's format) to an image folder, on made-up IDX files."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def idx(bench_module: Callable[[str], ModuleType]) -> ModuleType:
    return bench_module("idx_folder")


def _write(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _dataset(root: Path, n_train: int = 30, n_test: int = 12, gz: bool = False) -> tuple:
    rng = np.random.default_rng(0)
    sets = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 5, 7), dtype=np.uint8)
        labels = (np.arange(n) * 7 % 3).astype(np.uint8)  # classes interleaved, not sorted
        _write(root / f"{prefix}-images-idx3-ubyte", images, gz)
        _write(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
        sets[prefix] = (images, labels)
    return sets["train"], sets["t10k"]


@pytest.mark.parametrize("gz", [False, True])
def test_export_takes_the_first_images_of_each_class_pixel_exact(
    idx: ModuleType, tmp_path: Path, gz: bool
) -> None:
    (tr_x, tr_y), (te_x, te_y) = _dataset(tmp_path, gz=gz)
    out = tmp_path / "folder"
    argv = [str(tmp_path), str(out), "--train-per-class", "4", "--val-per-class", "2"]
    assert idx.main(argv) == 0
    for split, x, y, k in (("train", tr_x, tr_y, 4), ("val", te_x, te_y, 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == ["0", "1", "2"]
        for c in range(3):
            files = sorted((out / split / str(c)).iterdir())
            want = np.flatnonzero(y == c)[:k]
            assert [int(f.stem) for f in files] == list(want)
            for f, i in zip(files, want, strict=True):
                img = Image.open(f)
                assert img.mode == "L"
                np.testing.assert_array_equal(np.asarray(img), x[i])


def test_read_idx_rejects_what_is_not_an_unsigned_byte_idx_file(
    idx: ModuleType, tmp_path: Path
) -> None:
    bad = tmp_path / "x"
    bad.write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an IDX file"):
        idx.read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x0D, 1]) + (3).to_bytes(4, "big") + b"\0" * 12)
    with pytest.raises(ValueError, match="only unsigned bytes"):
        idx.read_idx(bad)
    bad.write_bytes(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\0" * 4)  # one short
    with pytest.raises(ValueError, match=r"header says \(5,\)"):
        idx.read_idx(bad)


def test_user_errors_are_one_message_and_exit_2(
    idx: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _dataset(tmp_path)  # 10 training images of class 0, 4 test images of class 0

    def fails(*argv: str) -> str:
        with pytest.raises(SystemExit) as e:
            idx.main(list(argv))
        assert e.value.code == 2
        return capsys.readouterr().err

    out = str(tmp_path / "o")
    src = str(tmp_path)
    msg = fails(src, out, "--train-per-class", "11")
    assert "class 0 has 10 images, fewer than --train-per-class 11" in msg
    msg = fails(src, out, "--train-per-class", "4", "--val-per-class", "5")
    assert "class 0 has 4 images, fewer than --val-per-class 5" in msg
    assert not (tmp_path / "o").exists()  # nothing half-written: train/ passed, val/ did not
    assert "--val-per-class must be at least 1" in fails(str(tmp_path), out, "--val-per-class", "0")
    assert "no train-images-idx3-ubyte" in fails(str(tmp_path / "nothing"), out)
    (tmp_path / "o").mkdir()
    assert "exists" in fails(str(tmp_path), out)
