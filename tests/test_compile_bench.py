"""bench/compile_bench.py's break-even and table on made-up measurements (the bench itself
compiles a ResNet for about a minute: ``python bench/compile_bench.py``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _result(eager: float, compiled: float, first_e: float, first_c: float) -> dict[str, Any]:
    return {
        "size": 64,
        "width": 0.25,
        "batch": 128,
        "loss_eager": 5.5,
        "loss_compiled": 5.5,
        "first_step_eager_s": first_e,
        "first_step_compiled_s": first_c,
        "eager_images_per_s": eager,
        "compiled_images_per_s": compiled,
        "speedup": compiled / eager,
    }


def test_break_even_and_table(bench_module: Callable[[str], ModuleType]) -> None:
    cb = bench_module("compile_bench")
    # 10 -> 20 img/s saves 0.05 s an image; 11 s of compilation beyond the eager first step
    assert math.isclose(cb.break_even_images(_result(10, 20, 1.0, 11.0)), 200.0)
    assert cb.break_even_images(_result(10, 10, 1.0, 30.0)) == math.inf  # never pays
    assert cb.break_even_images(_result(10, 9, 1.0, 30.0)) == math.inf  # slower: never
    header = {"command": "c", "date": "d", "machine": "m", "torch": "t", "load": "0.1"}
    text = cb.table([_result(10, 20, 1.0, 11.0)], header)
    assert "| 64 px, 0.25, 128 | 10.0 | 20.0 | **2.00×** | 11.0 s | 200 images |" in text
    assert "stays off by default" in text
