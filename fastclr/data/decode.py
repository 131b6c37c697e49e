"""Decoding image files to 8-bit RGB by one explicit rule, and cropping views from them.

Conversion rule (:func:`to_rgb8`), by PIL mode; every conversion other than plain RGB is named
so that loaders can count it:

============================  =================================================================
RGB                           as is
L (8-bit grey), 1 (bilevel)   grey repeated into R = G = B ("grey → RGB")
P, PA (palette)               the palette's colours; transparency dropped ("palette → RGB")
LA, RGBA, RGBa, La            alpha dropped, no compositing, as PIL's convert ("alpha dropped")
CMYK, YCbCr, LAB, HSV         PIL's conversion to RGB ("<mode> → RGB")
I;16, I;16B, I;16L, I;16N     16-bit unsigned, range [0, 65535]: round(v / 257), so 65535 ↦ 255
                              ("16-bit → 8-bit")
I (32-bit integer)            read as 16-bit when every value is in [0, 65535] (how PIL opens
                              16-bit PNGs and TIFFs); otherwise rejected: no documented range
F (32-bit float)              documented range [0, 1]: round(255 · v); a file with a value
                              outside [0, 1] (or NaN) is rejected with its range in the message
============================  =================================================================

16-bit RGB PNGs are read by PIL as their high byte (v // 256), the same scale within one level.
A rejected file raises :class:`UnsupportedImage`; loaders skip it, report it by path and count it.

Orientation: a file whose EXIF Orientation tag says it is stored rotated or mirrored (phone
cameras write 6 for a portrait photo) is turned upright, as PIL's ``ImageOps.exif_transpose``
and every photo viewer do, and counted as converted ("EXIF orientation N applied"); crop boxes
are drawn on the upright size. (NVIDIA DALI's loader decodes pixels as stored.)

Views (:func:`decode_views`): the crop boxes are drawn on the ORIGINAL image size read from the
header, before any pixel is decoded, and are resized to (S, S) by the augmentation's documented
resize (bilinear, ``align_corners=False``, no antialias, sampling clamped to the box's edge
pixels: what ``F.interpolate`` does on the cropped tensor). For a JPEG whose smallest box still
spans ``k·S`` pixels, the file is decoded at 1/k scale (libjpeg DCT scaling, k ∈ {2, 4, 8}) and
the same box is sampled at the same ORIGINAL coordinates mapped to the reduced grid (original
pixel x ↦ (x + 0.5)/k − 0.5). The draw, and so the distribution of crop position, area and aspect,
is untouched by the reduced decode; the pixels are those of a 1/k-scale decode (a k×k low-pass of
the original before the bilinear sampling), never fewer than S per side. tests/test_data_stream.py
checks both: boxes equal the draw on the original size, and a reduced decode agrees with the full
one on a colour-coded image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "UnsupportedImage",
    "decode_for_boxes",
    "decode_resized_square",
    "decode_views",
    "open_rgb",
    "orient",
    "orientation",
    "oriented_size",
    "resize_box",
    "resized_square",
    "to_rgb8",
]

#: Largest DCT scaling libjpeg offers (1/8).
MAX_DRAFT = 8
#: Float images: values this far outside [0, 1] are rejected (rounding slack of float writers).
FLOAT_SLACK = 1e-3
_ALPHA = ("LA", "RGBA", "RGBa", "La")
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N")


class UnsupportedImage(ValueError):
    """A file decodes, but its pixel values have no documented 8-bit meaning."""


#: EXIF's Orientation tag, and the orientations that swap height and width.
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)


def orientation(im: Any) -> int:
    """The EXIF orientation of an opened PIL image (1, upright, when it has none)."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block: the pixels as stored
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(im: Any) -> tuple[int, int]:
    """(height, width) of an opened image as it is meant to be seen (its EXIF orientation)."""
    w, h = im.size
    return (w, h) if orientation(im) in _SWAPS_AXES else (h, w)


