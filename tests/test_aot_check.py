"""bench/aot_check.py: its readings of ptxas and the SASS, its configuration list, real compiles.

The full check (``make aot-check``) runs last in CI; these tests keep its parts honest. Every rule
has a positive control: the spill rule on a real ``ptxas -v`` report and (slow) on a configuration
known to spill, compiled here; the fence rule on SASS with a GPU-scope fence in a loop and (slow)
on the forward compiled with its relaxed atomics put back to acq_rel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        /*0080*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0090*/                   MUFU.EX2 R3, R2 ;
        /*00a0*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*00b0*/                   SEL R4, R4, RZ, P0 ;
        /*00c0*/                   STL [R1], R4 ;
        /*00d0*/              @!P1 BRA 0x80 ;
        /*00e0*/                   EXIT ;
        /*00f0*/                   BRA 0xf0;
"""

# A report of the form ptxas -v prints (triton's ptxas for sm_90a), for a kernel that spills.
_PTXAS_SPILLS = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'ntxent_rows_bwd_kernel' for 'sm_90a'
ptxas info    : Function properties for ntxent_rows_bwd_kernel
    336 bytes stack frame, 360 bytes spill stores, 340 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 336 bytes cumulative stack size
"""
_PTXAS_CLEAN = _PTXAS_SPILLS.replace(
    "336 bytes stack frame, 360 bytes spill stores, 340",
    "0 bytes stack frame, 0 bytes spill stores, 0",
)


def test_sass_reader_finds_fences_loops_and_local_memory() -> None:
    got = aot_check.analyse_sass(_SASS)
    assert got["fences"] == {"MEMBAR.ALL.GPU": 2, "MEMBAR.ALL.CTA": 1}
    assert got["gpu_fences_in_loops"] == {"MEMBAR.ALL.GPU": 1}  # the one at 0x50, not 0x10
    assert got["local_instrs"] == {"STL": 1}
    # two tile loops with one HGMMA each: the shorter is the interior one, the longer the masked
    assert got["hot_loop_mix"] == {"HGMMA": 1, "MUFU": 1, "MEMBAR": 1, "RED": 1, "BRA": 1}
    assert sum(got["masked_loop_mix"].values()) == 6
    row = {**got, "local_instrs": {}}
    assert aot_check.problems(row, low_precision=True) == [
        "GPU-scope fence inside a loop: {'MEMBAR.ALL.GPU': 1}"
    ]
    row["gpu_fences_in_loops"] = {}
    assert aot_check.problems(row, low_precision=True) == []
    assert aot_check.problems({"error": "x"}, low_precision=False) == ["compile error"]


def test_spill_rule_reads_ptxas_and_fires_on_a_spilling_report() -> None:
    """The earlier rule read LOCAL from cuobjdump, which stays 0 when ptxas spills (spills are
    the STACK frame): it could never fire. This one reads ptxas's own numbers."""
    spills = aot_check.parse_ptxas(_PTXAS_SPILLS)
    assert spills == {
        "stack_frame": 336,
        "spill_stores": 360,
        "spill_loads": 340,
        "ptxas_regs": 255,
    }
    clean = aot_check.parse_ptxas(_PTXAS_CLEAN)
    base = {"gpu_fences_in_loops": {}, "local_instrs": {}}
    bad = aot_check.problems({**base, **spills}, low_precision=True)
    assert len(bad) == 1 and "360 B spill stores" in bad[0]
    assert aot_check.problems({**base, **clean}, low_precision=True) == []
    assert aot_check.problems({**base, **spills}, low_precision=False) == []  # fp32 may spill
    # an LDL/STL in the SASS alone also counts
    assert aot_check.problems({**base, **clean, "local_instrs": {"LDL": 2}}, low_precision=True)


def test_occupancy_arithmetic() -> None:
    assert aot_check.occupancy(167, 98816, 8) == 8  # 168·32·8 regs: one program per SM
    assert aot_check.occupancy(96, 49408, 4) == 16  # shared memory allows 4 programs
    assert aot_check.occupancy(32, 0, 4) == 64  # the 64-warp ceiling
    assert aot_check.occupancy(255, 0, 4) == 8


def _bench_json(code: str, timeout: int, **env: str) -> Any:
    """Runs ``code`` in a fresh interpreter at the repository root, with ``env`` added and without
    TRITON_INTERPRET (the kernel modules pick their interpreter configs when that is set, as it is
    in this test process); returns the JSON its last line of output prints."""
    run_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run_env.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cases(full: bool) -> list[aot_check.Case]:
    """The case list as the check builds it (outside the interpreter)."""
    code = (
        "import sys, json, dataclasses; sys.path.insert(0, 'bench'); import aot_cases as a\n"
        f"print(json.dumps([dataclasses.asdict(c) for c in a.all_cases({full})]))\n"
    )
    return [aot_check.Case(**c) for c in _bench_json(code, timeout=120)]


