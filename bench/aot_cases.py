"""The configurations bench/aot_check.py compiles: every Triton kernel as its launchers call it.

``all_cases(full)``: ``full`` is the whole product the launchers can reach — every operand dtype
(fp32, bf16, fp16) × every head-dim class (BLOCK_D 16 … 256 in one chunk, an uneven D whose loads
keep a D mask, and the chunked path that serves D > 256) × every autotune config kept by the
kernels' ``keep`` rule × every kernel variant, plus the fused views kernels (prep, finalize, post)
and the augmentation kernels. The CI set (``_ci``) keeps, at D = 128 (where the targets are
stated), every kernel variant in bf16 with its first config, every bf16 config of the two hot
kernels, and each kernel once in fp16 and fp32; for the other head-dim classes the forward and the
backward in bf16 and fp16 (bf16 only for D ≤ 32, whose code is D = 64's with smaller tiles; fp32
only for the chunked path, its 3×TF32 kernels take ~20 s each to compile) and the online variants
in bf16; the fused kernels in every input dtype at D = 128 and in bf16 at D = 2048."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HOT_D = 128
DTYPES = ("fp32", "bf16", "fp16")
_NT = "fastclr.kernels.triton.ntxent"
_NB = "fastclr.kernels.triton.ntxent_bwd"
_NR = "fastclr.kernels.triton.ntxent_rows"
_NF = "fastclr.kernels.triton.ntxent_fused"
_AUG = "fastclr.kernels.triton.augment"


@dataclass
class Case:
    """One compile: a kernel, its signature and constexprs, launch options and labels."""

    module: str
    kernel: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    divisible: list[str]
    num_warps: int
    num_stages: int
    labels: dict[str, Any] = field(default_factory=dict)
    low_precision: bool = False

    @property
    def name(self) -> str:
        lab = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return f"{self.kernel}[{lab},w{self.num_warps}s{self.num_stages}]"


def _sig(text: str, **types: str) -> dict[str, str]:
    """ "NAME:TYPE ..." with {dt} (operand dtype) and {gt} (upstream gradient dtype) filled in."""
    return dict(item.split(":") for item in text.format(**types).split())


# kernel -> (module, signature, values fixed by every launch, int arguments divisible by 16 when
# D % 16 == 0 as at D = 128). Row counts and offsets are never specialised (do_not_specialize).
_SYM = (
    "Z:*{dt} SUM_ROW:*fp32 SUM_COL:*fp32 M:i32 D:i32 stride_zm:i32 stride_zd:i32 "
    "inv_tau:fp32 shift:fp32 M_KEY:i32 D_KEY:i32"
)
_ROWS_FWD = (
    "Q:*{dt} K:*{dt} LSE:*fp32 MQ:i32 MK:i32 D:i32 stride_qm:i32 stride_qd:i32 "
    "stride_km:i32 stride_kd:i32 q_offset:i32 inv_tau:fp32 shift:fp32 M_KEY:i32 D_KEY:i32"
)
_ROWS_BWD = (
    "X:*{dt} Y:*{dt} LX:*fp32 QX:*fp32 GX:*{gt} LY:*fp32 QY:*fp32 GY:*{gt} DX:*fp32 "
    "MX:i32 MY:i32 D:i32 stride_xm:i32 stride_xd:i32 stride_ym:i32 stride_yd:i32 "
    "stride_g:i32 g_scale:fp32 x_self_off:i32 y_self_off:i32 inv_tau:fp32 shift:fp32 "
    "M_KEY:i32 D_KEY:i32"
)
KERNELS: dict[str, tuple[str, str, dict[str, int], str]] = {
    "ntxent_sym_fwd_kernel": (_NT, _SYM, {"stride_zd": 1}, "D stride_zm"),
    "ntxent_rows_fwd_kernel": (
        _NR,
        _ROWS_FWD,
        {"stride_qd": 1, "stride_kd": 1},
        "D stride_qm stride_km",
    ),
    "ntxent_rows_bwd_kernel": (
        _NB,
        _ROWS_BWD,
        {"stride_xd": 1, "stride_yd": 1},
        "D stride_xm stride_ym",
    ),
}


def _d_classes() -> list[tuple[str, int, int, bool]]:
    from fastclr.kernels.triton import ntxent as k

    out = [(f"D{bd}", bd, bd, True) for bd in (16, 32, 64, 128, 256)]
    out.insert(3, ("D96 (uneven)", 96, 128, True))
    out.append(("D2048 (chunked)", 2048, k.MULTI_CHUNK_D, False))
    return out


def _variants() -> list[tuple[str, list[Any], dict[str, Any], bool]]:
    """(kernel, its autotune configs, variant constexprs, hot?) as the launchers select them."""
    from fastclr.kernels.triton import ntxent as k

    out: list[tuple[str, list[Any], dict[str, Any], bool]] = [
        ("ntxent_sym_fwd_kernel", k.SYM_CONFIGS, {}, True),
        ("ntxent_rows_fwd_kernel", k.ROW_CONFIGS, {"ONLINE": True}, False),
        ("ntxent_rows_fwd_kernel", k.ROW_CONFIGS, {"ONLINE": False}, False),
    ]
    for online in (False, True):
        for row, col in ((True, True), (True, False), (False, True)):
            # both terms: the views loss and the symmetric op (its mean reaches the kernel as one
            # broadcast value, G_UNIFORM); one term: the distributed op's dq and dk
            var = {"ONLINE": online, "ROW_TERM": row, "COL_TERM": col, "G_UNIFORM": row and col}
            out.append(
                ("ntxent_rows_bwd_kernel", k.ROW_BWD_CONFIGS, var, row and col and not online)
            )
    return out


def _ci(dtype: str, d: int, kernel: str, var: dict[str, Any], hot: bool, index: int) -> bool:
    """The CI subset of the LSE kernels' product (see the module docstring)."""
    if d == HOT_D:  # bf16: every variant, and every config of the hot kernels; fp16 and fp32:
        # each kernel once (the symmetric forward, the deterministic row forward, the backward)
        if dtype == "bf16":
            return index == 0 or hot
        main = hot or (kernel == "ntxent_rows_fwd_kernel" and not var.get("ONLINE"))
        return index == 0 and main
    if index != 0:
        return False
    if var.get("ONLINE", False):
        both = var.get("ROW_TERM", True) and var.get("COL_TERM", True)
        return dtype == "bf16" and both
    if dtype == "fp32":  # slow to compile (3×TF32 operands spill): D = 128 and the chunked path
        return hot and d > 256
    if dtype != "bf16" and d <= 32:
        return False
    return hot