def orient(a: np.ndarray, tag: int) -> np.ndarray:
    """(H, W, C) pixels as stored → as meant to be seen under EXIF orientation ``tag``
    (what PIL's ``ImageOps.exif_transpose`` does to an image)."""
    if tag == 2:
        a = a[:, ::-1]
    elif tag == 3:
        a = a[::-1, ::-1]
    elif tag == 4:
        a = a[::-1]
    elif tag == 5:
        a = a.transpose(1, 0, 2)
    elif tag == 6:
        a = np.rot90(a, k=-1)
    elif tag == 7:
        a = a.transpose(1, 0, 2)[::-1, ::-1]
    elif tag == 8:
        a = np.rot90(a, k=1)
    return np.ascontiguousarray(a)


def _oriented(rgb: np.ndarray, conversion: str | None, tag: int) -> tuple[np.ndarray, str | None]:
    if tag == 1:
        return rgb, conversion
    note = f"EXIF orientation {tag} applied"
    return orient(rgb, tag), note if conversion is None else f"{conversion}, {note}"


def _grey_to_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[:, :, None], 3, axis=2)


def to_rgb8(im: Any, name: str = "image") -> tuple[np.ndarray, str | None]:
    """(H, W, 3) uint8 of a loaded PIL image by the module's rule, and the conversion's name."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8), None
    if mode in ("L", "1"):
        return _grey_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8)), "grey → RGB"
    if mode in ("P", "PA"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8), "palette → RGB"
    if mode in _ALPHA:
        return np.asarray(im.convert("RGB"), dtype=np.uint8), "alpha dropped"
    if mode in _SIXTEEN or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise UnsupportedImage(
                f"{name}: 32-bit integer pixels in [{a.min()}, {a.max()}] have no documented "
                "8-bit range (16-bit images, [0, 65535], are converted)"
            )
        return _grey_to_rgb(((a * 255 + 32767) // 65535).astype(np.uint8)), "16-bit → 8-bit"
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            raise UnsupportedImage(
                f"{name}: float pixels in [{lo:g}, {hi:g}] are outside the documented range "
                "[0, 1] of float images; rescale them to [0, 1] (or save 8/16-bit images)"
            )
        out = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        return _grey_to_rgb(out), "float → 8-bit"
    return np.asarray(im.convert("RGB"), dtype=np.uint8), f"{mode} → RGB"


def open_rgb(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Decode a whole file to (H, W, 3) uint8 by the conversion rule, upright by its EXIF
    orientation (and name the conversion)."""
    from PIL import Image

    with Image.open(path) as im:
        tag = orientation(im)
        im.load()
        return _oriented(*to_rgb8(im, str(path)), tag) if tag != 1 else to_rgb8(im, str(path))


