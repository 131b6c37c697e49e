"""How much memory a training step needs, and the chunk ``--chunk-size auto`` picks.

A step's peak memory is its fixed part (weights, their gradients and LARS's momentum) plus the
two views of the rank's batch plus the activations one forward keeps for its backward, which grow
with the images in that forward. :func:`activation_bytes_per_image` measures the last by running
one forward of a few images on the device and adding up the tensors autograd saves (through
``torch.autograd.graph.saved_tensors_hooks``): a measurement of this model at this view size and
precision, not a table. With gradient caching (:func:`fastclr.contrastive_backward`) the
activations are those of one chunk, and the (V·N, D) embeddings and their gradient are added.

``--chunk-size auto`` is the largest chunk whose expected peak fits the budget: 90% of the CUDA
device's free memory (``torch.cuda.mem_get_info``), or on a CPU half the memory the system calls
available (``MemAvailable``), so that the data loader's workers and the rest of the machine keep
theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fastclr.train.precision import AMP_DTYPES, autocast

__all__ = [
    "CPU_BUDGET",
    "CUDA_BUDGET",
    "MemoryModel",
    "activation_bytes_per_image",
    "budget_bytes",
    "format_bytes",
    "memory_model",
]

CUDA_BUDGET = 0.9  # of the device's free memory
CPU_BUDGET = 0.5  # of the system's available memory
PROBE_IMAGES = 2  # images of the probe forward (4 rows with both views: BatchNorm has a batch)


def _saved_bytes(model: nn.Module, x: Tensor, precision: str, device: torch.device) -> int:
    """Bytes of the distinct storages autograd saves in one forward of ``x``."""
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(precision, device):
            model(x)
    return sum(saved.values())


def activation_bytes_per_image(
    model: nn.Module, image_size: int, precision: str, device: torch.device, views: int = 2
) -> int:
    """Bytes autograd keeps per image (all its ``views``) in one training forward of ``model``
    at ``image_size`` px under ``precision``'s autocast on ``device``: the difference between
    forwards of 2·k and k images, over k, so that what is saved once whatever the batch (the
    weights a convolution keeps) does not count. The model's buffers are put back afterwards."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    model.train()
    sizes = []
    try:
        for images in (PROBE_IMAGES, 2 * PROBE_IMAGES):
            x = torch.zeros(views * images, 3, image_size, image_size, device=device)
            sizes.append(
                _saved_bytes(model, x.to(memory_format=torch.channels_last), precision, device)
            )
    finally:
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    return max(1, -(-(sizes[1] - sizes[0]) // PROBE_IMAGES))


@dataclass(frozen=True)
class MemoryModel:
    """A step's expected peak memory, in bytes, as a function of the images per forward."""

    fixed: int  # weights, gradients, momentum, buffers
    per_image: int  # activations kept for the backward, per image (both views)
    batch: int  # the rank's views (uint8 → the training dtype) and, chunked, the embeddings

    def peak(self, images_per_forward: int) -> int:
        return self.fixed + self.batch + images_per_forward * self.per_image

    def largest_chunk(self, budget: int, per_rank: int) -> int:
        """The most images per forward whose peak fits ``budget`` (at least 1, at most the
        rank's batch)."""
        room = budget - self.fixed - self.batch
        return max(1, min(per_rank, room // max(1, self.per_image)))


def memory_model(
    model: nn.Module,
    image_size: int,
    precision: str,
    device: torch.device,
    per_rank: int,
    proj_dim: int,
) -> MemoryModel:
    """The :class:`MemoryModel` of a step of ``model`` on ``per_rank`` images of both views."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    dtype_bytes = torch.empty((), dtype=AMP_DTYPES[precision]).element_size()
    views = 2 * per_rank * 3 * image_size * image_size * dtype_bytes
    embeddings = 2 * 2 * per_rank * proj_dim * 4  # z and dL/dz of both views, fp32
    per_image = activation_bytes_per_image(model, image_size, precision, device)
    return MemoryModel(3 * params + buffers, per_image, views + embeddings)


def budget_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes a step may use, where that number comes from)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        where = f"{CUDA_BUDGET:.0%} of {device}'s free {format_bytes(free)}"
        return int(CUDA_BUDGET * free), where
    available = _mem_available()
    where = f"{CPU_BUDGET:.0%} of the {format_bytes(available)} available"
    return int(CPU_BUDGET * available), where


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def format_bytes(n: float) -> str:
    """``n`` bytes in GB, or MB below one GB."""
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
