"""The structure the code keeps, checked so that it stays: layers point down, no import cycles,
no function longer than a screen and no module longer than ~600 lines (in fastclr/, bench/ and
the Python of kernels/), and no line packing to get there.

Each rule has a positive control: the checker is run on a small made-up package that breaks it
and must say so. Costs about 3 s (one fresh interpreter importing torch).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600
#: A function may be longer only with this comment on the line above it (or above its
#: decorators), followed by the reason it cannot be split.
LONG_OK = "# longer than a screen:"
SOURCES = ("fastclr", "bench", "kernels")
#: Compiled extension modules (built by CMake, not .py files): importing one is not importing
#: its package's ``__init__``.
EXTENSIONS = {"fastclr._cpu"}

#: What each layer must not import (lazily or not): layers point down only.
FORBIDDEN = {
    "fastclr.augment": ("fastclr.data", "fastclr.train", "fastclr.evaluate", "fastclr.cli"),
    "fastclr.data": ("fastclr.train", "fastclr.evaluate", "fastclr.features", "fastclr.cli"),
    "fastclr.loss": ("fastclr.augment", "fastclr.data", "fastclr.train", "fastclr.cli"),
    "fastclr.ops": ("fastclr.augment", "fastclr.data", "fastclr.train", "fastclr.cli"),
    "fastclr.compat": ("fastclr.augment", "fastclr.data", "fastclr.train", "fastclr.cli"),
    "fastclr.evaluate": ("fastclr.train", "fastclr.cli"),
    "fastclr.features": ("fastclr.train", "fastclr.cli"),
    "fastclr.checkpoint": ("fastclr.train", "fastclr.data", "fastclr.cli"),
    "fastclr.distributed": ("fastclr.train", "fastclr.data", "fastclr.loss", "fastclr.cli"),
    "fastclr.options": ("fastclr.train", "fastclr.data", "fastclr.loss", "fastclr.augment"),
    "fastclr.optional": ("fastclr.train", "fastclr.data", "fastclr.loss", "fastclr.augment"),
}


def _python_files(root: Path, dirs: tuple[str, ...]) -> list[Path]:
    return sorted(p for d in dirs for p in (root / d).rglob("*.py"))


def _defs(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def long_functions(root: Path, dirs: tuple[str, ...]) -> list[str]:
    """``path:line name (n lines)`` of every function over the limit without a stated reason."""
    out = []
    for path in _python_files(root, dirs):
        lines = path.read_text().splitlines()
        for node in _defs(ast.parse("\n".join(lines), filename=str(path))):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if n > MAX_FUNCTION_LINES and LONG_OK not in lines[first - 2]:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return out


def long_modules(root: Path, dirs: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(root)} ({n} lines)"
        for p in _python_files(root, dirs)
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]


def packed_lines(root: Path, dirs: tuple[str, ...]) -> list[str]:
    """Lines that opt out of the formatter (``# fmt: skip`` / ``fmt: off``) to pack code."""
    return [
        f"{p.relative_to(root)}:{i}"
        for p in _python_files(root, dirs)
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_type_checking(tree: ast.Module) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the package's modules it imports, lazily or not (``TYPE_CHECKING`` aside).

    ``from pkg import sub`` counts as importing ``pkg.sub`` (not ``pkg``'s ``__init__``).
    """
    paths = {_module_name(root, p): p for p in _python_files(root, (package,))}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for mod, path in paths.items():
        tree = ast.parse(path.read_text())
        skip = _in_type_checking(tree)
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
                if all(n in EXTENSIONS for n in names):
                    continue
                subs = [n for n in names if n in paths]
                targets = subs or [base]
            else:
                continue
            graph[mod] |= {t for t in targets if t in paths and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or round a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def within(mod: str, layer: str) -> bool:
        return mod == layer or mod.startswith(layer + ".")

    return [
        f"{mod} imports {target}"
        for mod, targets in sorted(graph.items())
        for layer, banned in FORBIDDEN.items()
        if within(mod, layer)
        for target in sorted(targets)
        if any(within(target, b) for b in banned)
    ]


# ---------------------------------------------------------------------------------- the rules


def test_evaluation_and_checkpoint_io_do_not_import_training() -> None:
    code = (
        "import sys, fastclr.evaluate, fastclr.checkpoint; "
        "print(sorted(m for m in sys.modules if m.startswith('fastclr.train')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout


def test_layers_point_down_and_nothing_imports_in_a_circle() -> None:
    graph = import_graph(REPO, "fastclr")
    assert {"fastclr.train.loop", "fastclr.data.select", "fastclr.cli"} <= set(graph)
    assert layer_violations(graph) == []
    assert cycles(graph) == []


#: Files being split in work still open (the native augmentation backend, issue 25);
#: removed from here as each lands.
PENDING = ("fastclr/augment/native_backend.py",)


def _settled(found: list[str]) -> list[str]:
    return [f for f in found if not f.startswith(PENDING)]


def test_no_function_longer_than_a_screen_and_no_module_past_600_lines() -> None:
    found = {p.relative_to(REPO).as_posix() for p in _python_files(REPO, SOURCES)}
    # every folder is walked, the Triton kernels and the benchmarks included
    assert {"fastclr/cli.py", "bench/throughput.py", "kernels/triton/ntxent.py"} <= found
    assert _settled(long_functions(REPO, SOURCES)) == []
    assert _settled(long_modules(REPO, SOURCES)) == []


def test_no_line_packing_to_meet_the_limits() -> None:
    assert _settled(packed_lines(REPO, SOURCES)) == []


# ------------------------------------------------------------------------- positive controls


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A made-up package breaking every rule once (``fake/`` as ``fastclr`` stands in)."""
    pkg = tmp_path / "fastclr"
    for sub in ("augment", "data", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "augment" / "dali.py").write_text(
        "def f():\n    from fastclr.data.dali import x\n    return x\n"
    )
    (pkg / "data" / "dali.py").write_text("from fastclr.augment.dali import f\nx = 1\n")
    (pkg / "train" / "a.py").write_text("from fastclr.train import b\n")
    (pkg / "train" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fastclr.train import a\n"
    )
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "train" / "long.py").write_text(
        f"def long():\n{body}\n\n\n{LONG_OK} a kernel\ndef ok():\n{body}\n"
        + "y = [1, 2]  # fmt: skip\n"
        + "\n" * MAX_MODULE_LINES
    )
    return tmp_path


def test_the_checks_fire_on_a_package_that_breaks_them(bad_package: Path) -> None:
    graph = import_graph(bad_package, "fastclr")
    assert layer_violations(graph) == ["fastclr.augment.dali imports fastclr.data.dali"]
    assert cycles(graph) == [["fastclr.augment.dali", "fastclr.data.dali"]]  # not a ⇄ b
    assert long_functions(bad_package, ("fastclr",)) == [
        f"fastclr/train/long.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]  # the one with a stated reason passes
    assert long_modules(bad_package, ("fastclr",))[0].startswith("fastclr/train/long.py")
    assert packed_lines(bad_package, ("fastclr",)) == [
        f"fastclr/train/long.py:{2 * MAX_FUNCTION_LINES + 6}"
    ]
