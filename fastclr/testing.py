"""One rule for "close enough to the reference", shared by the tests and the benchmarks.

A fast path is compared with the float64 definition (``upcast=True`` references, ``apply_reference``
in float64), never with another fast path. The bar is the one flash-attention uses:

    max |out − ref64|  ≤  k · max |ref_lowp − ref64|  +  atol  +  rtol · max |ref64|

- ``ref64``: the reference evaluated in float64 on exactly the inputs ``out`` saw.
- ``ref_lowp``: the reference's own answer in the dtype under test (for example the plain-torch
  reference with ``upcast=False`` on bf16 inputs). Its distance to ``ref64`` is what torch itself
  loses to rounding in that dtype, so a kernel within ``k`` (default 2) times that is as accurate
  as the framework it replaces. When it is not given, ``ref64`` rounded to ``out``'s dtype is
  used: the unavoidable error of returning the answer in that dtype.
- ``atol`` / ``rtol``: a small floor for what the rounding of ``ref_lowp`` does not show (for
  example float32 accumulation where the low-precision reference happens to be exact), stated by
  the caller next to the dtype it applies to.

With ``elementwise=True`` the same inequality must hold element by element (``rtol`` then scales
each element's own magnitude), a stricter bar for outputs whose elements are independent, such as
augmented pixels.

:func:`error_ratio` returns the left side over the right side (≤ 1 passes) so a benchmark can
print how much margin it has; :func:`assert_close_to_reference` raises ``AssertionError`` with
every number in the message.

The contract tolerances of the library (the ``*_ATOL`` constants below) live here, next to the
rule, so tests and benchmarks import the same numbers and production code imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "AUGMENT_ATOL",
    "assert_close_to_reference",
    "error_ratio",
    "loss_backends",
    "reference_error",
    "ulp",
]

#: Augmentation backends (torch, native, Triton) against the float64 ``apply_reference`` for the
#: same parameters, in normalised units, added to ``k`` × the rounding of the reference to the
#: output dtype. Resize sample positions are float32 in every fast backend (as in
#: ``F.interpolate``): ~3e-5 px at a 300-px source, which on a worst-case noise image (neighbours
#: differing by up to 1.0) colour jitter amplifies to a few 1e-4 after normalisation (measured max
#: 3e-4 for the torch backend). 1e-3 is 1/17 of one uint8 step (1/255/0.229 ≈ 0.017).
AUGMENT_ATOL = 1e-3

Tensors = Tensor | Sequence[Tensor]


def _flat64(t: Tensors) -> Tensor:
    """One float64 vector of every element (a sequence, e.g. per-input gradients, is joined)."""
    if isinstance(t, Tensor):
        return t.detach().to(torch.float64).reshape(-1)
    return torch.cat([x.detach().to(torch.float64).reshape(-1) for x in t])


def _dtype_of(t: Tensors) -> torch.dtype:
    return t.dtype if isinstance(t, Tensor) else t[0].dtype


def _own(ref64: Tensor, ref_lowp: Tensors | None, dtype: torch.dtype) -> Tensor:
    """|ref_lowp − ref64| per element; ``ref64`` rounded to ``dtype`` when ``ref_lowp`` is None."""
    if ref_lowp is None:
        if not dtype.is_floating_point:
            return torch.zeros_like(ref64)
        return (ref64.to(dtype).to(torch.float64) - ref64).abs()
    low = _flat64(ref_lowp)
    if low.shape != ref64.shape:
        raise ValueError(f"ref_lowp has {low.numel()} elements, ref64 has {ref64.numel()}")
    return (low - ref64).abs()


def _terms(
    out: Tensors,
    ref64: Tensors,
    ref_lowp: Tensors | None,
    k: float,
    atol: float,
    rtol: float,
    elementwise: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(error, own error, bound), per element when ``elementwise`` else as max-norm scalars."""
    got, want = _flat64(out), _flat64(ref64)
    if got.shape != want.shape:
        raise ValueError(f"out has {got.numel()} elements, ref64 has {want.numel()}")
    own = _own(want, ref_lowp, _dtype_of(out))
    err = (got - want).abs()
    # NaN in out must fail: make its error infinite (NaN compares false with everything).
    err = torch.where(torch.isnan(got) != torch.isnan(want), torch.inf, err.nan_to_num(0.0))
    if elementwise:
        return err, own, k * own + atol + rtol * want.abs()
    zero = torch.zeros((), dtype=torch.float64)
    emax = err.max() if err.numel() else zero
    omax = own.max() if own.numel() else zero
    scale = want.abs().max() if want.numel() else zero
    return emax, omax, k * omax + atol + rtol * scale


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """One unit in the last place of ``dtype`` at each value of ``x`` (float64, same shape).

    The worst rounding error of a cast that truncates instead of rounding to nearest (Triton's
    interpreter casts to bf16/fp16 that way): pass ``ref64 + ulp(ref64, dtype)`` as ``ref_lowp``
    with ``k=1`` and ``elementwise=True`` to allow exactly that.
    """
    _, exponent = torch.frexp(x.detach().to(torch.float64))  # |x| = m·2^e, m ∈ [0.5, 1)
    eps = torch.full_like(x, torch.finfo(dtype).eps, dtype=torch.float64)
    return torch.ldexp(eps, exponent - 1)


