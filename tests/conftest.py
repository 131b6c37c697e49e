"""Test set-up shared by every test module.

Without a CUDA device the Triton kernels run on CPU tensors through Triton's interpreter; that
needs TRITON_INTERPRET=1 before triton is first imported, so it is set here, at collection time.
"""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

if not os.environ.get("FASTCLR_TEST_COMPILED") and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

# Small, deterministic example budgets: the Triton interpreter is slow and CI has 2 cores.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests on tiny tensors (OpenMP barriers cost more than the work,
    and far more on a shared, oversubscribed CPU); use with ``pytest.mark.usefixtures``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


def cuda_or_interpreter() -> bool:
    """True where Triton kernels can run: a CUDA device, or CPU tensors under the interpreter."""
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _tiny_png_bytes(n: int = 8) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (30 * i, 255 - 30 * i, 100)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="session")
def write_many_pngs() -> Callable[[Path, int], Path]:
    """``write(root, n)``: n tiny 8×8 PNGs (8 distinct pictures, repeated) spread over 10 class
    folders ``root/c0`` … ``root/c9``; returns ``root``. For tests that need many files fast."""
    blobs = _tiny_png_bytes()

    def write(root: Path, n: int) -> Path:
        for c in range(10):
            (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            (root / f"c{i % 10}" / f"{i:06d}.png").write_bytes(blobs[i % len(blobs)])
        return root

    return write


def _coded_image(width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    r = np.round(xx * 255 / (width - 1))
    g = np.round(yy * 255 / (height - 1))
    return np.stack([r, g, np.full_like(r, 77)], -1).astype(np.uint8)


@pytest.fixture(scope="session")
def coded_image() -> Callable[[int, int], np.ndarray]:
    """``coded_image(width, height)``: an (H, W, 3) uint8 picture whose red codes the column and
    green the row (blue is 77), so that a crop's colours say which box of the original it shows."""
    return _coded_image


@pytest.fixture(scope="session")
def write_coded_folder() -> Callable[..., Path]:
    """``write(root, size, per_class, suffixes=(".png",))``: ``coded_image(*size)`` saved
    ``per_class`` times in each suffix's format (``00.png``, ``00.jpg``, …; JPEG at quality 95)
    into the class folders ``root/a`` and ``root/b``; returns ``root``."""
    from PIL import Image

    def write(
        root: Path, size: tuple[int, int], per_class: int, suffixes: tuple[str, ...] = (".png",)
    ) -> Path:
        picture = Image.fromarray(_coded_image(*size))
        for c in ("a", "b"):
            (root / c).mkdir()
            for i in range(per_class):
                for suffix in suffixes:
                    picture.save(root / c / f"{i:02d}{suffix}", quality=95)  # PNG: lossless
        return root

    return write


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if "error:" in ln]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="session")
def one_error_line() -> Callable[[str], str]:
    """``line(stderr)``: the one ``error:`` line of a refused command's stderr, asserting there
    is exactly one and no traceback (what every refusal of the command line must look like)."""
    return _one_error_line


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""

    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return pick


def exit_quietly() -> None:
    """End a spawned worker that succeeded without the interpreter's shutdown: after its gloo
    group is destroyed and its results written, that shutdown sometimes aborts the process
    ("terminate called without an active exception", SIGABRT: seen in about 1 of 8 runs of
    tests/test_distributed.py, after the worker's last line had run). A worker that raised never
    gets here, so its failure still reaches ``mp.spawn``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _gloo_rank(rank: int, world: int, port: int, work: Callable[..., None], args: tuple) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        work(rank, *args)
        if dist.is_initialized():  # no rank tears the group down while another still uses it
            dist.barrier()
    finally:
        if dist.is_initialized():  # ``work`` may have torn the group down itself
            dist.destroy_process_group()
    exit_quietly()


@pytest.fixture(scope="session")
def spawn_gloo(free_port: Callable[[], int]) -> Callable[..., None]:
    """``spawn_gloo(work, world, *args)``: ``work(rank, *args)`` in each of ``world`` fresh
    processes, one intra-op thread each, joined in a gloo process group on a free local port
    (destroyed after ``work`` unless it did so itself); returns once every rank has finished.
    ``work`` must be a module-level function (the processes are spawned)."""

    def spawn(work: Callable[..., None], world: int, *args: object) -> None:
        import torch.multiprocessing as mp

        mp.spawn(_gloo_rank, args=(world, free_port(), work, args), nprocs=world, join=True)

    return spawn


def _write_noise_folder(
    root: Path, sizes: list[tuple[int, int]], per_class: int, ext: str = ".png"
) -> Path:
    """Classes ``a`` and ``b`` of ``per_class`` uniform-noise RGB images each under ``root``,
    the i-th of (width, height) ``sizes[i % len(sizes)]``, named ``00{ext}``, ``01{ext}``...
    (JPEGs at quality 90); the same files on every call."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img.save(root / c / f"{i:02d}{ext}", **({"quality": 90} if ext == ".jpg" else {}))
    return root


