"""Drop-in replacements for other libraries' contrastive losses, on fastclr's fused backends.

Each module reproduces one library's loss exactly (signature, defaults, values and input gradients,
normalisation — none where the peer has none —, the output dtype under autocast, edge cases), so
that switching is one changed import; where a behaviour is deliberately not reproduced, the
module's docstring says so. All of them run on every backend (``backend="auto"``: Triton on CUDA,
native C++ on CPU, the reference for float64), compute in float32 (float64 for float64 inputs)
whatever the autocast, and never build the full similarity matrix on the fused ones.

* :mod:`fastclr.compat.lightly`: ``NTXentLoss(temperature, memory_bank_size, gather_distributed)``;
* :mod:`fastclr.compat.pml`: pytorch-metric-learning's ``NTXentLoss`` and ``SupConLoss``;
* :mod:`fastclr.compat.solo`: solo-learn's ``simclr_loss_func``;
* :mod:`fastclr.compat.supcon`: SupContrast's ``SupConLoss`` (Khosla et al.'s code).

The modules are imported on demand (``import fastclr.compat.pml``). Only ``pml`` imports its
peer, and only where it is installed: its losses then extend PML's ``BaseMetricLossFunction``, so
that PML's wrappers (``DistributedLossWrapper``) accept them.
"""

from __future__ import annotations

__all__ = ["lightly", "pml", "solo", "supcon"]
