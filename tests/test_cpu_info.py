"""fastclr.cpu_info: the CPU's bf16 support read from /proc/cpuinfo, torch's probes otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fastclr import cpu_info

X86_FLAGS = "fpu sse2 avx2 fma avx512f avx512bw"


@pytest.fixture(autouse=True)
def _fresh_flags() -> Iterator[None]:
    cpu_info.cpu_flags.cache_clear()
    yield
    cpu_info.cpu_flags.cache_clear()


def _fake(monkeypatch: pytest.MonkeyPatch, lines: list[str], machine: str = "x86_64") -> None:
    monkeypatch.setattr(cpu_info, "_cpuinfo", lambda: lines)
    monkeypatch.setattr(cpu_info.platform, "machine", lambda: machine)


@pytest.mark.parametrize(
    ("flags", "native", "named"),
    [
        (X86_FLAGS, False, "no native bf16"),
        (X86_FLAGS + " avx512_bf16", True, "native bf16: avx512_bf16"),
        (X86_FLAGS + " amx_tile amx_bf16 avx512_bf16", True, "native bf16: amx_bf16, avx512_bf16"),
    ],
)
def test_x86_flags(monkeypatch: pytest.MonkeyPatch, flags: str, native: bool, named: str) -> None:
    _fake(monkeypatch, ["processor\t: 0", "model name\t: Some Xeon", f"flags\t\t: {flags}"])
    assert cpu_info.cpu_has_native_bf16() is native
    assert cpu_info.cpu_bf16_support().startswith(named)
    assert cpu_info.cpu_model() == "Some Xeon"


def test_arm_bf16_feature_counts_only_on_arm(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ["Features\t: fp asimd sve bf16 i8mm"], machine="aarch64")
    assert cpu_info.cpu_has_native_bf16()
    cpu_info.cpu_flags.cache_clear()
    _fake(monkeypatch, ["flags\t\t: fpu sse2 bf16"], machine="x86_64")  # not an x86 flag name
    assert not cpu_info.cpu_has_native_bf16()


def test_without_cpuinfo_torch_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, [])
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_info.cpu_flags() == frozenset()
    assert cpu_info.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not cpu_info.cpu_has_native_bf16()


def test_this_machine_answers_consistently() -> None:
    native = cpu_info.cpu_has_native_bf16()
    assert cpu_info.cpu_bf16_support().startswith("native bf16" if native else "no native bf16")