def _axis_coords(start: float, length: float, size: int, scale: int, limit: int) -> np.ndarray:
    """Source coordinates, on a 1/``scale`` grid, of ``size`` outputs over [start, start+length).

    F.interpolate's rule in the box (clamped to its edge pixels), then mapped from original
    pixels to the reduced grid, and clamped to the reduced image (``limit`` pixels).
    """
    c = (np.arange(size, dtype=np.float64) + 0.5) * (length / size) - 0.5
    c = start + np.clip(c, 0.0, length - 1.0)
    if scale > 1:
        c = (c + 0.5) / scale - 0.5
    return np.clip(c, 0.0, limit - 1.0)


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Separable bilinear sampling of (H, W, C) uint8 at rows ``ys`` and columns ``xs`` (≥ 0).

    Rows first over only the columns the box needs, in place in float32; rounded half up.
    """
    h, w = img.shape[:2]
    y0 = ys.astype(np.int64)  # floor: coordinates are clamped to >= 0
    x0 = xs.astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    lo, hi = int(x0.min()), int(x1.max()) + 1
    band = img[:, lo:hi]
    rows = band[y0].astype(np.float32)
    below = band[y1].astype(np.float32)
    below -= rows
    below *= wy
    rows += below
    left, right = rows[:, x0 - lo], rows[:, x1 - lo]
    right -= left
    right *= wx
    left += right
    left += 0.5  # a convex mix of [0, 255] values: truncation after +0.5 rounds, no clip needed
    return left.astype(np.uint8)


def resize_box(img: np.ndarray, box: tuple[int, int, int, int], size: int, scale: int = 1) -> Any:
    """Box (y0, x0, h, w) in ORIGINAL pixels of ``img`` (decoded at 1/``scale``) → (S, S, C)."""
    y0, x0, h, w = box
    ys = _axis_coords(y0, h, size, scale, img.shape[0])
    xs = _axis_coords(x0, w, size, scale, img.shape[1])
    return _bilinear(img, ys, xs)


def draft_scale(boxes: np.ndarray, size: int) -> int:
    """Largest k in {1, 2, 4, 8} with every box at least k·``size`` pixels on both sides."""
    smallest = int(boxes[:, 2:4].min())
    k = 1
    while k < MAX_DRAFT and smallest >= 2 * k * size:
        k *= 2
    return k


BoxDraw = Callable[[int, int], np.ndarray]


def _box(row: np.ndarray) -> tuple[int, int, int, int]:
    y0, x0, h, w = (int(v) for v in row)
    return y0, x0, h, w


def decode_for_boxes(
    path: str, draw: BoxDraw, size: int, draft: bool = True
) -> tuple[np.ndarray, np.ndarray, str | None, int]:
    """Decode one file for the boxes ``draw(H, W)`` draws on its original size, not cropping.

    Returns the (h, w, 3) uint8 image decoded at 1/scale (the largest reduced-scale JPEG decode
    that keeps every box at least ``size`` pixels per side; 1 = full size), the (V, 4) boxes in
    ORIGINAL pixels, the conversion's name (or None) and the scale.
    """
    from PIL import Image

    with Image.open(path) as im:
        tag = orientation(im)
        height, width = oriented_size(im)
        boxes = np.asarray(draw(height, width), dtype=np.int64)
        scale = draft_scale(boxes, size) if draft and im.format == "JPEG" else 1
        if scale > 1:
            stored_w = im.size[0]
            got = im.draft(im.mode, (im.size[0] // scale, im.size[1] // scale))
            # Pillow returns (mode, box) with box = (0, 0, W / s, H / s): s is the scale used.
            scale = round(stored_w / got[1][2]) if got else 1
        im.load()
        rgb, conversion = _oriented(*to_rgb8(im, path), tag)
    return rgb, boxes, conversion, scale


def decode_views(
    path: str, draw: BoxDraw, size: int, draft: bool = True
) -> tuple[np.ndarray, str | None, int]:
    """Crops of one file: ``draw(H, W)`` gives (V, 4) boxes on the original size; → (V, S, S, 3).

    Returns the views, the conversion's name (or None) and the decode scale used (1 = full).
    """
    rgb, boxes, conversion, scale = decode_for_boxes(path, draw, size, draft)
    views = np.stack([resize_box(rgb, _box(b), size, scale) for b in boxes])
    return views, conversion, scale


def decode_resized_square(path: str | os.PathLike[str], size: int) -> tuple[np.ndarray, str | None]:
    """The in-memory loader's decode: shorter side → ``size`` (PIL bilinear), centre square."""
    from PIL import Image

    with Image.open(path) as f:
        tag = orientation(f)
        f.draft(f.mode, (size, size))  # JPEG: decode at the smallest scale still >= size
        f.load()
        rgb, conversion = _oriented(*to_rgb8(f, str(path)), tag)
    return resized_square(rgb, size), conversion


def resized_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8: the shorter side resized to ``size`` (PIL
    bilinear), then the centre square (the rule of :func:`decode_resized_square`)."""
    from PIL import Image

    im = Image.fromarray(rgb)
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
