"""The backend registry's one resolution rule and one fallback warning (well under a second)."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastclr import backends
from fastclr.backends import Impl, Registry

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _missing() -> str:
    raise ImportError("No module named 'fastlib'")


def _registry(op: str = "the op") -> Registry[str]:
    return Registry(
        op,
        [
            Impl("slow", lambda: "slow-impl"),
            Impl("ref", lambda: "ref-impl", auto=False),
            Impl("cpu-fast", lambda: "cpu-impl", devices=("cpu",), dense_only=True, priority=1),
            Impl(
                "gpu-fast",
                _missing,
                devices=("cuda",),
                dtypes=(torch.float32,),
                priority=2,
                requires="fastlib",
                hint="pip install fastlib",
            ),
        ],
    )


@pytest.fixture(autouse=True)
def _fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_announced", set())


def test_auto_takes_the_best_eligible_backend() -> None:
    reg = _registry()
    assert reg.names == ("auto", "slow", "ref", "cpu-fast", "gpu-fast")
    assert reg.resolve("auto", CPU, torch.float32) == "cpu-fast"
    assert reg.resolve("auto", CPU, torch.float32, dense=False) == "slow"  # dense only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a backend that does not serve the call is no fallback
        assert reg.resolve("auto", CUDA, torch.float64) == "slow"
    assert reg.resolve("ref", CUDA) == "ref"  # explicit names pass through, never replaced
    assert reg.get("cpu-fast") == "cpu-impl"
    assert reg.available() == ["slow", "ref", "cpu-fast"]


def test_fallback_warns_once_per_requirement_across_ops() -> None:
    loss, aug = _registry("the loss"), _registry("the augmentation")
    with pytest.warns(RuntimeWarning) as record:
        assert loss.resolve("auto", CUDA, torch.float32) == "slow"
        assert loss.resolve("auto", CUDA, torch.float32) == "slow"
        assert aug.resolve("auto", CUDA, torch.float32) == "slow"
    assert len(record) == 1
    msg = str(record[0].message)
    assert "fastlib is unavailable (No module named 'fastlib')" in msg
    assert "the loss on cuda falls back to backend='slow'" in msg
    assert "pip install fastlib" in msg


def test_errors_name_the_backend_and_the_fix() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'slow'.*got 'fast'"):
        reg.resolve("fast", CPU)
    with pytest.raises(RuntimeError, match=r"backend='gpu-fast' is not available.*fastlib"):
        reg.get("gpu-fast")
    with pytest.raises(ValueError, match="resolve"):
        reg.get("auto")
    with pytest.raises(RuntimeError, match="no backend of the op serves"):
        Registry("the op", [Impl("only-cuda", lambda: 1, devices=("cuda",))]).resolve("auto", CPU)


def test_loss_and_augmentation_use_the_registry() -> None:
    import fastclr
    from fastclr.augment import BACKENDS, SimCLRAugmentation

    assert fastclr.resolve_backend("auto", CPU, torch.float64) == "reference"
    assert "reference" in fastclr.available_backends()
    assert BACKENDS[0] == "auto" and "kornia" in BACKENDS
    with pytest.raises(ValueError, match="backend must be one of"):
        SimCLRAugmentation(backend="fast")
    aug = SimCLRAugmentation()
    assert aug.resolve_backend(CPU, ragged=True) == "torch"


def backend_name_comparisons(source: str, names: set[str]) -> list[int]:
    """Lines of ``source`` that compare something named like a backend with a backend's name
    (``backend == "native"``, ``name in ("triton", "kornia")``): a rule that belongs in the
    registry as a declared property of the entry."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        strings = {
            c.value
            for s in sides
            for c in ast.walk(s)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)
        }
        backendish = any("backend" in ast.unparse(s).lower() for s in sides)
        if backendish and strings & names:
            found.append(node.lineno)
    return found


def test_no_module_outside_the_registry_compares_backend_names() -> None:
    from pathlib import Path

    from fastclr.augment import REGISTRY as AUGMENT
    from fastclr.loss import BACKENDS as LOSS

    names = (set(AUGMENT.names) | set(LOSS.names)) - {"auto"}  # auto names no backend
    root = Path(__file__).resolve().parents[1] / "fastclr"
    # positive control: the comparison this rule exists to catch is found
    assert backend_name_comparisons('if backend != "native":\n    pass\n', names) == [1]
    assert backend_name_comparisons('ok = loader == "dali"\n', names) == []  # not a backend
    found = {
        f"{p.relative_to(root)}:{line}"
        for p in sorted(root.rglob("*.py"))
        if p.name != "backends.py"
        for line in backend_name_comparisons(p.read_text(), names)
    }
    assert found == set()
