"""Datasets for pretraining and evaluation, all as uint8 NHWC image tensors.

* ``digits``: scikit-learn's 8×8 grey digits (1,797 images, 10 classes; ships with scikit-learn,
  no download), upsampled to 32×32 RGB, with a fixed stratified train / held-out split.
* image folders: ``ROOT/<class>/<image>`` (ImageFolder layout; images directly in ``ROOT`` are
  read as one unlabelled set). Files are decoded with PIL once, resized (shorter side) and
  centre-cropped to a square, and kept in memory; unreadable files are skipped, each reported by
  path in a warning, and counted. ``ROOT/train`` + ``ROOT/val`` are used as the split when present,
  else a fixed 10% of each class is held out.
* :class:`TensorImageDataset`: the in-memory uint8 tensor (kept on the training device) that the
  training loop batches from, with deterministic per-epoch shuffling and rank sharding.

The decoded set must fit in memory (ImageNet-size data needs a streaming loader; not here yet).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageData",
    "TensorImageDataset",
    "load_data",
    "load_digits",
    "load_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
DIGITS_HELDOUT_FRACTION = 0.2
FOLDER_HELDOUT_FRACTION = 0.1
DIGITS_SIZE = 32
SPLIT_SEED = 0  # the held-out split is fixed, independent of the training seed


class TensorImageDataset:
    """uint8 images (N, H, W, C) and optional integer labels (N,), kept on one device.

    Batches come from :meth:`batches`: a permutation drawn from ``(seed, epoch)`` only, so the
    same epoch yields the same batches after a resume, and every rank of a distributed run draws
    the same permutation and takes its stride ``perm[rank::world_size]``.
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}"
            )
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = None if labels is None else labels.long()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def to(self, device: torch.device | str) -> TensorImageDataset:
        labels = None if self.labels is None else self.labels.to(device)
        return TensorImageDataset(self.images.to(device), labels)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Full batches each rank gets per epoch (``batch_size`` is the per-rank batch)."""
        self._check_batch(batch_size, world_size)
        return (len(self) // world_size) // batch_size

    def _check_batch(self, batch_size: int, world_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if batch_size * world_size > len(self):
            ranks = f" ({batch_size} per rank × {world_size} ranks)" if world_size > 1 else ""
            raise ValueError(
                f"batch size {batch_size * world_size}{ranks} is larger than the dataset "
                f"({len(self)} images)"
            )

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Yield ``(images, labels)`` full batches of this rank's shard for ``epoch``."""
        steps = self.steps_per_epoch(batch_size, world_size)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            perm = torch.randperm(len(self), generator=g)
        else:
            perm = torch.arange(len(self))
        shard = perm[rank::world_size][: steps * batch_size].to(self.device)
        for i in range(steps):
            idx = shard[i * batch_size : (i + 1) * batch_size]
            yield self.images[idx], None if self.labels is None else self.labels[idx]


@dataclass
class ImageData:
    """A pretraining set and, where labels exist, a fixed held-out split for evaluation."""

    name: str
    train: TensorImageDataset
    heldout: TensorImageDataset | None
    classes: list[str] = field(default_factory=list)
    skipped: int = 0  # unreadable files left out (image folders)


