"""Input validation of the public loss API: each bad input gets an error that names it."""

from __future__ import annotations

import math

import pytest
import torch

from fastclr import NTXentLoss, available_backends, ntxent, resolve_backend


def test_mismatched_view_shapes() -> None:
    with pytest.raises(ValueError, match=r"same shape.*views\[1\]"):
        ntxent(torch.randn(4, 8), torch.randn(5, 8))


def test_one_view_without_labels() -> None:
    with pytest.raises(ValueError, match="two or more views"):
        ntxent(torch.randn(4, 8))


def test_no_inputs() -> None:
    with pytest.raises(TypeError, match="needs embeddings"):
        ntxent()


def test_fewer_than_two_rows() -> None:
    with pytest.raises(ValueError, match="at least 2 rows"):
        ntxent(torch.randn(1, 8), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="at least one row"):
        ntxent(torch.randn(0, 8), torch.randn(0, 8))


def test_no_positive_at_all() -> None:
    with pytest.raises(ValueError, match="no anchor a positive"):
        ntxent(torch.randn(4, 8), labels=torch.arange(4))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_floating_embeddings(dtype: torch.dtype) -> None:
    z = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"views\[0\] must be a floating tensor"):
        ntxent(z, z)


def test_float_labels_rejected() -> None:
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        ntxent(torch.randn(4, 3), labels=torch.zeros(4))


def test_labels_shape() -> None:
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        ntxent(torch.randn(4, 3), labels=torch.zeros(5, dtype=torch.long))


def test_labels_with_several_views() -> None:
    with pytest.raises(ValueError, match="single"):
        ntxent(torch.randn(4, 3), torch.randn(4, 3), labels=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("tau", [0.0, -0.1, math.inf, math.nan])
def test_bad_temperature(tau: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        ntxent(torch.randn(4, 3), torch.randn(4, 3), temperature=tau)
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=tau)


def test_temperature_type() -> None:
    with pytest.raises(TypeError, match="temperature"):
        NTXentLoss(temperature="0.5")  # type: ignore[arg-type]


def test_bad_reduction_and_backend() -> None:
    with pytest.raises(ValueError, match="reduction"):
        NTXentLoss(reduction="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        NTXentLoss(backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fast", torch.device("cpu"))


def test_wrong_rank() -> None:
    with pytest.raises(ValueError, match="2-D"):
        ntxent(torch.randn(4, 3, 2), torch.randn(4, 3, 2))


def test_zero_feature_columns() -> None:
    with pytest.raises(ValueError, match="feature column"):
        ntxent(torch.randn(4, 0), torch.randn(4, 0))


def test_different_devices() -> None:
    meta = torch.randn(4, 3, device="meta")
    with pytest.raises(ValueError, match="one device"):
        ntxent(torch.randn(4, 3), meta)
    with pytest.raises(ValueError, match="labels are on"):
        ntxent(torch.randn(4, 3), labels=torch.zeros(4, dtype=torch.long, device="meta"))


def test_different_dtypes() -> None:
    with pytest.raises(TypeError, match="one dtype"):
        ntxent(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_raise(bad: float) -> None:
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    b[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        ntxent(a, b)
    for backend in available_backends():
        with pytest.raises(ValueError, match="NaN or Inf"):
            ntxent(a, b, backend=backend)  # type: ignore[arg-type]


def test_non_tensor_inputs() -> None:
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        ntxent([[1.0]], [[2.0]])  # type: ignore[arg-type]


def test_reference_always_available() -> None:
    assert "reference" in available_backends()
    assert resolve_backend("reference", torch.device("cpu")) == "reference"


def test_output_dtype_follows_input() -> None:
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        a, b = torch.randn(4, 3, dtype=dtype), torch.randn(4, 3, dtype=dtype)
        assert ntxent(a, b, backend="reference").dtype == dtype


def test_compile_fullgraph_with_default_checks() -> None:
    """The default NTXentLoss (finite check on) traces under torch.compile(fullgraph=True)."""
    torch._dynamo.reset()
    loss_fn = NTXentLoss(temperature=0.3)
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(a, b), loss_fn(a, b))
