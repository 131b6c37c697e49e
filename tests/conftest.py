"""Test set-up shared by every test module.

Without a CUDA device the Triton kernels run on CPU tensors through Triton's interpreter; that
needs TRITON_INTERPRET=1 before triton is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

if not os.environ.get("FASTCLR_TEST_COMPILED") and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests on tiny tensors (OpenMP barriers cost more than the work,
    and far more on a shared, oversubscribed CPU); use with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


def cuda_or_interpreter() -> bool:
    """True where Triton kernels can run: a CUDA device, or CPU tensors under the interpreter."""
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
