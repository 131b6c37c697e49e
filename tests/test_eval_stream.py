"""linear-eval on folders too large to decode in memory: features streamed from the files
(fastclr.features), the same numbers and split as the in-memory path, unreadable files skipped,
the kNN and probe in bounded blocks, and peak memory that does not grow with the folder.

The streamed path is forced on small folders by lowering the in-memory limit
(``fastclr.data.select.MEMORY_AUTO_BYTES``); tiny tensors run on one thread. Cost on 2 cores:
about 5 s in all, except the memory test (four subprocesses over 1,000- and 10,000-file
folders, 20 to 60 s; slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastclr.data.select as select
from fastclr.cli import main
from fastclr.data import load_image_folder
from fastclr.evaluate import evaluate_checkpoint, knn_accuracy, linear_probe_accuracy
from fastclr.features import FileSet, eval_data, extract_features, stream_features
from fastclr.models import build_model

SIZE = 16


def _photo(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A smooth random picture (so JPEG and resizing have something to keep)."""
    base = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)


def _folder(root: Path, per_class: int = 7, classes: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """PNGs and JPEGs of mixed sizes (larger and smaller than SIZE, square and not), grey too."""
    rng = np.random.default_rng(0)
    shapes = [(40, 30), (16, 16), (12, 20), (33, 64), (9, 9), (24, 18), (50, 50)]
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            im = _photo(rng, *shapes[i % len(shapes)])
            if i % 3 == 0:
                im.save(root / c / f"{i}.jpg", quality=90)
            elif i % 3 == 1:
                im.save(root / c / f"{i}.png")
            else:
                im.convert("L").save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("evalstream") / "data")


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", "cifar", 0.125, 16)
    # non-trivial BatchNorm statistics, so eval mode matters
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.encoder


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _force_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "MEMORY_AUTO_BYTES", 0)


def test_small_folder_is_decoded_in_memory(folder: Path) -> None:
    ed = eval_data(str(folder), SIZE, None)
    assert not ed.streamed and ed.how.startswith("decoded in memory")
    assert ed.num_workers == 0


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("workers", "batch"), [(0, 5), (2, 4)])
def test_streamed_features_are_the_in_memory_features(
    folder: Path,
    encoder: torch.nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    batch: int,
) -> None:
    """Same split (same files in the same order) and the same numbers, whatever the workers and
    the batch (odd batches end mid-class); the in-memory path with the same batch is the bar."""
    mem = load_image_folder(folder, SIZE)
    _force_stream(monkeypatch)
    ed = eval_data(str(folder), SIZE, workers)
    assert ed.streamed and ed.how.startswith(f"streamed from 21 files, {workers} worker")
    assert isinstance(ed.train, FileSet) and isinstance(ed.heldout, FileSet)
    assert mem.heldout is not None and ed.classes == mem.classes
    for part, ref in ((ed.train, mem.train), (ed.heldout, mem.heldout)):
        assert ref.labels is not None
        f_mem = extract_features(encoder, ref, MEAN, STD, SIZE, "cpu", batch_size=batch)
        f_str, y_str = stream_features(
            encoder, part, MEAN, STD, SIZE, "cpu", num_workers=workers, batch_size=batch
        )
        assert torch.equal(y_str, ref.labels)
        assert torch.equal(f_str, f_mem), (f_str - f_mem).abs().max()
    assert encoder.training  # the training flag is restored


