"""The H200 case of ``bench/gradcache_bench.py`` on paper: an ESTIMATE, not a measurement.

ResNet-50 at 224², bf16, 4,096 images per step on one device. Memory comes from the activations
autograd saves per view, counted on this CPU (:func:`activation_bytes_per_view`); time from a
published ResNet-50 training rate on an A100 scaled by the H200's bandwidth and FLOP ratios, and
the gradient-caching overhead from the FLOP count (one extra forward: (1 + 1 + 2) / (1 + 2)).
``python bench/gradcache_bench.py --cuda`` measures the case where a GPU is present.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from fastclr.models import build_model

# Published anchor: NVIDIA DeepLearningExamples, ResNet-50 v1.5 for PyTorch (pytorch-21.03 NGC
# container), 1× A100 80GB, mixed precision: 2,470 images/s of forward+backward at 224².
A100_RN50_AMP_IMG_S = 2470.0
# H200 over A100 80GB: HBM 4.8 vs 2.0 TB/s (2.4×); dense bf16 990 vs 312 TFLOP/s (3.2×). A
# ResNet-50 step is partly bandwidth-bound (BatchNorm, ReLU, residual adds): assume 1× to 2.4×.
H200_SPEEDUP_RANGE = (1.0, 2.4)
H200_MEMORY_GB = 141.0
MEMORY_HEADROOM = 0.9  # allocator fragmentation, cuDNN workspaces, the CUDA context
VIEW_BYTES_BF16 = 3 * 224 * 224 * 2


def activation_bytes_per_view(
    arch: str,
    stem: Literal["cifar", "imagenet"],
    width: float,
    image_size: int,
    bf16: bool,
    rows: int = 2,
) -> float:
    """Bytes autograd saves for the backward per view of fastclr's SimCLR model: every tensor
    saved in one forward with a graph (counted once per storage) over ``rows`` views, on CPU,
    under bf16 autocast if ``bf16``. What a chunk of c images (2c views) holds at its peak,
    weights aside."""
    model = build_model(arch, stem, width)
    x = torch.randn(rows, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if amp is None:
            out = model(x)
        else:
            with amp:
                out = model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del out
    return sum(n for ptr, n in seen.items() if ptr not in params) / rows


def h200_estimate(act_bytes: float, batch: int = 4096) -> dict[str, Any]:
    """Memory and time of the GPU case on an H200, on paper (see the constants above)."""
    usable = H200_MEMORY_GB * 1e9 * MEMORY_HEADROOM
    inputs = 2 * batch * VIEW_BYTES_BF16  # both views of the whole batch stay on the device
    per_image = 2 * (act_bytes + VIEW_BYTES_BF16)
    fit = int(usable // per_image)
    # the largest power-of-two chunk whose activations fit beside all the views
    chunk = min(1 << (int((usable - inputs) // (2 * act_bytes)).bit_length() - 1), batch)
    lo, hi = (A100_RN50_AMP_IMG_S * s for s in H200_SPEEDUP_RANGE)  # views/s, fwd+bwd
    return {
        "activation_mb_per_view": act_bytes / 1e6,
        "unchunked_gb_at_batch": batch * per_image / 1e9,
        "largest_unchunked_batch": fit,
        "chunk": chunk,
        "chunked_gb": (2 * chunk * act_bytes + inputs) / 1e9,
        "views_per_s_range": (lo, hi),
        "step_s_unchunked_range": (2 * batch / hi, 2 * batch / lo),
        "step_s_chunked_range": (2 * batch / hi * 4 / 3, 2 * batch / lo * 4 / 3),
        "overhead_flops": 4 / 3,
    }


def estimate_lines(est: dict[str, Any], batch: int = 4096) -> list[str]:
    lo, hi = est["views_per_s_range"]
    return [
        "## H200 — ESTIMATE ON PAPER (not a measurement)",
        "",
        f"ResNet-50, 224², bf16 autocast, batch {batch:,} images = {2 * batch:,} views. "
        f"Activations saved for the backward: {est['activation_mb_per_view']:.1f} MB per view "
        "(counted on this CPU from the tensors autograd saves, bf16 autocast).",
        "",
        f"- unchunked at {batch:,}: ~{est['unchunked_gb_at_batch']:.0f} GB of activations and "
        f"views > {H200_MEMORY_GB:.0f} GB: does not fit; the largest unchunked batch within "
        f"{MEMORY_HEADROOM:.0%} of the memory is ~{est['largest_unchunked_batch']:,} images;",
        f"- chunk {est['chunk']:,} images: ~{est['chunked_gb']:.0f} GB (one chunk's activations "
        "+ all views; embeddings and their gradients, 4,096 × 2 × 128 × 4 B × 2, are 8 MB);",
        f"- time: one extra forward, FLOP ratio (1 + 1 + 2) / (1 + 2) = "
        f"{est['overhead_flops']:.2f}× the unchunked step per image;",
        f"- rate: NVIDIA's published 2,470 img/s for ResNet-50 v1.5 training on one A100 80GB "
        f"(PyTorch, AMP) scaled by {H200_SPEEDUP_RANGE[0]:g}–{H200_SPEEDUP_RANGE[1]:g}× gives "
        f"{lo:,.0f}–{hi:,.0f} views/s, so a {batch:,}-image step takes "
        f"~{est['step_s_unchunked_range'][0]:.1f}–{est['step_s_unchunked_range'][1]:.1f} s "
        f"unchunked (if it fit) and ~{est['step_s_chunked_range'][0]:.1f}–"
        f"{est['step_s_chunked_range'][1]:.1f} s chunked.",
        "",
        "`python bench/gradcache_bench.py --cuda` measures this case on a GPU "
        "(`cuda_case()` is what a GPU script calls).",
    ]
