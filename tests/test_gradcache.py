"""``fastclr.contrastive_backward``: gradient caching is the large-batch gradient, exactly.

- On a model whose rows never interact (GroupNorm), the chunked step equals the plain full-batch
  step: loss and every parameter gradient against the float64 full-batch step, within
  ``fastclr.testing``'s rule (k = 2 × the error of the plain computation in the same precision),
  in fp32 and under bf16 autocast; ragged chunks, 3 views, labels, hypothesis-drawn sizes, a
  GradScaler, a memory bank. Gradient accumulation fails the same comparison (positive control).
- With BatchNorm (fastclr's ResNet) a chunk is normalised by its own statistics: the result is
  every chunk forwarded with its graph kept, then one backward; the first pass changes no running
  statistic. (Against K data-parallel ranks on gloo: ``test_gradcache_ddp.py``.)
- Dropout draws the same masks in both passes of a chunk; the random-number state ends where the
  chunks forwarded once would leave it.
- ``chunk_size >= N`` is the unchunked step bit for bit; bad input is one message naming the
  argument, with no gradient written and no running statistic changed.
- The benchmark's GPU case runs, small, on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import fastclr
from fastclr.gradcache import contrastive_backward_reference
from fastclr.loss import NTXentLoss
from fastclr.models import build_model
from fastclr.testing import assert_close_to_reference

pytestmark = pytest.mark.usefixtures("one_thread")

LossFactory = Callable[[], nn.Module]


class TinyNet(nn.Module):
    """Conv → GroupNorm → ReLU → mean pool gives ``h``; an MLP head gives ``z``. No row ever
    sees another row (GroupNorm normalises within a sample). Returns ``(h, z)`` like SimCLR."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 6)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.norm(self.conv(x))).mean(dim=(2, 3))
        return h, self.head(h)


def _tiny(seed: int = 0, dropout: float = 0.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout)


def _resnet(seed: int = 0) -> nn.Module:
    """fastclr's default encoder (ResNet-18, BatchNorm) at width 1/16 with an 8-d head."""
    torch.manual_seed(seed)
    return build_model("resnet18", "cifar", width=1 / 16, proj_dim=8)


def _views(n: int, n_views: int = 2, seed: int = 1, side: int = 6) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, side, side, generator=g) for _ in range(n_views)]


