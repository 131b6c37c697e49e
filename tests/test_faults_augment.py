"""Hostile augmentation inputs: one validation rule at every entry point, no out-of-bounds reads.

Every entry point that takes explicit parameters (the reference, the torch, native and Triton
backends, ``SimCLRAugmentation.apply``) must refuse the same bad parameters with a ValueError that
names the field and the image (:meth:`AugmentParams.validate`). The native C++ kernel must refuse
them by itself too, and never read outside its input: that is checked here on the shipped library
(raw calls that skip the Python checks) and under AddressSanitizer on a small build of
kernels/cpu/augment.cpp with a driver that feeds it random hostile parameters
(tests/native/augment_hostile.cpp). Layouts that could be channels-first are refused unless
``layout`` is given. Cost: about 10 s on 2 cores (most of it compiling the ASan driver).
"""

from __future__ import annotations

import inspect
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fastclr import _native
from fastclr.augment import AugmentConfig, AugmentParams, SimCLRAugmentation, sample_params
from fastclr.augment.native_backend import apply_native
from fastclr.augment.native_backend import available as native_available
from fastclr.augment.reference import apply_reference
from fastclr.augment.torch_backend import apply_torch

ROOT = Path(__file__).resolve().parents[1]
CFG = AugmentConfig.imagenet(10, jitter_p=1.0, blur_p=1.0)
N, H, W = 3, 12, 9


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (N, H, W, 3), dtype=torch.uint8, generator=g)


def _good() -> AugmentParams:
    return sample_params(N, torch.tensor([[H, W]] * N), CFG, torch.Generator().manual_seed(1))


def _set(p: AugmentParams, name: str, row: int, value: object) -> AugmentParams:
    t = getattr(p, name).clone()
    t[row] = torch.as_tensor(value, dtype=t.dtype)
    return replace(p, **{name: t})


def _retype(p: AugmentParams, name: str, dtype: torch.dtype) -> AugmentParams:
    return replace(p, **{name: getattr(p, name).to(dtype)})


# (bad parameters, what the message must say): each breaks exactly one part of the rule.
HOSTILE: list[tuple[str, Callable[[AugmentParams], AugmentParams], str]] = [
    ("crop-right", lambda p: _set(p, "crop", 1, [0, 1, 5, W]), r"params\.crop\[1\]"),
    ("crop-below", lambda p: _set(p, "crop", 2, [H, 0, 1, 1]), r"params\.crop\[2\]"),
    ("crop-negative", lambda p: _set(p, "crop", 0, [-1, 0, 2, 2]), r"params\.crop\[0\]"),
    ("crop-empty", lambda p: _set(p, "crop", 0, [0, 0, 0, 3]), r"params\.crop\[0\]"),
    ("crop-huge", lambda p: _set(p, "crop", 1, [0, 0, 2**31 - 1, 2]), r"params\.crop\[1\]"),
    ("crop-float", lambda p: _retype(p, "crop", torch.float32), r"params\.crop must be an int"),
    ("order-repeat", lambda p: _set(p, "order", 1, [0, 0, 0, 0]), r"params\.order\[1\].*perm"),
    ("order-range", lambda p: _set(p, "order", 0, [0, 1, 2, 7]), r"params\.order\[0\].*perm"),
    ("brightness<0", lambda p: _set(p, "brightness", 2, -0.1), r"params\.brightness\[2\]"),
    ("contrast-nan", lambda p: _set(p, "contrast", 0, float("nan")), r"params\.contrast\[0\]"),
    ("saturation-inf", lambda p: _set(p, "saturation", 1, float("inf")), r"saturation\[1\]"),
    ("hue>0.5", lambda p: _set(p, "hue", 1, 0.7), r"params\.hue\[1\].*\[-0\.5, 0\.5\]"),
    ("sigma-zero", lambda p: _set(p, "sigma", 0, 0.0), r"params\.sigma\[0\].*> 0"),
    ("flip-float", lambda p: _retype(p, "flip", torch.float32), r"params\.flip must be a bool"),
]


