"""The comparison rule of ``fastclr.testing`` on hand-made cases (runs in well under a second)."""

from __future__ import annotations

import math

import pytest
import torch

from fastclr.testing import assert_close_to_reference, error_ratio, reference_error, ulp

REF = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def test_bound_is_k_times_own_error_plus_atol() -> None:
    own = REF + torch.tensor([0.0, 0.01, 0.0], dtype=torch.float64)  # reference loses 0.01
    assert reference_error(REF, own) == pytest.approx(0.01)
    just_in = REF + torch.tensor([0.0, 0.0, 0.0205], dtype=torch.float64)
    assert_close_to_reference(just_in, REF, own, k=2, atol=1e-3)
    assert error_ratio(just_in, REF, own, k=2, atol=1e-3) == pytest.approx(0.0205 / 0.021)
    just_out = REF + torch.tensor([0.0, 0.0, 0.0215], dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"loss: error 0\.0215 > bound 0\.021"):
        assert_close_to_reference(just_out, REF, own, k=2, atol=1e-3, name="loss")
    assert error_ratio(just_out, REF, own, k=2, atol=1e-3) > 1


def test_default_own_error_is_rounding_to_the_output_dtype() -> None:
    ref = torch.tensor([1 + 2**-9], dtype=torch.float64)  # between two bf16 numbers (eps 2^-7)
    rounded = ref.to(torch.bfloat16)
    assert float(rounded) == 1.0  # rounding error 2^-9
    assert error_ratio(rounded, ref) == pytest.approx(0.5)  # 2^-9 / (2 · 2^-9)
    # the same number in float64 has no rounding excuse: only atol/rtol are allowed
    assert math.isinf(error_ratio(rounded.double(), ref))
    assert_close_to_reference(rounded.double(), ref, rtol=2**-8)


def test_rtol_scales_with_the_largest_reference_value() -> None:
    out = REF + torch.tensor([0.0, 0.0, 1e-3], dtype=torch.float64)
    assert_close_to_reference(out, REF, rtol=6e-4)  # bound 6e-4 · 2 = 1.2e-3
    with pytest.raises(AssertionError):
        assert_close_to_reference(out, REF, rtol=4e-4)


def test_elementwise_is_stricter_than_max_norm() -> None:
    ref = torch.tensor([100.0, 0.01], dtype=torch.float64)
    out = torch.tensor([100.0, 0.02], dtype=torch.float64)
    assert_close_to_reference(out, ref, rtol=1e-3)  # 0.01 ≤ 1e-3 · 100
    with pytest.raises(AssertionError, match="at element 1"):
        assert_close_to_reference(out, ref, rtol=1e-3, elementwise=True)


def test_sequences_are_compared_as_one_and_nan_always_fails() -> None:
    grads = [torch.ones(2, 3), torch.zeros(4)]
    refs = [torch.ones(2, 3, dtype=torch.float64), torch.full((4,), 1e-6, dtype=torch.float64)]
    assert_close_to_reference(grads, refs, atol=1e-6)
    with pytest.raises(AssertionError):
        assert_close_to_reference(grads, refs, atol=1e-7)
    bad = torch.tensor([1.0, float("nan"), 0.5])
    assert math.isinf(error_ratio(bad, REF, atol=1e9))
    with pytest.raises(AssertionError):
        assert_close_to_reference(bad, REF, atol=1e9)
    assert error_ratio(REF, REF) == 0.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="out has 2 elements, ref64 has 3"):
        assert_close_to_reference(torch.zeros(2), REF)


def test_ulp_is_one_unit_in_the_last_place() -> None:
    x = torch.tensor([1.0, 1.5, -3.0, 0.25], dtype=torch.float64)
    want = torch.tensor([2**-7, 2**-7, 2**-6, 2**-9], dtype=torch.float64)
    assert torch.equal(ulp(x, torch.bfloat16), want)
    assert float(ulp(torch.tensor([1.0]), torch.float16)) == 2**-10