def reference_error(ref64: Tensors, ref_lowp: Tensors) -> float:
    """max |ref_lowp − ref64|: the reference's own rounding error in ``ref_lowp``'s dtype."""
    return float(_own(_flat64(ref64), ref_lowp, torch.float64).max())


def error_ratio(
    out: Tensors,
    ref64: Tensors,
    ref_lowp: Tensors | None = None,
    *,
    k: float = 2.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    elementwise: bool = False,
) -> float:
    """Error over the allowed error (the module docstring's rule); ≤ 1 means within the bar.

    Returns 0 for an exact match and ``inf`` for any error against a zero bound or a NaN where
    the reference has none. With ``elementwise=True`` it is the worst element's ratio.
    """
    err, _, bound = _terms(out, ref64, ref_lowp, k, atol, rtol, elementwise)
    if err.numel() == 0:
        return 0.0
    ratio = torch.where(err == 0, 0.0, err / bound)  # err > 0 over bound 0 gives inf
    return float(ratio.max())


def assert_close_to_reference(
    out: Tensors,
    ref64: Tensors,
    ref_lowp: Tensors | None = None,
    *,
    k: float = 2.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    elementwise: bool = False,
    name: str = "result",
) -> None:
    """Assert ``out`` is within ``k`` × the reference's own error + ``atol`` + ``rtol``·|ref64|.

    Args:
        out: the fast path's result (any dtype), or a sequence of tensors (e.g. gradients)
            compared as one.
        ref64: the float64 reference for the same inputs, same number of elements as ``out``.
        ref_lowp: the reference computed in the dtype under test; default ``ref64`` rounded to
            ``out``'s dtype.
        k: multiple of the reference's own error allowed (2 unless a caller says why).
        atol: absolute floor added to the bound.
        rtol: multiple of max |ref64| (of |ref64| per element with ``elementwise``) added.
        elementwise: hold the bound per element instead of in the max norm.
        name: what is compared, for the failure message.

    Raises:
        AssertionError: naming ``name``, the error, the reference's own error and the bound.
    """
    err, own, bound = _terms(out, ref64, ref_lowp, k, atol, rtol, elementwise)
    bad = err > bound
    if bool(bad.any()):
        i = int(torch.argmax(torch.where(bad, err - bound, -torch.inf))) if elementwise else 0
        e, o, b = (float(t.reshape(-1)[i]) for t in (err, own, bound))
        where = f" at element {i}" if elementwise else ""
        raise AssertionError(
            f"{name}: error {e:.3g}{where} > bound {b:.3g} "
            f"(= {k:g} × reference's own error {o:.3g} + atol {atol:.3g} + rtol {rtol:.3g} × |ref|)"
        )


def loss_backends() -> list[str]:
    """The loss backends a test can run in this process, for ``pytest.mark.parametrize``.

    ``reference`` always; ``native`` when the library is built; ``triton`` when it imports and
    there is a CUDA device or the CPU interpreter (``TRITON_INTERPRET=1``) to run it.
    """
    from fastclr.loss import BACKENDS

    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return [n for n in BACKENDS.available() if any(BACKENDS.runs_on(n, d) for d in devices)]