@pytest.mark.usefixtures("one_thread")
def test_streamed_features_do_not_depend_on_the_batch(
    folder: Path, encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eval mode: an image's features are its own, within float rounding of other batchings."""
    _force_stream(monkeypatch)
    ed = eval_data(str(folder), SIZE, 0)
    assert isinstance(ed.train, FileSet)
    a, _ = stream_features(encoder, ed.train, MEAN, STD, SIZE, "cpu", batch_size=3)
    b, _ = stream_features(encoder, ed.train, MEAN, STD, SIZE, "cpu")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_train_val_layout_is_the_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tv"
    _folder(root / "train", per_class=4, classes=("x", "y"))
    _folder(root / "val", per_class=2, classes=("x", "y"))
    mem = load_image_folder(root, SIZE)
    _force_stream(monkeypatch)
    ed = eval_data(str(root), SIZE, 0)
    assert isinstance(ed.train, FileSet) and isinstance(ed.heldout, FileSet)
    assert mem.heldout is not None and mem.heldout.labels is not None
    assert mem.train.labels is not None
    assert ed.train.files.root == str(root / "train") and ed.heldout.files.root == str(root / "val")
    assert ed.train.labels.tolist() == mem.train.labels.tolist()
    assert ed.heldout.labels.tolist() == mem.heldout.labels.tolist()
    (root / "val" / "z").mkdir()
    Image.new("RGB", (4, 4)).save(root / "val" / "z" / "0.png")
    with pytest.raises(ValueError, match="different class subfolders"):
        eval_data(str(root), SIZE, 0)


@pytest.mark.usefixtures("one_thread")
def test_unreadable_file_is_skipped_and_counted(
    tmp_path: Path, encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path / "data", per_class=6, classes=("a", "b"))
    bad = root / "a" / "4.png"  # a PNG of the listing, now corrupt
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    _force_stream(monkeypatch)
    ed = eval_data(str(root), SIZE, 0)
    assert isinstance(ed.train, FileSet) and isinstance(ed.heldout, FileSet)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        parts = [
            stream_features(encoder, p, MEAN, STD, SIZE, "cpu", batch_size=4, summary=ed.summary)
            for p in (ed.train, ed.heldout)
        ]
        ed.summary.report(ed.name)
    messages = [str(w.message) for w in record]
    assert any(str(bad) in m for m in messages), messages
    assert any("skipped 1 of 12" in m for m in messages), messages
    assert ed.summary.skipped_count == 1 and str(bad) in ed.summary.skipped
    assert sum(len(f) for f, _ in parts) == 11 and all(len(f) == len(y) for f, y in parts)


@pytest.mark.usefixtures("one_thread")
def test_nothing_readable_is_one_clear_error(
    tmp_path: Path, encoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            (tmp_path / c / f"{i}.jpg").write_bytes(b"junk")
    _force_stream(monkeypatch)
    ed = eval_data(str(tmp_path), SIZE, 0)
    assert isinstance(ed.train, FileSet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="none of the 2 image files could be read"):
            stream_features(encoder, ed.train, MEAN, STD, SIZE, "cpu")


# ------------------------------------------------------------------ evaluate_checkpoint, CLI


def _checkpoint(path: Path, image_size: int, stem: str = "cifar") -> Path:
    """A valid checkpoint of an untrained 1/8-width ResNet-18 (evaluation reads nothing else)."""
    from types import SimpleNamespace

    from fastclr.checkpoint import CHECKPOINT_FORMAT, model_spec, save_checkpoint_atomic

    spec = SimpleNamespace(arch="resnet18", stem=stem, width=0.125, proj_dim=16, head_bn=False)
    torch.manual_seed(0)
    model = build_model("resnet18", stem, 0.125, 16)
    state = {
        "format": CHECKPOINT_FORMAT,
        "model_spec": model_spec(spec),
        "image_size": image_size,
        "mean": list(MEAN),
        "std": list(STD),
        "model": model.state_dict(),
    }
    save_checkpoint_atomic(state, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", SIZE)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_checkpoint_streamed_equals_in_memory(
    folder: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = evaluate_checkpoint(checkpoint, data=str(folder), progress=False)
    assert mem.features.startswith("decoded in memory")
    _force_stream(monkeypatch)
    got = evaluate_checkpoint(checkpoint, data=str(folder), progress=False, num_workers=0)
    assert got.features.startswith("streamed from 21 files, 0 workers")
    assert (got.n_train, got.n_test) == (mem.n_train, mem.n_test) == (18, 3)
    assert (got.linear_top1, got.knn_top1) == (mem.linear_top1, mem.knn_top1)


@pytest.mark.usefixtures("one_thread")
def test_cli_linear_eval_on_a_streamed_folder(
    folder: Path,
    checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _force_stream(monkeypatch)
    argv = ["linear-eval", "--checkpoint", str(checkpoint), "--data", str(folder)]
    assert main([*argv, "--num-workers", "1"]) == 0
    out = capsys.readouterr()
    assert "features:   streamed from 21 files, 1 worker (--num-workers;" in out.out
    assert "18 train / 3 held-out" in out.out and "linear top-1" in out.out
    assert "features (train)" in out.err and "Traceback" not in out.err
    monkeypatch.undo()
    assert main([*argv, "--no-progress"]) == 0
    assert "features:   decoded in memory (21 files at 16 px" in capsys.readouterr().out


# ------------------------------------------------------------------ kNN and probe in blocks


def _blobs(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes (the same centres for every seed, noise drawn by seed)."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * 0.6
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


@pytest.mark.usefixtures("one_thread")
def test_knn_blocks_are_bounded_and_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastclr.evaluate as ev

    ftr, ytr = _blobs(300, 12, 4, 0)
    fte, yte = _blobs(100, 12, 4, 1)
    want = knn_accuracy(ftr, ytr, fte, yte, k=7)
    seen: list[tuple[int, ...]] = []
    real_topk = torch.Tensor.topk

    def spy(self: torch.Tensor, *a: object, **kw: object) -> object:
        seen.append(tuple(self.shape))
        return real_topk(self, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ev, "KNN_BLOCK_BYTES", 300 * 4 * 9)  # 9 test rows a block
    monkeypatch.setattr(torch.Tensor, "topk", spy)
    got = knn_accuracy(ftr, ytr, fte, yte, k=7)
    assert got == want and 0.5 < got < 1.0
    assert max(s[0] for s in seen) == 9 and sum(s[0] for s in seen) == 100


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("rows", [1, 37, 399])
def test_blocked_probe_loss_and_gradient_are_the_full_batch_ones(rows: int) -> None:
    """Against the float64 full-batch definition at random parameters: the standardisation, the
    loss and its gradient, for blocks that divide N, do not, and a single leftover row."""
    from fastclr.downstream.probe import blocked_loss, standardisation

    x, y = _blobs(400, 20, 5, 4)
    x = x * torch.linspace(0.1, 3.0, 20) + 5.0  # features of different scales, off-centre
    mu, sd = standardisation(x, rows)
    ref_mu, ref_sd = x.double().mean(0), x.double().std(0)
    torch.testing.assert_close(mu, ref_mu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sd, ref_sd, rtol=1e-12, atol=1e-12)
    g = torch.Generator().manual_seed(5)
    w0 = torch.randn(20, 5, generator=g, dtype=torch.float64)
    b0 = torch.randn(5, generator=g, dtype=torch.float64)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    z = (x.double() - ref_mu) / ref_sd
    ref = torch.nn.functional.cross_entropy(z @ w + b, y) + 0.01 * (w * w).sum()
    ref_gw, ref_gb = torch.autograd.grad(ref, (w, b))
    w2, b2 = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    got = blocked_loss(x, y, mu, sd, w2, b2, 0.01, rows)
    torch.testing.assert_close(got, ref.detach(), rtol=1e-12, atol=1e-12)
    assert w2.grad is not None and b2.grad is not None
    torch.testing.assert_close(w2.grad, ref_gw, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b2.grad, ref_gb, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_probe_in_row_blocks_matches_the_whole_batch() -> None:
    """Blocks of rows (float64 per block from float32 features) fit the same probe: the same
    predictions, as L-BFGS on a sum in another order gives; one block is the unblocked code."""
    ftr, ytr = _blobs(400, 20, 5, 2)
    fte, yte = _blobs(150, 20, 5, 3)
    whole = linear_probe_accuracy(ftr, ytr, fte, yte)
    blocked = linear_probe_accuracy(ftr, ytr, fte, yte, block_bytes=8 * 25 * 101)  # 101 rows
    assert 0.5 < whole < 1.0 and blocked == whole


# ------------------------------------------------------------------ memory at scale


# linear-eval in a fresh process; argv: checkpoint, folder, "stream" | "memory"
_RSS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    import fastclr.data.select as select
    import fastclr.downstream.probe as probe
    import fastclr.evaluate as ev

    torch.set_num_threads(1)
    # the kNN's and the probe's blocks at their caps for both folder sizes, as at scale
    ev.KNN_BLOCK_BYTES = probe.PROBE_BLOCK_BYTES = 2 << 20
    select.MEMORY_AUTO_BYTES = 0 if sys.argv[3] == "stream" else 1 << 40

    def hwm_kb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

    # the peak of the evaluation alone: imports and start-up have transient peaks of their own
    # (hundreds of MB, varying with the environment) that would hide what the folder adds
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        peak_of = hwm_kb
    except OSError:
        peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = ev.evaluate_checkpoint(sys.argv[1], data=sys.argv[2], num_workers=0, progress=False)
    print(json.dumps({"n": r.n_train + r.n_test, "how": r.features, "peak_kb": peak_of()}))
    """
)


@pytest.mark.slow
def test_linear_eval_memory_does_not_grow_with_the_folder(
    tmp_path: Path, write_many_pngs: Callable[[Path, int], Path]
) -> None:
    """Peak RSS of linear-eval at 96 px, 1,000 vs 10,000 files, streamed and in memory side by
    side: streamed, it grows by less than a quarter of what decoding in memory adds (9,000 ×
    27 KB = 249 MB more decoded). The features are 10,000 × 64 × 4 B = 2.6 MB.

    Decoding runs in the process (``num_workers=0``): a worker's RSS also counts the pages it
    shares with its parent since the fork, which varies by ±70 MB from run to run; the decode
    workers hold only their batches in flight (a fixed-size chunk per task, the same task shape
    as the pretraining loader, whose workers test_data_stream.py measures).
    """
    ckpt = _checkpoint(tmp_path / "ckpt.pt", 96, stem="imagenet")
    roots = {n: write_many_pngs(tmp_path / str(n), n) for n in (1_000, 10_000)}
    peak: dict[tuple[str, int], float] = {}
    for how in ("stream", "memory"):
        for n, root in roots.items():
            out = subprocess.run(
                [sys.executable, "-c", _RSS_SCRIPT, str(ckpt), str(root), how],
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            assert rec["n"] == n and rec["how"].startswith(
                "streamed from" if how == "stream" else "decoded in memory"
            )
            peak[how, n] = rec["peak_kb"] / 1024
    grow = {how: peak[how, 10_000] - peak[how, 1_000] for how in ("stream", "memory")}
    print(f"peak RSS (MB): {peak}; growth 1,000 → 10,000 files: {grow}")
    assert grow["memory"] > 200, grow  # the control: decoding in memory does grow
    assert grow["stream"] < grow["memory"] / 4, grow
