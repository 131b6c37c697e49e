"""fastclr: fast, trustworthy SimCLR.

``fastclr.NTXentLoss`` / ``fastclr.ntxent`` are the NT-Xent (SimCLR) and SupCon losses with fused
backends; :mod:`fastclr.reference` holds the plain-torch definitions they are tested against.
"""

from fastclr._version import __version__
from fastclr.downstream import fit_linear_probe, load_classifier, load_encoder, load_simclr
from fastclr.gradcache import contrastive_backward
from fastclr.loss import NTXentLoss, available_backends, ntxent, resolve_backend
from fastclr.reference import ntxent_reference, views_to_batch

__all__ = [
    "NTXentLoss",
    "__version__",
    "available_backends",
    "contrastive_backward",
    "fit_linear_probe",
    "load_classifier",
    "load_encoder",
    "load_simclr",
    "ntxent",
    "ntxent_reference",
    "resolve_backend",
    "views_to_batch",
]