def _lse_cases(full: bool) -> list[Case]:
    from fastclr.kernels.triton import ntxent as k

    from fastclr.ops.triton_ntxent import FP32_DOT_PRECISION

    cases: list[Case] = []
    big_m = 1 << 16  # keep() drops configs only for tiny batches
    for dname in DTYPES:
        prec = "ieee" if dname != "fp32" else FP32_DOT_PRECISION
        for dlabel, d, bd, single in _d_classes():
            for kname, configs, var, hot in _variants():
                module, text, fixed, div_ints = KERNELS[kname]
                gt = dname if var.get("G_UNIFORM") else "fp32"
                sig = _sig(text, dt=dname, gt=gt)
                size = 4 if dname == "fp32" else 2
                kept = [c for c in configs if k.keep(c, bd, single, big_m, size)]
                kept = kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"], -c.num_warps))]
                if not full:
                    kept = [c for i, c in enumerate(kept) if _ci(dname, d, kname, var, hot, i)]
                for cfg in kept:
                    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
                    cons = {
                        **fixed,
                        **var,
                        "BLOCK_D": bd,
                        "SINGLE_CHUNK": single,
                        "EVEN_D": single and d == bd,
                        "UPCAST": False,
                        "DOT_PREC": prec,
                        "BLOCK_M": bm,
                        "BLOCK_N": bn,
                    }
                    div = [n for n, t in sig.items() if t.startswith("*")]
                    div += div_ints.split() if d % 16 == 0 else []
                    labels = {
                        "dtype": dname,
                        "D": dlabel,
                        "BM": bm,
                        "BN": bn,
                        **{key: int(v) for key, v in var.items()},
                    }
                    if kname == "ntxent_sym_fwd_kernel":
                        labels.pop("BN")
                    full_sig = {**sig, **{c: "constexpr" for c in cons}}
                    cases.append(
                        Case(
                            module,
                            kname,
                            full_sig,
                            cons,
                            div,
                            cfg.num_warps,
                            cfg.num_stages,
                            labels,
                            dname != "fp32",
                        )
                    )
    return cases


