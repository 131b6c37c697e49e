"""Folder listing and the 8-bit conversion rule (fastclr.data.files, fastclr.data.decode).

All images are a few pixels wide; the whole module runs in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastclr.data import IMAGE_EXTENSIONS, list_image_folder, load_image_folder
from fastclr.data.decode import UnsupportedImage, open_rgb, to_rgb8


def _png(path: Path, colour: tuple[int, int, int] = (10, 20, 30), size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_one_set_of_extensions_everywhere() -> None:
    import fastclr.augment.dali as aug_dali
    import fastclr.data.files as files

    assert files.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert not hasattr(aug_dali, "IMAGE_EXTENSIONS")
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_classes_sorted_nested_files_hidden_and_other_suffixes(tmp_path: Path) -> None:
    _png(tmp_path / "b" / "x.PNG")
    _png(tmp_path / "a" / "sub" / "deep.png")
    _png(tmp_path / "a" / "top.png")
    _png(tmp_path / "a" / ".hidden.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    listing = list_image_folder(tmp_path)
    assert listing.classes == ["a", "b"]  # an empty folder is not a class
    rel = [os.path.relpath(p, tmp_path) for p in listing.files]
    assert rel == [os.path.join("a", "top.png"), os.path.join("a", "sub", "deep.png"), "b/x.PNG"]
    assert listing.labels.tolist() == [0, 0, 1]


def test_symlink_to_root_is_not_an_extra_class(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for c in ("cat", "dog"):
        for i in range(3):
            _png(root / c / f"{i}.png")
    os.symlink(root, root / "loop")  # a folder linking back to the root
    os.symlink(root / "cat", root / "dog" / "again")  # a second path to the same images
    with pytest.warns(RuntimeWarning, match="not following folder link"):
        listing = list_image_folder(root)
        listing.report()
    assert listing.classes == ["cat", "dog"]
    assert len(listing) == 6
    skipped = {p for p, _ in listing.links_skipped}
    assert skipped == {str(root / "loop"), str(root / "dog" / "again")}


def test_linked_class_folder_and_linked_file_are_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _png(elsewhere / "a.png")
    root = tmp_path / "data"
    _png(root / "real" / "b.png")
    os.symlink(elsewhere, root / "linked")
    os.symlink(elsewhere / "a.png", root / "real" / "c.png")
    os.symlink(tmp_path / "missing.png", root / "real" / "dangling.png")
    listing = list_image_folder(root)
    assert listing.classes == ["linked", "real"]
    assert len(listing) == 3
    assert [p for p, _ in listing.skipped] == [str(root / "real" / "dangling.png")]


def test_top_level_images_next_to_classes_are_reported(tmp_path: Path) -> None:
    _png(tmp_path / "c" / "in.png")
    _png(tmp_path / "stray1.png")
    _png(tmp_path / "stray2.jpg")
    listing = list_image_folder(tmp_path)
    assert len(listing) == 1 and len(listing.top_level) == 2
    with pytest.warns(RuntimeWarning, match=r"2 image\(s\) at the top level.*stray1.png"):
        data = load_image_folder(tmp_path, size=4)
    assert data.summary is not None and data.summary.top_level == 2
    assert any("left out 2 top-level" in line for line in data.summary.lines())


def test_flat_folder_is_one_unlabelled_set(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"{i}.png")
    listing = list_image_folder(tmp_path)
    assert listing.classes == [] and listing.labels.tolist() == [-1, -1, -1]


# ------------------------------------------------------------------------ conversion rule


def _open(path: Path) -> tuple[np.ndarray, str | None]:
    return open_rgb(path)


def test_sixteen_bit_png_is_scaled_by_its_range(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # PIL keeps all 16 bits
    rgb, kind = _open(path)
    assert kind == "16-bit → 8-bit"
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_float_tiff_in_unit_range_is_scaled_and_outside_is_rejected(tmp_path: Path) -> None:
    good = tmp_path / "unit.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(good)
    rgb, kind = _open(good)
    assert kind == "float → 8-bit"
    assert rgb[0, :, 1].tolist() == [0, 128, 255]
    bad = tmp_path / "hdr.tif"
    Image.fromarray(np.array([[0.0, 3.5]], dtype=np.float32)).save(bad)
    with pytest.raises(UnsupportedImage, match=r"outside the documented range \[0, 1\]"):
        _open(bad)


def test_32_bit_integers_without_a_range_are_rejected() -> None:
    im = Image.fromarray(np.array([[0, 70000]], dtype=np.int32))
    assert im.mode == "I"
    with pytest.raises(UnsupportedImage, match="no documented"):
        to_rgb8(im)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("L", "grey → RGB"), ("P", "palette → RGB"), ("LA", "alpha dropped"),
     ("RGBA", "alpha dropped"), ("CMYK", "CMYK → RGB"), ("1", "grey → RGB"), ("RGB", None)],
)  # fmt: skip
def test_other_modes_become_rgb(mode: str, kind: str | None) -> None:
    base = Image.new("RGB", (3, 2), (200, 100, 50))
    im = base.convert(mode)
    rgb, got = to_rgb8(im)
    assert got == kind
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, np.asarray(im.convert("RGB")))


def test_in_memory_loader_counts_conversions_and_rejections(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "rgb.png")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "a" / "deep.png")
    (tmp_path / "b").mkdir()
    Image.new("P", (4, 4)).save(tmp_path / "b" / "pal.png")
    Image.fromarray(np.full((4, 4), 9.0, dtype=np.float32)).save(tmp_path / "b" / "hdr.tif")
    with pytest.warns(RuntimeWarning) as record:
        data = load_image_folder(tmp_path, size=4)
    messages = "\n".join(str(w.message) for w in record)
    assert str(tmp_path / "b" / "hdr.tif") in messages
    assert data.skipped == 1
    assert data.summary is not None
    assert data.summary.converted == {
        str(tmp_path / "a" / "deep.png"): "16-bit → 8-bit",
        str(tmp_path / "b" / "pal.png"): "palette → RGB",
    }
    assert "converted 2 file(s) to 8-bit RGB (16-bit → 8-bit: 1, palette → RGB: 1)" in messages
    all_images = [data.train.images] + ([data.heldout.images] if data.heldout else [])
    import torch

    images = torch.cat(all_images)
    assert images.shape[0] == 3  # rgb.png, deep.png (white) and pal.png (black)
    assert int(images.amax()) == 255