def _stratified_split(labels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Indices (train, held-out): ``fraction`` of every class (at least one when it has ≥ 2)."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    train_idx: list[Tensor] = []
    held_idx: list[Tensor] = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_held = round(idx.numel() * fraction) if idx.numel() >= 2 else 0
        n_held = max(n_held, 1) if idx.numel() >= 2 else 0
        held_idx.append(idx[:n_held])
        train_idx.append(idx[n_held:])
    return torch.cat(train_idx).sort().values, torch.cat(held_idx).sort().values


def load_digits(size: int = 32) -> ImageData:
    """scikit-learn's digits as ``size``×``size`` RGB uint8 with a fixed 80/20 stratified split."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'fastclr[eval]'"
        ) from e
    bunch = sk_load_digits()
    grey = torch.as_tensor(bunch.images, dtype=torch.float32) * (255.0 / 16.0)  # (N, 8, 8)
    up = F.interpolate(grey.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    rgb = up.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    images = rgb.permute(0, 2, 3, 1).contiguous()  # (N, size, size, 3)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    tr, ho = _stratified_split(labels, DIGITS_HELDOUT_FRACTION)
    return ImageData(
        name="digits",
        train=TensorImageDataset(images[tr], labels[tr]),
        heldout=TensorImageDataset(images[ho], labels[ho]),
        classes=[str(i) for i in range(10)],
    )


def _list_images(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, class index) pairs of an ImageFolder layout, or (path, -1) for a flat folder."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        files: list[tuple[Path, int]] = []
        for i, d in enumerate(class_dirs):
            for dirpath, _, names in os.walk(d):
                for n in sorted(names):
                    if n.lower().endswith(IMAGE_EXTENSIONS):
                        files.append((Path(dirpath) / n, i))
        return files, [d.name for d in class_dirs]
    flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return [(p, -1) for p in flat], []


def _decode(path: Path, size: int) -> Tensor:
    """PIL decode → RGB → shorter side resized to ``size`` → centre crop; (size, size, 3) uint8."""
    from PIL import Image

    with Image.open(path) as f:
        im = f.convert("RGB")
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3)


class _DecodeSet(torch.utils.data.Dataset[tuple[int, Tensor | None, str]]):
    def __init__(self, files: list[tuple[Path, int]], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        path = self.files[i][0]
        try:
            return i, _decode(path, self.size), ""
        except Exception as e:  # any decoder failure: reported by the caller, never silent
            return i, None, f"{type(e).__name__}: {e}"


def _decode_all(
    files: list[tuple[Path, int]], size: int, num_workers: int
) -> tuple[Tensor, Tensor, int]:
    """Decode every file (in ``num_workers`` processes); returns images, labels, skipped count."""
    loader = torch.utils.data.DataLoader(
        _DecodeSet(files, size),
        batch_size=64,
        num_workers=num_workers,
        collate_fn=lambda items: items,
    )
    images: list[Tensor] = []
    labels: list[int] = []
    skipped = 0
    for chunk in loader:
        for i, img, err in chunk:
            if img is None:
                skipped += 1
                warnings.warn(
                    f"fastclr: skipping unreadable image {files[i][0]} ({err})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            images.append(img)
            labels.append(files[i][1])
    if skipped:
        warnings.warn(
            f"fastclr: skipped {skipped} of {len(files)} image files that could not be read",
            RuntimeWarning,
            stacklevel=2,
        )
    if not images:
        raise ValueError(f"none of the {len(files)} image files could be read")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), skipped


def _folder_set(
    root: Path, size: int, num_workers: int
) -> tuple[TensorImageDataset, list[str], int]:
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    files, classes = _list_images(root)
    if not files:
        raise ValueError(
            f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in class "
            "subfolders or at its top level"
        )
    images, labels, skipped = _decode_all(files, size, num_workers)
    return TensorImageDataset(images, labels if classes else None), classes, skipped


def load_image_folder(root: str | os.PathLike[str], size: int, num_workers: int = 0) -> ImageData:
    """Decode an image folder into memory (see the module docstring for layout and split)."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, classes, sk1 = _folder_set(root / "train", size, num_workers)
        held, held_classes, sk2 = _folder_set(root / "val", size, num_workers)
        if held_classes != classes:
            raise ValueError(f"{root}/train and {root}/val have different class subfolders")
        return ImageData(str(root), train, held, classes, sk1 + sk2)
    data, classes, skipped = _folder_set(root, size, num_workers)
    if data.labels is None or len(classes) < 2:
        return ImageData(str(root), data, None, classes, skipped)
    tr, ho = _stratified_split(data.labels, FOLDER_HELDOUT_FRACTION)
    assert data.labels is not None
    return ImageData(
        str(root),
        TensorImageDataset(data.images[tr], data.labels[tr]),
        TensorImageDataset(data.images[ho], data.labels[ho]),
        classes,
        skipped,
    )


def load_data(spec: str, image_size: int = 32, num_workers: int = 0) -> ImageData:
    """``"digits"`` or the path of an image folder.

    Digits are always stored at 32 px (``DIGITS_SIZE``); ``image_size`` is the size image-folder
    files are decoded to. The training views' size is the augmentation's output size.
    """
    if spec == "digits":
        return load_digits(DIGITS_SIZE)
    return load_image_folder(spec, image_size, num_workers)