def _embed(dtype: torch.dtype) -> Callable[[Any], Tensor]:
    """The training step's embedding: ``z`` of ``(h, z)``, in the loss's dtype."""
    return lambda out: out[1].to(dtype)


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _plain_step(
    model: nn.Module,
    views: list[Tensor],
    loss_fn: nn.Module,
    *,
    labels: Tensor | None = None,
    amp: Any = None,
    embed: Callable[[Any], Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Tensor:
    """The unchunked step, written out: one forward of every view, the loss, one backward."""
    n = views[0].shape[0]
    with amp if amp is not None else contextlib.nullcontext():
        z = (embed or _embed(torch.float32))(model(torch.cat(views)))
    zs = z.split(n)
    loss = loss_fn(*zs) if labels is None else loss_fn(*zs, labels=labels)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss.detach()


# --------------------------------------------------------------------------------------------
# against the plain full-batch step (no batch coupling), float64 reference

# precision -> autocast dtype (None: plain fp32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def _own_error_run(
    model: nn.Module,
    views: list[Tensor],
    loss_fn: nn.Module,
    chunk: int,
    amp: Any,
    labels: Tensor | None,
) -> Tensor:
    """``ref_lowp``: the same gradient computed the plain way in the tested precision.

    fp32: the plain full-batch step. bf16: the chunks forwarded with their graphs kept, then one
    backward (``contrastive_backward_reference``): under autocast each chunk's bf16 parameter
    gradient is rounded on its own before the fp32 sum (K roundings where one forward of the whole
    batch has one; measured up to 3.6 × the full-batch bf16 error over 300 drawn cases), and that
    reference rounds the same way. Either way ``ref64`` is the full-batch step in float64.
    """
    if amp is None:
        return _plain_step(model, views, loss_fn, labels=labels)
    return contrastive_backward_reference(
        model,
        views,
        loss_fn,
        chunk_size=chunk,
        labels=labels,
        embed=_embed(torch.float32),
        autocast=amp,
    )


def _compare_with_full_batch(
    make_model: Callable[[], nn.Module],
    views: list[Tensor],
    make_loss: LossFactory,
    chunk: int,
    precision: str,
    labels: Tensor | None = None,
) -> None:
    """Chunked step vs the plain step in fp64 (ref64), within k = 2 × the error of the plain
    computation in the tested precision (ref_lowp); no atol/rtol floor is needed."""
    amp_dtype = PRECISIONS[precision]
    m64 = make_model().double()
    loss64 = _plain_step(
        m64, [v.double() for v in views], make_loss(), labels=labels, embed=_embed(torch.float64)
    )
    amp = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype is not None else None
    low = make_model()
    loss_low = _own_error_run(low, views, make_loss(), chunk, amp, labels)
    got = make_model()
    loss = fastclr.contrastive_backward(
        got,
        views,
        make_loss(),
        chunk_size=chunk,
        labels=labels,
        embed=_embed(torch.float32),
        autocast=amp,
    )
    name = f"{precision} chunk {chunk} of {views[0].shape[0]}"
    assert_close_to_reference(loss, loss64, loss_low, name=f"{name} loss")
    assert_close_to_reference(_grads(got), _grads(m64), _grads(low), name=f"{name} grads")


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize(
    ("n", "chunk"), [(8, 4), (8, 1), (7, 3), (7, 6)], ids=["even", "one", "ragged", "ragged-big"]
)
def test_matches_full_batch(n: int, chunk: int, precision: str) -> None:
    """Two views; 7 rows in chunks of 3 ends with a chunk of 1 (ragged), of 6 with one of 1."""
    _compare_with_full_batch(_tiny, _views(n), NTXentLoss, chunk, precision)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_three_views(precision: str) -> None:
    _compare_with_full_batch(_tiny, _views(5, n_views=3), NTXentLoss, 2, precision)


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_labels(precision: str) -> None:
    """One view of 9 rows with SupCon labels, passed to the loss whole (not split)."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    _compare_with_full_batch(_tiny, _views(9, n_views=1), NTXentLoss, 4, precision, labels)


def test_gradient_accumulation_fails_the_comparison() -> None:
    """Positive control: accumulating per-chunk losses (fewer negatives) is a different gradient,
    and the comparison above catches it."""
    views, chunk = _views(8), 4
    ref64 = _tiny().double()
    _plain_step(ref64, [v.double() for v in views], NTXentLoss(), embed=_embed(torch.float64))
    low, accumulated = _tiny(), _tiny()
    _plain_step(low, views, NTXentLoss())
    for start in range(0, 8, chunk):
        _plain_step(accumulated, [v[start : start + chunk] for v in views], NTXentLoss())
    with pytest.raises(AssertionError, match="grads"):
        assert_close_to_reference(_grads(accumulated), _grads(ref64), _grads(low), name="grads")


@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@settings(max_examples=10)
@given(
    n=st.integers(1, 9),
    chunk=st.integers(1, 10),
    n_views=st.integers(2, 3),
    temperature=st.sampled_from([0.1, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_matches_full_batch_drawn(
    precision: str, n: int, chunk: int, n_views: int, temperature: float, seed: int
) -> None:
    _compare_with_full_batch(
        lambda: _tiny(seed),
        _views(n, n_views, seed=seed),
        lambda: NTXentLoss(temperature),
        chunk,
        precision,
    )


def test_grad_scaler() -> None:
    """The scaled loss is back-propagated: gradients are scale × the unscaled ones (a power of
    two, so exactly), and ``unscale_`` gives back the unscaled step's gradients."""
    views = _views(7)
    plain, scaled = _tiny(), _tiny()
    fastclr.contrastive_backward(plain, views, NTXentLoss(), chunk_size=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fastclr.contrastive_backward(scaled, views, NTXentLoss(), chunk_size=3, scaler=scaler)
    for g, s in zip(_grads(plain), _grads(scaled), strict=True):
        torch.testing.assert_close(s, g * 2.0**10, rtol=0, atol=0)
    scaler.unscale_(torch.optim.SGD(scaled.parameters(), lr=0.1))
    for g, s in zip(_grads(plain), _grads(scaled), strict=True):
        torch.testing.assert_close(s, g, rtol=0, atol=0)


def test_memory_bank_pushed_once_per_step() -> None:
    """``NTXentLoss(memory_bank_size=K)`` sees one call per step: after two steps the bank holds
    2·N keys, those of the plain steps, and the second step's gradients (bank negatives
    included) match the plain step's."""
    n, bank = 6, 64
    views1, views2 = _views(n, seed=1), _views(n, seed=2)
    plain, chunked = _tiny(), _tiny()
    plain_loss, chunked_loss = NTXentLoss(memory_bank_size=bank), NTXentLoss(memory_bank_size=bank)
    for views in (views1, views2):
        for m in (plain, chunked):
            m.zero_grad(set_to_none=True)
        want = _plain_step(plain, views, plain_loss)
        got = fastclr.contrastive_backward(chunked, views, chunked_loss, chunk_size=4)
        torch.testing.assert_close(got, want)
    assert chunked_loss.bank.shape == (2 * n, 6)
    torch.testing.assert_close(chunked_loss.bank, plain_loss.bank)
    for g, w in zip(_grads(chunked), _grads(plain), strict=True):
        torch.testing.assert_close(g, w)


# --------------------------------------------------------------------------------------------
# one chunk is the unchunked step; BatchNorm and dropout see the same chunk in both passes


def _state(model: nn.Module) -> list[Tensor]:
    return [t.detach().clone() for t in (*_grads(model), *model.buffers())]


@pytest.mark.parametrize("extra", [0, 3], ids=["chunk=N", "chunk>N"])
def test_one_chunk_is_the_unchunked_step(extra: int) -> None:
    """Bit for bit on fastclr's ResNet (BatchNorm in train mode), with a GradScaler and a
    memory bank: loss, gradients, running statistics, bank and random-number state."""
    n = 5
    views = _views(n, side=8)
    states = []
    for chunked in (False, True):
        model, loss_fn = _resnet(), NTXentLoss(memory_bank_size=16)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        torch.manual_seed(7)
        if chunked:
            loss = fastclr.contrastive_backward(
                model,
                views,
                loss_fn,
                chunk_size=n + extra,
                embed=_embed(torch.float32),
                scaler=scaler,
            )
        else:
            loss = _plain_step(model, views, loss_fn, scaler=scaler)
        states.append([loss, *_state(model), loss_fn.bank.clone(), torch.get_rng_state()])
    assert len(states[0]) == len(states[1]) > 3
    for want, got in zip(*states, strict=True):
        assert torch.equal(got, want)


def test_batchnorm_statistics_are_per_chunk(chunked_references: Callable[..., Any]) -> None:
    """With BatchNorm in train mode the chunked step equals every chunk forwarded with its graph
    kept, then one backward (what K ranks without SyncBatchNorm compute); the running statistics
    get one update per chunk (the first pass leaves none: num_batches_tracked grows by K, not
    2K)."""
    n, chunk = 7, 3  # chunks of 3, 3, 1 samples
    views = _views(n, side=8)
    ref64, low = chunked_references(_resnet, views, chunk)
    got = _resnet()
    fastclr.contrastive_backward(got, views, NTXentLoss(), chunk_size=chunk)
    assert_close_to_reference(_grads(got), _grads(ref64), _grads(low), name="grads")
    for (name, b), b64, blow in zip(
        got.named_buffers(), ref64.buffers(), low.buffers(), strict=True
    ):
        if name.endswith("num_batches_tracked"):
            assert int(b) == 3, name
        else:
            assert_close_to_reference(b, b64, blow, name=name)
    # The plain full-batch step normalises all 14 rows together: a different gradient.
    full = _resnet()
    _plain_step(full, views, NTXentLoss())
    with pytest.raises(AssertionError):
        assert_close_to_reference(_grads(full), _grads(ref64), _grads(low), name="full batch")


def _devices() -> list[Any]:
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", _devices())
def test_dropout_masks_agree_between_passes(device: str) -> None:
    """Dropout draws the same masks in both passes of a chunk: the result equals the chunks
    forwarded once with their graphs kept (same seed), and the random-number state afterwards is
    where that leaves it, also when the loss draws random numbers after the forward. Another seed
    gives other masks and other gradients (the check bites)."""
    views = [v.to(device) for v in _views(7)]
    ntxent = NTXentLoss()

    def loss_fn(*zs: Tensor) -> Tensor:  # a loss that draws random numbers too
        return ntxent(*[F.dropout(z, 0.2) for z in zs])

    def run(fn: Callable[..., Tensor], seed: int) -> tuple[list[Tensor], Tensor]:
        model = _tiny(dropout=0.5).to(device)
        torch.manual_seed(seed)
        fn(model, views, loss_fn, chunk_size=3)
        rng = torch.cuda.get_rng_state() if device == "cuda" else torch.get_rng_state()
        return _grads(model), rng

    got, got_rng = run(fastclr.contrastive_backward, 11)
    want, want_rng = run(contrastive_backward_reference, 11)
    other, _ = run(contrastive_backward_reference, 12)
    torch.testing.assert_close(got, want)
    assert torch.equal(got_rng, want_rng)
    assert not all(torch.allclose(a, b) for a, b in zip(other, want, strict=True))


# --------------------------------------------------------------------------------------------
# bad input: one message naming the argument, nothing changed


class _Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _resnet().requires_grad_(False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out: tuple[Tensor, Tensor] = self.net(x)
        return out


class _Detached(_Frozen):
    def __init__(self) -> None:
        super().__init__()
        self.net.requires_grad_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, z = self.net(x)
        return h, z.detach()


class _DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _resnet()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"z": self.net(x)[1]}


_V = _views(6, side=8)
# (id, keyword overrides of (model, views, loss_fn, chunk_size, ...), error type, message regex);
# a model class is instantiated by the test
BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("chunk-zero", {"chunk_size": 0}, ValueError, r"chunk_size must be >= 1.*got 0"),
    ("chunk-negative", {"chunk_size": -4}, ValueError, r"chunk_size must be >= 1"),
    ("chunk-float", {"chunk_size": 2.5}, TypeError, r"chunk_size must be an int"),
    ("chunk-bool", {"chunk_size": True}, TypeError, r"chunk_size must be an int"),
    ("chunk-auto", {"chunk_size": "auto"}, TypeError, r"chunk_size must be an int"),
    ("views-tensor", {"views": _V[0]}, TypeError, r"views must be a list or tuple.*\[x\]"),
    ("views-empty", {"views": []}, ValueError, r"views is empty"),
    ("views-not-tensor", {"views": [_V[0], "x"]}, TypeError, r"views\[1\] must be a torch"),
    ("views-no-rows", {"views": [_V[0][:0], _V[1][:0]]}, ValueError, r"views\[0\] must have"),
    ("views-rows", {"views": [_V[0], _V[1][:4]]}, ValueError, r"views\[1\] has 4 rows.*has 6"),
    ("views-shape", {"views": [_V[0], _V[1][..., :4]]}, ValueError, r"views\[1\] is \(6, 3, 8, 4"),
    (
        "views-dtype",
        {"views": [_V[0], _V[1].double()]},
        ValueError,
        r"views\[1\] is .* torch.float64",
    ),
    ("model", {"model": lambda x: x}, TypeError, r"model must be a torch.nn.Module"),
    ("loss-fn", {"loss_fn": 3}, TypeError, r"loss_fn must be callable"),
    ("labels", {"labels": [0, 1]}, TypeError, r"labels must be a torch.Tensor"),
    ("embed", {"embed": "z"}, TypeError, r"embed must be callable"),
    ("scaler", {"scaler": 2.0}, TypeError, r"scaler must be a torch.amp.GradScaler"),
    ("autocast", {"autocast": "bf16"}, TypeError, r"autocast must be a reusable context"),
    (
        "loss-not-scalar",
        {"loss_fn": NTXentLoss(reduction="none")},
        ValueError,
        r"loss_fn must return a scalar tensor.*\(12,\)",
    ),
    (
        "embed-rows",
        {"embed": lambda out: out[1][:2]},
        ValueError,
        r"embed\(model\(x\)\) must be a tensor with one row per input row \(\d+\)",
    ),
    ("embed-default", {"model": _DictModel}, TypeError, r"returned dict.*pass embed="),
    ("model-frozen", {"model": _Frozen}, ValueError, r"no parameter of model requires grad"),
    ("model-detached", {"model": _Detached}, ValueError, r"embedding does not require grad"),
]


@pytest.mark.parametrize("chunk", [2, 6], ids=["chunked", "one-chunk"])
@pytest.mark.parametrize(
    ("overrides", "error", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input(
    overrides: dict[str, Any], error: type[Exception], match: str, chunk: int
) -> None:
    """One error naming the argument; no gradient written and no running statistic changed."""
    kw: dict[str, Any] = {
        "model": _resnet(),
        "views": _V,
        "loss_fn": NTXentLoss(),
        "chunk_size": chunk,
    }
    kw.update(overrides)
    if isinstance(kw["model"], type):  # model classes are built here, not at import
        kw["model"] = kw["model"]()
    model = kw["model"]
    before = [b.clone() for b in model.buffers()] if isinstance(model, nn.Module) else []
    with pytest.raises(error, match=match):
        fastclr.contrastive_backward(kw.pop("model"), kw.pop("views"), kw.pop("loss_fn"), **kw)
    if isinstance(model, nn.Module):
        assert all(p.grad is None for p in model.parameters())
        after = list(model.buffers())
        assert len(after) == len(before) > 0
        assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_under_no_grad() -> None:
    model = _resnet()
    with torch.no_grad(), pytest.raises(RuntimeError, match="gradients are disabled"):
        fastclr.contrastive_backward(model, _V, NTXentLoss(), chunk_size=2)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# the benchmark's GPU case, run small on CPU so that it cannot rot unseen


def test_bench_cuda_case_runs_small_on_cpu(
    monkeypatch: pytest.MonkeyPatch, bench_module: Callable[[str], ModuleType]
) -> None:
    """``cuda_case`` (what a GPU script calls) end to end with a tiny model on CPU, memory
    measured in this process as on a GPU: check, sweep, timing, report."""
    bench = bench_module("gradcache_bench")
    monkeypatch.setattr(bench, "peak_mb", bench._measure_peak)
    tiny = bench.Case("resnet18", "cifar", 1 / 16, 8, "bf16", "cpu")
    result = bench.cuda_case(batch=16, chunk=4, fit_batches=(4, 8), rounds=1, case=tiny)
    assert result["check_error_ratio"] <= 1.0
    assert [r["batch"] for r in result["memory"]] == [4, 8, 16]
    t = result["timing"]
    assert t["largest"] == 16 and t["same"] in (8, 16)
    assert all(0 < v < float("inf") for v in t["ms_per_image"].values())
    est = bench.estimate_lines(bench.h200_estimate(4e6))
    lines = bench.markdown(result, {"device": "cpu"}, "pytest") + est
    assert any("ESTIMATE ON PAPER" in line for line in lines)