_PREP = (
    "Z0:*{it} Z1:*{it} ZK:*{dt} POS:*fp32 SUM_COL:*fp32 TICKET:*i32 N:i32 D:i32 "
    "stride_m:i32 stride_d:i32 view_stride:i32 inv_tau:fp32 eps:fp32"
)
_FINAL = (
    "SUM_ROW:*fp32 SUM_COL:*fp32 LSE:*fp32 Q:*fp32 POS:*fp32 OUT:*{it} PARTIAL:*fp32 "
    "NBAD:*i32 TICKET:*i32 BAD:*i32 M:i32 S:i32 shift:fp32 out_scale:fp32"
)
_POST = (
    "Z0:*{it} Z1:*{it} PART:*fp32 G:*{it} DZ0:*{it} DZ1:*{it} N:i32 D:i32 S:i32 "
    "stride_m:i32 stride_d:i32 view_stride:i32 stride_g:i32 g_scale:fp32 inv_tau:fp32 "
    "eps:fp32"
)


def _fused_cases(full: bool) -> list[Case]:
    """The views loss's prep, finalize and post kernels (launch defaults: 4 warps, 3 stages)."""
    from fastclr.ops.triton_fused import FINAL_BLOCK, _geometry

    cases: list[Case] = []
    inputs = ["fp32", "bf16", "fp16", "fp64"]
    for it in inputs:
        dt = it if it in ("bf16", "fp16") else "fp32"
        for d in (16, 128, 256, 2048) if full else ((128, 2048) if it == "bf16" else (128,)):
            block_s, block_d = _geometry(d)
            tiles = {"V": 2, "BLOCK_S": block_s, "BLOCK_D": block_d}
            for kname, text, cons in (
                ("ntxent_prep_kernel", _PREP, {"stride_d": 1, "ZERO_COL": True, **tiles}),
                ("ntxent_post_kernel", _POST, {"stride_d": 1, **tiles}),
            ):
                sig = _sig(text, it=it, dt=dt)
                div = [n for n, t in sig.items() if t.startswith("*")] + ["D", "stride_m"]
                cases.append(
                    Case(
                        _NF,
                        kname,
                        {**sig, **{c: "constexpr" for c in cons}},
                        cons,
                        div,
                        4,
                        3,
                        {"in": it, "D": f"D{d}"},
                        it in ("bf16", "fp16"),
                    )
                )
        cons = {"FROM_SUMS": True, "WRITE_Q": True, "PER_ROW": False, "BLOCK": FINAL_BLOCK}
        sig = _sig(_FINAL, it=it)
        div = [n for n, t in sig.items() if t.startswith("*")]
        cases.append(
            Case(
                _NF,
                "ntxent_finalize_kernel",
                {**sig, **{c: "constexpr" for c in cons}},
                cons,
                div,
                4,
                3,
                {"in": it},
                it in ("bf16", "fp16"),
            )
        )
    return cases


