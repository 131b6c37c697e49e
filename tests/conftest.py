"""Test set-up shared by every test module.

Without a CUDA device the Triton kernels run on CPU tensors through Triton's interpreter; that
needs TRITON_INTERPRET=1 before triton is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import os

if not os.environ.get("FASTCLR_TEST_COMPILED"):
    try:
        import torch as _torch

        _has_cuda = _torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        _has_cuda = False
    if not _has_cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings

# Small, deterministic example budgets: the Triton interpreter is slow and CI has 2 cores.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


def cuda_or_interpreter() -> bool:
    """True where Triton kernels can run: a CUDA device, or CPU tensors under the interpreter."""
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
