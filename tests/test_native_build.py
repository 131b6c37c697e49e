"""The CMake-built native library is real, installed inside the package, and optional."""

from __future__ import annotations

import os
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