def _augment_cases(full: bool) -> list[Case]:
    from fastclr.augment import triton_backend as tb

    common = _sig("solarize_threshold:fp32 m0:fp32 m1:fp32 m2:fp32 s0:fp32 s1:fp32 s2:fp32")
    src = _sig("src_ptr:*u8 img_ptr:*i64 prm_ptr:*fp32")
    cases = [
        Case(
            _AUG,
            "augment_contrast_mean_kernel",
            {**src, "part_ptr": "*fp32", "S": "i32", "n_chunks": "i32", "BLOCK": "constexpr"},
            {"BLOCK": tb.BLOCK_MEAN},
            ["src_ptr", "img_ptr", "prm_ptr", "part_ptr"],
            4,
            1,
            {"pass": "contrast-mean"},
            True,
        )
    ]
    out_dtypes = ["bf16", "fp16", "fp32", "fp64"] if full else ["bf16", "fp16", "fp32"]
    for out in out_dtypes:
        for fuse in (True, False):
            dst = out if fuse else "fp32"  # the unfused colour pass writes the fp32 blur input
            if not fuse and out != out_dtypes[0]:
                continue
            sig = {
                **src,
                "part_ptr": "*fp32",
                "dst_ptr": f"*{dst}",
                "S": "i32",
                "n_chunks": "i32",
                **common,
            }
            cons = {"FUSE_TAIL": fuse, "CHUNKS": 64, "BLOCK": tb.BLOCK_PIXELS}
            cases.append(
                Case(
                    _AUG,
                    "augment_color_kernel",
                    {**sig, **dict.fromkeys(cons, "constexpr")},
                    cons,
                    ["src_ptr", "img_ptr", "prm_ptr", "part_ptr", "dst_ptr"],
                    4,
                    1,
                    {"pass": "colour" + ("+tail" if fuse else ""), "out": dst},
                    True,
                )
            )
    for radius in [1, 11, 22] if full else [11]:  # kernel side 10% of 32 … 448 px
        for axis, finish in ((0, False), (1, True)):
            for out in out_dtypes if finish else ["fp32"]:
                sig = {
                    "src_ptr": "*fp32",
                    "prm_ptr": "*fp32",
                    "dst_ptr": f"*{out}",
                    "S": "i32",
                    **common,
                }
                cons = {"RADIUS": radius, "AXIS": axis, "FINISH": finish, "BLOCK": tb.BLOCK_PIXELS}
                cases.append(
                    Case(
                        _AUG,
                        "augment_blur_kernel",
                        {**sig, **dict.fromkeys(cons, "constexpr")},
                        cons,
                        ["src_ptr", "prm_ptr", "dst_ptr"],
                        4,
                        1,
                        {"pass": f"blur-axis{axis}", "radius": radius, "out": out},
                        True,
                    )
                )
    return cases


def all_cases(full: bool) -> list[Case]:
    """Every configuration compiled by the check (``full``: the whole launcher product)."""
    return _lse_cases(full) + _fused_cases(full) + _augment_cases(full)


def spill_control() -> Case:
    """A configuration no launcher selects, known to spill (bf16, D = 256, 128 × 128 tiles on 4
    warps: a 128 × 256 fp32 accumulator alone is 256 registers per thread). The spill rule's
    positive control: tests/test_aot_check.py compiles it and the rule must flag it."""
    module, text, fixed, div_ints = KERNELS["ntxent_rows_bwd_kernel"]
    sig = _sig(text, dt="bf16", gt="bf16")
    cons = {
        **fixed,
        "ONLINE": False,
        "ROW_TERM": True,
        "COL_TERM": True,
        "G_UNIFORM": True,
        "BLOCK_D": 256,
        "SINGLE_CHUNK": True,
        "EVEN_D": True,
        "UPCAST": False,
        "DOT_PREC": "ieee",
        "BLOCK_M": 128,
        "BLOCK_N": 128,
    }
    div = [n for n, t in sig.items() if t.startswith("*")] + div_ints.split()
    return Case(
        module,
        "ntxent_rows_bwd_kernel",
        {**sig, **dict.fromkeys(cons, "constexpr")},
        cons,
        div,
        4,
        2,
        {"dtype": "bf16", "D": "D256", "BM": 128, "BN": 128, "control": "spills"},
        True,
    )
