"""The native and Triton LSE ops share one registration: same schemas, same errors (~1 s)."""

from __future__ import annotations

import pytest
import torch

from fastclr.ops import _register, native_ntxent, triton_ntxent

BACKENDS = {"native": native_ntxent, "triton": triton_ntxent}
OPS = ("lse_sym", "lse_sym_backward", "lse_rect", "lse_rect_backward")


@pytest.mark.parametrize("op", OPS)
def test_schemas_match_argument_for_argument(op: str) -> None:
    schemas = {
        name: getattr(torch.ops.fastclr, f"{name}_{op}").default._schema for name in BACKENDS
    }
    native, triton = schemas["native"], schemas["triton"]
    assert [(a.name, str(a.type)) for a in native.arguments] == [
        (a.name, str(a.type)) for a in triton.arguments
    ]
    assert [str(r.type) for r in native.returns] == [str(r.type) for r in triton.returns]
    if op.endswith("backward"):
        assert native.arguments[0].name == "grad"  # the upstream gradient comes first


def _mistakes() -> list[tuple[str, object, tuple, type[Exception], str]]:
    z = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    return [
        ("lse_sym", "integer rows", (z.to(torch.int32), 0.5), TypeError, "float16"),
        ("lse_sym", "1-D rows", (z[0], 0.5), ValueError, "2-D"),
        ("lse_sym", "zero temperature", (z, 0.0), ValueError, "temperature"),
        ("lse_sym", "nan temperature", (z, float("nan")), ValueError, "temperature"),
        ("lse_rect", "offset outside", (z[:4], z, 7, 0.5), ValueError, "q_offset"),
        ("lse_rect", "widths differ", (z[:, :3], z, 0, 0.5), ValueError, "same dim"),
        ("lse_rect", "dtypes differ", (z.double(), z, 0, 0.5), ValueError, "dtype"),
    ]


@pytest.mark.parametrize("case", range(len(_mistakes())))
def test_same_mistake_same_exception_in_both_backends(case: int) -> None:
    op, _, args, exc, match = _mistakes()[case]
    for mod in BACKENDS.values():
        with pytest.raises(exc, match=match):
            getattr(mod.BACKEND, op.replace("lse_", ""))(*args)


def test_wrong_device_is_a_value_error_naming_the_tensor() -> None:
    t = torch.empty(4, 3, device="meta")  # neither backend computes on meta tensors
    for mod in BACKENDS.values():
        with pytest.raises(ValueError, match="zhat is on meta"):
            _register.check_rows("zhat", t, mod.KERNELS)
