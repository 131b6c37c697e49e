"""The maintainers' documents name only what exists: every file path and every ``fastclr.x.y``
name in docs/, CONTRIBUTING.md and the README must be found in the repository or be
importable, so that a rename or a removal shows up in the documents the same day.

Positive control: a made-up paragraph naming a module and a file that do not exist is caught.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("docs/design.md", "docs/results.md", "docs/compat.md", "CONTRIBUTING.md", "README.md")
#: A path inside the repository, written in backticks (a folder ends with "/").
PATH = re.compile(
    r"`((?:fastclr|bench|tests|docs|kernels|scripts)/[\w./-]*?)(?:[:`\s]|\(|$)", re.MULTILINE
)
#: A dotted fastclr name: a module, or a module and attributes.
NAME = re.compile(r"(?<![\w./-])fastclr(?:\.[A-Za-z_]\w*)+")
#: Names that are files the build makes, not sources.
BUILT = {"fastclr._cpu", "fastclr.kernels"}
#: A dotted name ending so is a file name (``fastclr.json``), not a module.
FILE_ENDINGS = {"json", "py", "pt", "md", "lock", "txt", "png", "csv"}


def _resolves(name: str) -> bool:
    if name.rsplit(".", 1)[-1] in FILE_ENDINGS:
        return True
    if name in BUILT or any(name.startswith(b + ".") for b in BUILT):
        return True
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _path_exists(rel: str) -> bool:
    rel = rel.rstrip(".")
    if "*" in rel or "<" in rel or "{" in rel:
        return True  # a pattern, not a path
    return (REPO / rel).exists()


def missing(text: str) -> list[str]:
    """The paths and fastclr names ``text`` mentions that do not exist."""
    out = [f"path {p}" for p in PATH.findall(text) if not _path_exists(p)]
    out += [f"name {n}" for n in sorted(set(NAME.findall(text))) if not _resolves(n.rstrip("."))]
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_documents_name_only_what_exists(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert missing(text) == []


def test_design_notes_are_dated() -> None:
    head = (REPO / "docs/design.md").read_text().splitlines()[:4]
    assert any(re.search(r"\b20\d\d-\d\d-\d\d\b", line) for line in head)


def test_a_stale_name_is_caught() -> None:
    text = (
        "The loop lives in `fastclr/train/loop.py`, its old home was `fastclr/train/trainer.py`,"
        " and ranks come from fastclr.distributed.rank, not fastclr.train.distributed.rank."
    )
    assert missing(text) == ["path fastclr/train/trainer.py", "name fastclr.train.distributed.rank"]


def test_readme_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's quick start is what a new user pastes first: its Python runs as written,
    stays within ten lines, and its commands are real subcommands."""
    from fastclr.cli import main

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start") : text.index("\n## ", text.index("## Quick start"))]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert len(code.strip().splitlines()) <= 10
    exec(compile(code, "README.md", "exec"), {})
    assert re.fullmatch(r"NT-Xent \d+\.\d{3}\n", capsys.readouterr().out)
    commands = re.findall(r"^fastclr (\S+)", section, re.M)
    assert commands == ["pretrain", "pretrain", "linear-eval", "finetune"]
    for command in sorted(set(commands)):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