def test_ci_set_covers_every_kernel_in_fp16_and_fp32_and_every_head_dim() -> None:
    cases = _cases(full=False)
    full = _cases(full=True)
    assert 60 <= len(cases) <= 100 < len(full)
    assert {c.name for c in cases} <= {c.name for c in full}

    def dtype(c: aot_check.Case) -> str:
        return str(c.labels.get("dtype") or c.labels.get("in") or c.labels.get("out"))

    kernels = {c.kernel for c in full}
    assert kernels == {c.kernel for c in cases}
    typed = kernels - {"augment_contrast_mean_kernel"}  # reads uint8, writes fp32 partial sums
    for dt in ("fp16", "fp32", "bf16"):  # every kernel in every operand/output dtype
        assert {c.kernel for c in cases if dtype(c) == dt} == typed, dt
    nt = [c for c in cases if c.kernel.startswith("ntxent_") and "dtype" in c.labels]
    assert {c.labels["D"] for c in nt} == {
        "D16",
        "D32",
        "D64",
        "D96 (uneven)",
        "D128",
        "D256",
        "D2048 (chunked)",
    }
    for dt in ("fp16", "bf16"):
        for d in ("D64", "D128", "D256", "D2048 (chunked)"):
            have = {c.kernel for c in nt if c.labels["dtype"] == dt and c.labels["D"] == d}
            assert {"ntxent_sym_fwd_kernel", "ntxent_rows_bwd_kernel"} <= have, (dt, d)
    bf16_hot = {
        (c.labels["BM"], c.labels.get("BN"), c.num_warps, c.num_stages)
        for c in nt
        if c.labels["dtype"] == "bf16"
        and c.labels["D"] == "D128"
        and c.kernel == "ntxent_rows_bwd_kernel"
    }
    assert len(bf16_hot) >= 4  # every autotune config of the target backward


def _compile_in_subprocess(tmp_path: Path, select: str, patch: str = "") -> dict:
    """compile_case on the first case matching ``select`` (a Python expression in ``c``), with
    an optional source ``patch`` applied to the kernel module first; returns the row."""
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    code = (
        "import sys, json; sys.path.insert(0, 'bench'); import aot_cases as a, aot_check as k\n"
        f"{patch}\n"
        f"c = [c for c in a.all_cases(True) + [a.spill_control()] if {select}][0]\n"
        "r = k.compile_case(c); r['problems'] = k.problems(r, c.low_precision)\n"
        "print(json.dumps(r))\n"
    )
    return _bench_json(
        code,
        timeout=600,
        TRITON_CACHE_DIR=str(tmp_path),
        TRITON_DUMP_PTXAS_LOG="1",
        TRITON_DEFAULT_FP_FUSION="1",
    )


@pytest.mark.slow
def test_hot_backward_compiles_for_sm90_without_spills_or_fences(tmp_path: Path) -> None:
    row = _compile_in_subprocess(
        tmp_path,
        "c.kernel == 'ntxent_rows_bwd_kernel' and c.labels.get('dtype') == 'bf16' and "
        "c.labels.get('D') == 'D128' and c.labels.get('ONLINE') == 0 and "
        "c.labels.get('COL_TERM') == 1 and c.labels.get('ROW_TERM') == 1",
    )
    assert "error" not in row, row
    assert row["problems"] == [] and aot_check.spill_bytes(row) == 0
    assert row["hot_loop_mix"].get("HGMMA", 0) > 0  # bf16 goes to the tensor cores
    assert row["hot_loop_mix"].get("MUFU", 0) <= 32  # one exp per element, none per key
    assert row["warps_per_sm"] >= 8


@pytest.mark.slow
def test_fence_rule_fires_when_the_relaxed_atomics_are_put_back_to_acq_rel(tmp_path: Path) -> None:
    """Positive control, compiled: the symmetric forward with its column-sum atomics at the
    default acq_rel ordering puts a GPU-wide fence in the tile loop; the rule must say so."""
    src = (ROOT / "kernels" / "triton" / "ntxent.py").read_text()
    assert src.count('sem="relaxed"') >= 2
    (tmp_path / "ntxent_acqrel.py").write_text(src.replace('sem="relaxed"', 'sem="acq_rel"'))
    patch = (
        f"sys.path.insert(0, {str(tmp_path)!r}); import dataclasses\n"
        "base = [c for c in a.all_cases(False) if c.kernel == 'ntxent_sym_fwd_kernel' and "
        "c.labels.get('dtype') == 'bf16' and c.labels.get('D') == 'D128'][0]\n"
        "extra = dataclasses.replace(base, module='ntxent_acqrel', labels={**base.labels, "
        "'control': 'acq_rel'})\n"
        "a_all = a.all_cases; a.all_cases = lambda full: a_all(full) + [extra]"
    )
    row = _compile_in_subprocess(tmp_path, "c.labels.get('control') == 'acq_rel'", patch)
    assert row["gpu_fences_in_loops"], row
    assert any("GPU-scope fence inside a loop" in p for p in row["problems"])


@pytest.mark.slow
def test_spill_rule_fires_on_a_configuration_known_to_spill(tmp_path: Path) -> None:
    """Positive control, compiled: 128 × 128 tiles at D = 256 on 4 warps (no launcher picks it)."""
    row = _compile_in_subprocess(tmp_path, "c.labels.get('control') == 'spills'")
    assert row["stack_frame"] > 0 and row["spill_stores"] > 0, row
    assert any("spills" in p for p in row["problems"])
