"""fastclr: fast, trustworthy SimCLR.

``fastclr.NTXentLoss`` / ``fastclr.ntxent`` are the NT-Xent (SimCLR) and SupCon losses with fused
backends; :mod:`fastclr.reference` holds the plain-torch definitions they are tested against.
"""

from fastclr.gradcache import contrastive_backward
from fastclr.loss import NTXentLoss, available_backends, ntxent, resolve_backend
from fastclr.reference import ntxent_reference, views_to_batch

__version__ = "0.1.0"

__all__ = [
    "NTXentLoss",
    "__version__",
    "available_backends",
    "contrastive_backward",
    "ntxent",
    "ntxent_reference",
    "resolve_backend",
    "views_to_batch",
]
