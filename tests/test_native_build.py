"""The CMake-built native library is real, installed inside the package, and optional."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastclr
from fastclr import _native


def test_native_library_loads() -> None:
    assert _native.available(), f"native library missing: {_native.load_error()}"
    mod = _native.load()
    assert mod is not None and mod.__name__ == "fastclr._cpu"
    assert mod.max_threads() >= 1


@pytest.mark.parametrize(("m", "d"), [(1, 1), (41, 130), (7, 3)])
def test_native_normalize_matches_torch(m: int, d: int) -> None:
    z = torch.randn(m, d) * 3
    z[0] = 0.0  # a zero row stays zero, no NaN
    out, norms = _native.normalize_rows(z, eps=1e-8)
    torch.testing.assert_close(out, F.normalize(z, dim=1, eps=1e-8))
    torch.testing.assert_close(norms, z.norm(dim=1).clamp(min=1e-8))


def test_native_normalize_validates() -> None:
    with pytest.raises(TypeError, match="float32"):
        _native.normalize_rows(torch.randn(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="2-D"):
        _native.normalize_rows(torch.randn(3))


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


def test_import_without_native_warns_and_falls_back() -> None:
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    import fastclr\n"
        "    a = torch.randn(4, 3)\n"
        "    b = torch.randn(4, 3)\n"
        "    got = fastclr.ntxent(a, b)\n"
        "    got2 = fastclr.ntxent(a, b)\n"
        "ref = fastclr.ntxent_reference(*fastclr.views_to_batch([a, b]), 0.5, upcast=False)\n"
        "assert torch.equal(got, ref), (got, ref)\n"
        "msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'pip install -e .' in msgs[0], msgs\n"
        "print('ok')\n"
    )
    env = dict(os.environ, FASTCLR_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert fastclr.__version__


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