@pytest.fixture(scope="session")
def write_noise_folder() -> Callable[..., Path]:
    """``write(root, sizes, per_class, ext=".png")``: a 2-class folder of noise images of
    odd sizes (:func:`_write_noise_folder`)."""
    return _write_noise_folder


class _InterruptAt:
    """NT-Xent (temperature 0.5) that sends this process SIGINT on its ``call``-th call, as
    Ctrl-C in the middle of that training step would."""

    def __init__(self, call: int) -> None:
        from fastclr import NTXentLoss

        self.inner, self.calls, self.at = NTXentLoss(0.5, check_finite=False), 0, call

    def __call__(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.inner(z1, z2)


@pytest.fixture(scope="session")
def interrupt_at() -> Callable[[int], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``interrupt_at(n)``: a ``loss_fn`` for ``pretrain`` that is Ctrl-C during step ``n``."""
    return _InterruptAt


@pytest.fixture(scope="session")
def write_checkpoint() -> Callable[..., Path]:
    """``write(path, arch, stem, width, image_size=16, head_bn=False, seed=0, edit=None,
    data=None)``: a pretraining checkpoint of an untrained fastclr model with seeded random
    weights and BatchNorm statistics (what ``fastclr pretrain`` writes, less the optimiser and RNG
    state); ``edit`` changes the state dict before it is saved (a NaN weight, say); ``data``: the
    ``--data`` its ``config`` records (no ``config`` when None); returns ``path``."""
    from types import SimpleNamespace

    from fastclr.checkpoint import CHECKPOINT_FORMAT, model_spec, save_checkpoint_atomic
    from fastclr.models import build_model

    def write(
        path: Path,
        arch: str = "resnet18",
        stem: str = "cifar",
        width: float = 0.125,
        image_size: int = 16,
        head_bn: bool = False,
        seed: int = 0,
        edit: Callable[[dict[str, torch.Tensor]], None] | None = None,
        data: str | None = None,
    ) -> Path:
        torch.manual_seed(seed)
        model = build_model(arch, stem, width, 16, head_bn)  # type: ignore[arg-type]
        for name, buf in model.named_buffers():  # non-trivial running statistics
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        spec = SimpleNamespace(arch=arch, stem=stem, width=width, proj_dim=16, head_bn=head_bn)
        state = {
            "format": CHECKPOINT_FORMAT,
            "model_spec": model_spec(spec),
            "feature_dim": model.feature_dim,
            "image_size": image_size,
            "mean": [0.5, 0.4, 0.3],
            "std": [0.2, 0.25, 0.3],
            "model": model.state_dict(),
            "epoch": 0,
            "step_in_epoch": 3,
            "global_step": 3,
        }
        if edit is not None:
            edit(state["model"])
        if data is not None:
            state["config"] = {"data": data}
        save_checkpoint_atomic(state, path)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_run() -> Callable[..., object]:
    """``tiny_run(out, **overrides)``: the ``TrainConfig`` of a two-epoch, two-step pretraining run
    on 8-px views of an eighth-width encoder (the synthetic data set), logging every step."""
    from fastclr.train import TrainConfig

    tiny: dict[str, object] = {
        "image_size": 8,
        "width": 0.125,
        "batch_size": 16,
        "limit_steps": 2,
        "epochs": 2,
        "log_every": 1,
        "progress": False,
        "lr": 0.5,
    }

    def make(out: Path, **overrides: object) -> TrainConfig:
        return TrainConfig(out=str(out), **{**tiny, **overrides})  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def one_process_data() -> Callable[..., object]:
    """``build(plan, crop, **overrides)``: ``build_train_data`` for a pretraining plan in one CPU
    process (rank 0 of 1, seed 0) with the plan's loader, workers, view size and per-rank batch,
    unless a keyword of ``build_train_data`` overrides them."""
    from fastclr.data.select import build_train_data

    def build(plan: Any, crop: object, **overrides: Any) -> Any:
        planned = {"loader": plan.loader, "num_workers": plan.num_workers}
        shape = {"image_size": plan.image_size, "batch_size": plan.per_rank}
        one = {"seed": 0, "rank": 0, "world_size": 1, "device": torch.device("cpu")}
        return build_train_data(plan.data, crop=crop, **(planned | shape | one | overrides))

    return build


@pytest.fixture(scope="session")
def chunked_references() -> Callable[..., tuple[torch.nn.Module, torch.nn.Module]]:
    """``refs(make_model, views, chunk)``: two fresh ``make_model()`` after the chunks-with-graphs
    backward of NT-Xent on ``views`` in chunks of ``chunk`` (``contrastive_backward_reference``),
    one in float64 (inputs and embeddings ``z`` of ``(h, z)`` too), one in float32; returns
    ``(model64, model32)``, whose gradients and buffers are what a chunked step must reproduce."""
    from fastclr.gradcache import contrastive_backward_reference
    from fastclr.loss import NTXentLoss

    def refs(
        make_model: Callable[[], torch.nn.Module], views: list[torch.Tensor], chunk: int
    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        m64, m32 = make_model().double(), make_model()
        contrastive_backward_reference(
            m64,
            [v.double() for v in views],
            NTXentLoss(),
            chunk_size=chunk,
            embed=lambda out: out[1].to(torch.float64),
        )
        contrastive_backward_reference(m32, views, NTXentLoss(), chunk_size=chunk)
        return m64, m32

    return refs


@pytest.fixture(scope="session")
def count_launches() -> Callable[[Callable[[], None]], list[str]]:
    """``count_launches(fn)``: the kernel launches of ``fn()``, in order — every Triton launch
    (``triton:<kernel>``) plus every dispatched torch op that runs a kernel (views, allocations and
    aliasing excluded; a ``fastclr::`` op's own kernels are counted inside it). Counted at the
    dispatcher and at the launcher, so it holds on CPU under the interpreter as on a GPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fastclr.ops import triton_ntxent as ops

    no_kernel = {"empty", "empty_strided", "empty_like", "new_empty", "detach", "alias"}
    no_kernel |= {"lift_fresh", "_to_copy_noop"}

    def count(fn: Callable[[], None]) -> list[str]:
        names: list[str] = []
        inside = [False]

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                base = func.overloadpacket.__name__
                custom = func.namespace == "fastclr"
                if not inside[0] and not custom and not func.is_view and base not in no_kernel:
                    names.append(base)
                return func(*args, **(kwargs or {}))

        real = ops._launch

        def launch(kernel, grid, *a, **kw):  # type: ignore[no-untyped-def]
            names.append("triton:" + getattr(kernel, "fn", kernel).__name__)
            inside[0] = True  # the interpreter's own host-side tensor traffic is not a launch
            try:
                real(kernel, grid, *a, **kw)
            finally:
                inside[0] = False

        ops._launch = launch
        try:
            with Count():
                fn()
        finally:
            ops._launch = real
        return names

    return count


@pytest.fixture(scope="session")
def bench_module() -> Callable[[str], ModuleType]:
    """``bench_module(name)``: ``bench/<name>.py`` freshly executed as the module
    ``fastclr_bench_<name>`` (registered in ``sys.modules`` first, as its dataclasses need), for
    tests of a benchmark's parts; each call gives a new module, so patching one leaks nowhere."""
    bench = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"fastclr_bench_{name}", bench / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod

    return load
