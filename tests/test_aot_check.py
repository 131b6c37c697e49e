"""bench/aot_check.py: its SASS reading, its configuration list, and one real sm_90 compile.

The full check (``make aot-check``) runs last in CI; these tests keep its parts honest: the
fence-in-loop rule on hand-written SASS, the occupancy arithmetic, the CI set's coverage of
every kernel, dtype and head-dim class (~8 s: two subprocesses), and (slow, ~10 s) one compile
of the hot backward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import aot_check  # noqa: E402

_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   MEMBAR.ALL.GPU ;
        /*0020*/                   MEMBAR.ALL.CTA ;
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0040*/                   MUFU.EX2 R3, R2 ;
        /*0050*/                   MEMBAR.ALL.GPU ;
        /*0060*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5 ;
        /*0070*/              @!P0 BRA 0x30 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
"""


def test_sass_reader_finds_fences_inside_loops_only() -> None:
    got = aot_check.analyse_sass(_SASS)
    assert got["fences"] == {"MEMBAR.ALL.GPU": 2, "MEMBAR.ALL.CTA": 1}
    assert got["gpu_fences_in_loops"] == {"MEMBAR.ALL.GPU": 1}  # the one at 0x50, not 0x10
    assert got["hot_loop_mix"] == {"HGMMA": 1, "MUFU": 1, "MEMBAR": 1, "RED": 1, "BRA": 1}
    row = {"local_bytes": 0, **got}
    assert aot_check.problems(row, low_precision=True)
    row["gpu_fences_in_loops"] = {}
    assert aot_check.problems(row, low_precision=True) == []
    row["local_bytes"] = 8
    assert aot_check.problems(row, low_precision=True)
    assert aot_check.problems(row, low_precision=False) == []  # fp32 may spill
    assert aot_check.problems({"error": "x"}, low_precision=False) == ["compile error"]


def test_occupancy_arithmetic() -> None:
    assert aot_check.occupancy(167, 98816, 8) == 8  # 168·32·8 regs: one program per SM
    assert aot_check.occupancy(96, 49408, 4) == 16  # shared memory allows 4 programs
    assert aot_check.occupancy(32, 0, 4) == 64  # the 64-warp ceiling
    assert aot_check.occupancy(255, 0, 4) == 8


def _cases(full: bool) -> list[aot_check.Case]:
    """The case list as the check builds it: without TRITON_INTERPRET (the kernel module picks
    its interpreter configs when that is set, as it is in this test process)."""
    code = (
        "import sys, json, dataclasses; sys.path.insert(0, 'bench'); import aot_check as a\n"
        f"print(json.dumps([dataclasses.asdict(c) for c in a.all_cases({full})]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return [aot_check.Case(**c) for c in json.loads(out.stdout.strip().splitlines()[-1])]


def test_ci_set_covers_every_kernel_dtype_and_head_dim() -> None:
    cases = _cases(full=False)
    full = _cases(full=True)
    assert 40 <= len(cases) <= 100 < len(full)
    names = {c.name for c in cases}
    assert names <= {c.name for c in full}
    nt = [c for c in cases if c.module.endswith("ntxent")]
    assert {c.kernel for c in nt} == {
        "ntxent_sym_fwd_kernel", "ntxent_rows_fwd_kernel", "ntxent_rows_bwd_kernel",
    }  # fmt: skip
    assert {c.labels["dtype"] for c in nt} == {"fp32", "bf16", "fp16"}
    assert {c.labels["D"] for c in nt} == {
        "D16", "D32", "D64", "D128", "D256", "D2048 (chunked)",
    }  # fmt: skip
    for dtype in ("fp32", "fp16", "bf16"):
        for d in ("D64", "D128", "D256", "D2048 (chunked)"):
            have = {c.kernel for c in nt if c.labels["dtype"] == dtype and c.labels["D"] == d}
            assert {"ntxent_sym_fwd_kernel", "ntxent_rows_bwd_kernel"} <= have, (dtype, d)
    bf16_hot = {
        c.labels["BM"] * 1000 + c.labels.get("BN", 0)
        for c in nt
        if c.labels["dtype"] == "bf16" and c.labels["D"] == "D128"
        and c.kernel == "ntxent_rows_bwd_kernel"
    }  # fmt: skip
    assert len(bf16_hot) >= 4  # every autotune config of the target backward
    assert {c.kernel for c in cases if c.module.endswith("augment")} == {
        "augment_contrast_mean_kernel", "augment_color_kernel", "augment_blur_kernel",
    }  # fmt: skip


@pytest.mark.slow
def test_hot_backward_compiles_for_sm90_without_spills_or_fences(tmp_path: Path) -> None:
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    code = (
        "import sys, json; sys.path.insert(0, 'bench'); import aot_check as a\n"
        "c = [c for c in a.all_cases(False) if c.kernel == 'ntxent_rows_bwd_kernel'\n"
        "     and c.labels['dtype'] == 'bf16' and c.labels['D'] == 'D128'][0]\n"
        "r = a.compile_case(c); print(json.dumps(r))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in row, row
    assert row["regs"] > 0 and row["local_bytes"] == 0
    assert row["gpu_fences_in_loops"] == {}
    assert row["hot_loop_mix"].get("HGMMA", 0) > 0  # bf16 goes to the tensor cores
    assert row["warps_per_sm"] >= 8
