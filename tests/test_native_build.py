"""The CMake-built native library is real, installed inside the package, and optional."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from fastclr import _native


def test_native_library_loads() -> None:
    assert _native.available(), f"native library missing: {_native.load_error()}"
    mod = _native.load()
    assert mod is not None and mod.__name__ == "fastclr._cpu"
    assert isinstance(mod.has_openmp, bool)


def test_no_top_level_kernels_module(tmp_path: os.PathLike[str]) -> None:
    """kernels/ installs as fastclr.kernels, never as a top-level `kernels` package.

    Run isolated (-I: no current directory, no PYTHONPATH) so only what is installed counts.
    """
    code = (
        "import importlib.util as u\n"
        "print(u.find_spec('kernels') is None, u.find_spec('fastclr.kernels.triton') is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


_FALLBACK = """
import sys, warnings, torch
if {broken}:
    sys.modules["fastclr._cpu"] = None  # the import of the compiled module fails
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as w:
    import fastclr
    from fastclr.augment import AugmentConfig, SimCLRAugmentation
    aug = SimCLRAugmentation(AugmentConfig.cifar(8), seed=0)
    assert aug.resolve_backend(torch.device("cpu")) == "torch"
    views = aug(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    got = fastclr.ntxent(a, b)
    got2 = fastclr.ntxent(a, b)
ref = fastclr.ntxent_reference(*fastclr.views_to_batch([a, b]), 0.5, upcast=False)
assert torch.equal(got, ref) and torch.equal(got2, ref), (got, ref)
assert "native" not in fastclr.available_backends()
msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
assert len(msgs) == 1, msgs
assert "the native CPU library" in msgs[0] and "pip install -e ." in msgs[0], msgs
assert "augmentation on cpu falls back to backend='torch'" in msgs[0], msgs
print("ok")
"""


@pytest.mark.parametrize("broken", [True, False], ids=["import-fails", "disabled-by-env"])
def test_missing_native_library_warns_once_for_loss_and_augmentation(broken: bool) -> None:
    """Augmentation first, then the loss twice: one warning in all (about 5 s per case)."""
    env = dict(os.environ)
    if not broken:
        env["FASTCLR_DISABLE_NATIVE"] = "1"
    code = _FALLBACK.format(broken=broken)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_wheel_layout(tmp_path: os.PathLike[str]) -> None:
    """A normal (non-editable) wheel compiles the native module into fastclr/ and ships the
    kernel sources as fastclr/kernels, with nothing top-level but the fastclr package."""
    import pathlib
    import zipfile

    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    out = subprocess.run(
        [*cmd, "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = pathlib.Path(tmp_path).glob("fastclr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {
        "fastclr",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    assert any(n.startswith("fastclr/_cpu") and n.endswith(".so") for n in names)
    assert "fastclr/kernels/triton/__init__.py" in names


# ------------------------------------------------------------------------------------------------
# portable build: instruction-set copies chosen at run time (kernels/cpu/isa.h)

ISAS = ("baseline", "avx2", "avx512")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_best_supported_copy_is_chosen() -> None:
    mod = _native.require()
    compiled = mod.compiled_isas.split(",")
    if compiled == ["native"]:  # a local FASTCLR_NATIVE_ARCH=ON build: one copy
        assert mod.active_isa() == "native"
        return
    assert compiled[0] == "baseline" and set(compiled) <= set(ISAS)
    flags = _cpu_flags()
    want = "baseline"
    if "avx2" in compiled and {"avx2", "fma"} <= flags:
        want = "avx2"
    if "avx512" in compiled and {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"} <= (
        flags
    ):
        want = "avx512"
    if os.environ.get("FASTCLR_ISA"):
        pytest.skip("FASTCLR_ISA is set in this environment")
    assert mod.active_isa() == want


_ISA_CHECK = """
import sys, torch
from dataclasses import replace
import fastclr
from fastclr import _native
from fastclr.augment import AugmentConfig, apply_reference, sample_params
from fastclr.augment.native_backend import apply_native
from fastclr.reference import ntxent_reference, views_to_batch
from fastclr.testing import AUGMENT_ATOL, assert_close_to_reference
print(_native.require().active_isa())
g = torch.Generator().manual_seed(0)
views = [torch.randn(101, 33, generator=g, dtype=torch.float64) for _ in range(2)]
for tau in (0.5, 0.02):  # both sides of the constant-shift switch
    leaves = [v.float().requires_grad_() for v in views]
    fastclr.ntxent(*leaves, temperature=tau, backend="native").backward()
    ref_leaves = [v.clone().requires_grad_() for v in views]
    ref = ntxent_reference(*views_to_batch(ref_leaves), tau)
    ref.backward()
    got = fastclr.ntxent(*[v.float() for v in views], temperature=tau, backend="native")
    assert_close_to_reference(got, ref, rtol=2e-5, atol=1e-5, name="loss")
    assert_close_to_reference([t.grad for t in leaves], [t.grad for t in ref_leaves],
                              rtol=2e-4, atol=1e-6, name="grad")
cfg = AugmentConfig.imagenet(17, jitter_p=1.0, blur_p=1.0)
imgs = torch.randint(0, 256, (5, 30, 23, 3), dtype=torch.uint8, generator=g)
p = sample_params(5, torch.tensor([[30, 23]] * 5), cfg, g)
ref64 = apply_reference(imgs, p, replace(cfg, dtype=torch.float64))
assert_close_to_reference(apply_native(imgs, p, cfg), ref64, atol=AUGMENT_ATOL, elementwise=True)
"""


@pytest.mark.parametrize("isa", ISAS)
def test_each_instruction_set_copy_matches_the_reference(isa: str) -> None:
    """Each compiled copy the CPU can run, forced by FASTCLR_ISA (about 4 s per copy)."""
    mod = _native.require()
    if isa not in mod.compiled_isas.split(","):
        pytest.skip(f"no {isa} copy in this build ({mod.compiled_isas})")
    env = dict(os.environ, FASTCLR_ISA=isa)
    out = subprocess.run(
        [sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    active = out.stdout.split()[0]
    if active != isa:
        pytest.skip(f"this CPU cannot run the {isa} copy (best: {active})")


# The native loss tests whose shapes and cases reach every code path of a copy: hypothesis-drawn
# odd shapes over several tiles (values and gradients against float64), both sides of the
# constant-shift switch, the two-exp backward, bitwise determinism per thread count.
_COPY_TESTS = "values_and_grads or deterministic or switch_rule or large_upstream"


@pytest.mark.slow
@pytest.mark.parametrize("isa", ISAS)
def test_each_instruction_set_copy_on_drawn_shapes(isa: str) -> None:
    """tests/test_native_ntxent.py's drawn-shape, switch and determinism tests on each copy the CPU
    can run, forced by FASTCLR_ISA (about 10 s per copy). The copy this process runs is skipped:
    the test run itself covers it."""
    mod = _native.require()
    if isa not in mod.compiled_isas.split(","):
        pytest.skip(f"no {isa} copy in this build ({mod.compiled_isas})")
    if isa == mod.active_isa():
        pytest.skip(f"{isa} is the copy this test run uses")
    env = dict(os.environ, FASTCLR_ISA=isa)
    probe = "from fastclr import _native; print(_native.require().active_isa())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    if out.stdout.strip() != isa:
        pytest.skip(f"this CPU cannot run the {isa} copy (best: {out.stdout.strip()})")
    test_file = os.path.join(os.path.dirname(__file__), "test_native_ntxent.py")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    out = subprocess.run([*cmd, "-k", _COPY_TESTS], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout, out.stdout[-3000:]


def test_unknown_instruction_set_names_the_variable() -> None:
    code = "from fastclr import _native\n_native.require().active_isa()\n"
    env = dict(os.environ, FASTCLR_ISA="avx9000")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "FASTCLR_ISA must be one of baseline, avx2, avx512; got 'avx9000'" in out.stderr


@pytest.mark.slow
def test_default_build_compiles_a_baseline_copy_without_avx(tmp_path: os.PathLike[str]) -> None:
    """Configure CMakeLists.txt with its defaults (FASTCLR_NATIVE_ARCH off) and build the baseline
    copy of the kernels: its object code must use no AVX register (about 30 s)."""
    import pathlib
    import shutil

    cmake, objdump = shutil.which("cmake"), shutil.which("objdump")
    if cmake is None or objdump is None:
        pytest.skip("needs cmake and objdump")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the AVX copies exist on x86-64 only")
    root = pathlib.Path(__file__).resolve().parents[1]
    build = pathlib.Path(tmp_path)
    configure = [cmake, "-S", str(root), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}"]
    out = subprocess.run(configure, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FASTCLR_NATIVE_ARCH:BOOL=OFF" in (build / "CMakeCache.txt").read_text()
    assert "copies for baseline" in out.stdout
    target = ["--target", "fastclr_kernels_baseline"]
    out = subprocess.run([cmake, "--build", str(build), *target], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    objects = sorted(build.glob("CMakeFiles/fastclr_kernels_baseline.dir/**/*.o"))
    assert {o.name for o in objects} == {"ntxent.cpp.o", "augment.cpp.o"}
    for obj in objects:
        asm = subprocess.run([objdump, "-d", str(obj)], capture_output=True, text=True).stdout
        assert "%xmm" in asm  # SSE2 is the x86-64 baseline: the disassembly is real
        assert "%ymm" not in asm and "%zmm" not in asm, f"{obj.name} uses AVX registers"