def _entry_points() -> list[object]:
    points: list[object] = [
        pytest.param(apply_reference, id="reference"),
        pytest.param(apply_torch, id="torch"),
        pytest.param(
            lambda i, p, c: SimCLRAugmentation(c, backend="torch").apply(i, p), id="module-apply"
        ),
        pytest.param(
            apply_native,
            id="native",
            marks=pytest.mark.skipif(not native_available(), reason="native library not built"),
        ),
    ]
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        from fastclr.augment.triton_backend import apply_triton

        points.append(pytest.param(apply_triton, id="triton"))
    return points


def _checked_entry_points() -> list[object]:
    """The backends' apply_* made by ``checked_apply`` (the DALI one imports without DALI)."""
    from fastclr.augment.dali import apply_dali

    points: list[object] = [apply_torch, apply_native, apply_dali]
    try:
        from fastclr.augment.triton_backend import apply_triton
    except ImportError:  # no triton: three entry points still show the rule
        return points
    return [*points, apply_triton]


@pytest.mark.parametrize("apply", _checked_entry_points(), ids=lambda f: f.__name__)
def test_checked_entry_points_show_the_public_call(apply: Callable[..., torch.Tensor]) -> None:
    """``checked_apply`` gives each apply_* the public signature (not its body's checked
    arguments), with the body's name and docstring, and it pickles as its module's function."""
    sig = inspect.signature(apply)
    assert list(sig.parameters) == ["images", "params", "config", "layout", "validate"]
    assert sig.parameters["layout"].default is None and sig.parameters["validate"].default
    assert sig.parameters["layout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert apply.__qualname__ == apply.__name__
    assert apply.__name__.startswith("apply_") and "one view" in (apply.__doc__ or "").lower()
    assert pickle.loads(pickle.dumps(apply)) is apply


@pytest.mark.parametrize("apply", _entry_points())
@pytest.mark.parametrize(("make", "match"), [pytest.param(m, r, id=i) for i, m, r in HOSTILE])
def test_one_rule_at_every_entry_point(
    apply: Callable[..., torch.Tensor], make: Callable[[AugmentParams], AugmentParams], match: str
) -> None:
    imgs = _images()
    bad = make(_good())
    with pytest.raises(ValueError, match=match):
        apply(imgs, bad, CFG)


def test_valid_edge_parameters_pass_everywhere() -> None:
    """The rule's boundaries are allowed: full-image crop, 1-px crop at the far corner, hue ±0.5,
    zero factors; the native and reference outputs still agree there."""
    p = _set(_good(), "crop", 0, [0, 0, H, W])
    p = _set(p, "crop", 1, [H - 1, W - 1, 1, 1])
    p = _set(_set(p, "hue", 0, 0.5), "hue", 1, -0.5)
    p = _set(_set(p, "brightness", 2, 0.0), "saturation", 2, 0.0)
    imgs = _images()
    ref = apply_reference(imgs, p, CFG)
    assert torch.isfinite(ref).all()
    if native_available():
        assert float((apply_native(imgs, p, CFG) - ref).abs().max()) <= 1e-3


def _raw_native(crop: list[int], order: list[int], k: int = 1, s: int = 4) -> None:
    """Call the shipped kernel directly (no Python-side check) on a 4×4 source."""
    mod = _native.load()
    assert mod is not None
    src = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    crop_t = torch.tensor([crop], dtype=torch.int32)
    flags = torch.ones(1, 5, dtype=torch.uint8)
    factors = torch.ones(1, 4)
    order_t = torch.tensor([order], dtype=torch.int32)
    taps = torch.full((1, k), 1.0 / k)
    mean, std = torch.zeros(3), torch.ones(3)
    out = torch.empty(1, s, s, 3)
    mod.simclr_view_f32(
        src.data_ptr(), 1, 4, 4, crop_t.data_ptr(), flags.data_ptr(), factors.data_ptr(),
        order_t.data_ptr(), taps.data_ptr(), k, 0.5, mean.data_ptr(), std.data_ptr(), s,
        out.data_ptr(), 1,
    )  # fmt: skip


@pytest.mark.skipif(not native_available(), reason="native library not built")
@pytest.mark.parametrize(
    ("crop", "order", "k", "match"),
    [
        ([0, 0, 5, 4], [0, 1, 2, 3], 1, r"crop\[0\] = \(0, 0, 5, 4\)"),
        ([3, 3, 2, 1], [0, 1, 2, 3], 1, r"crop\[0\]"),
        ([-(2**31), 0, 1, 1], [0, 1, 2, 3], 1, r"crop\[0\]"),
        ([0, 0, 2**31 - 1, 4], [0, 1, 2, 3], 1, r"crop\[0\]"),
        ([0, 0, 4, 4], [3, 3, 3, 3], 1, r"order\[0\] is not a permutation"),
        ([0, 0, 4, 4], [0, 1, 2, -1], 1, r"order\[0\]"),
        ([0, 0, 4, 4], [0, 1, 2, 3], 9, r"blur width K"),
        ([0, 0, 4, 4], [0, 1, 2, 3], 2, r"blur width K"),
    ],
)
def test_native_kernel_refuses_by_itself(
    crop: list[int], order: list[int], k: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _raw_native(crop, order, k)
    _raw_native([0, 0, 4, 4], [3, 2, 1, 0], 3)  # the same call with admissible values runs


def _asan_build(tmp: Path) -> Path:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the AddressSanitizer driver")
    probe_src = tmp / "probe.cpp"
    probe_src.write_text("int main() { return 0; }\n")
    probe = subprocess.run(
        [cxx, "-fsanitize=address,undefined", str(probe_src), "-o", str(tmp / "probe")],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"the compiler cannot build with AddressSanitizer: {probe.stderr[-300:]}")
    exe = tmp / "augment_hostile"
    cmd = [
        cxx, "-std=c++17", "-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
        "-fno-sanitize-recover=all", f"-I{ROOT / 'kernels/cpu'}",
        # dispatch.cpp defines the public entry points over the kernels' baseline copy (isa.h)
        *(str(ROOT / "kernels/cpu" / f) for f in ("augment.cpp", "ntxent.cpp", "dispatch.cpp")),
        str(ROOT / "tests/native/augment_hostile.cpp"),
        "-o", str(exe),
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return exe


def test_native_kernel_under_address_sanitizer(tmp_path: Path) -> None:
    """20,000 random cases (half hostile: wild crop boxes and orders, even or oversized blur
    widths, NaN/inf factors and taps) on exact-size heap blocks: the kernel throws exactly for the
    inadmissible ones and ASan sees no read or write outside any block."""
    exe = _asan_build(tmp_path)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    env.pop("LD_PRELOAD", None)
    # The instrumentation works: a read one byte past a block is reported.
    probe = subprocess.run([str(exe), "--self-test"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "heap-buffer-overflow" in probe.stderr
    for seed in (1, 2):
        res = subprocess.run(
            [str(exe), "10000", str(seed)], capture_output=True, text=True, env=env, timeout=120
        )
        assert res.returncode == 0, res.stderr[-3000:]
        _, valid, refused = res.stdout.split()
        assert int(valid) > 1000 and int(refused) > 1000  # both sides of the rule exercised


# ---- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 3, 4])
def test_channels_first_with_small_width_is_refused(width: int) -> None:
    nchw = torch.zeros(2, 3, 16, width, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"ambiguous layout.*layout='NHWC' or layout='NCHW'"):
        SimCLRAugmentation(AugmentConfig.cifar(8), seed=0)(nchw)
    with pytest.raises(ValueError, match="ambiguous layout"):
        apply_torch(nchw, AugmentParams.identity(torch.tensor([[3, 16]] * 2)), CFG)


def test_explicit_layout_reads_both_ways() -> None:
    g = torch.Generator().manual_seed(3)
    nhwc = torch.randint(0, 256, (2, 4, 6, 3), dtype=torch.uint8, generator=g)
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()  # (2, 3, 4, 6): the same images channels-first
    cfg = AugmentConfig.cifar(8)
    a = SimCLRAugmentation(cfg, seed=5, layout="NHWC", backend="torch")(nhwc)
    b = SimCLRAugmentation(cfg, seed=5, layout="NCHW", backend="torch")(nchw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # an unambiguous channels-first batch is named as such, with the argument that reads it
    with pytest.raises(ValueError, match="looks channels-first: pass layout='NCHW'"):
        SimCLRAugmentation(cfg, seed=5)(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="layout must be"):
        SimCLRAugmentation(cfg, layout="CHW")
