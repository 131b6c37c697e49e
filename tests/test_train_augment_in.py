"""``--augment-in``: where ``fastclr pretrain`` finishes its views (the run plan's decision).

``workers``: the stream loader's decode workers crop, resize and augment each view in one native
pass (``WorkerViews``); ``main``: the workers crop and resize, the training process augments.
The plan's rule, its refusals, both paths training, the workers path's independence from the
worker count, and an exact resume. Tiny images and models: about 15 s on 2 cores.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from fastclr.augment.native_backend import available
from fastclr.cli import main
from fastclr.errors import UsageError
from fastclr.train import TrainConfig, pretrain
from fastclr.train.plan import plan_run

pytestmark = [
    pytest.mark.skipif(not available(), reason="native library not built"),
    pytest.mark.usefixtures("one_thread"),
]

TINY: dict[str, Any] = {
    **{"width": 0.125, "image_size": 8, "batch_size": 4, "stem": "cifar", "epochs": 1},
    **{"loader": "stream", "num_workers": 0, "log_every": 1, "progress": False},
}


@pytest.fixture(scope="module")
def jpegs(
    tmp_path_factory: pytest.TempPathFactory, write_noise_folder: Callable[..., Path]
) -> Path:
    """24 small JPEGs of odd sizes in 2 classes (larger than the views, not square)."""
    return write_noise_folder(tmp_path_factory.mktemp("jpegs"), [(23, 31), (27, 19)], 12, ".jpg")


def _weights(result: Any) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _cli_tiny(folder: Path) -> list[str]:
    """``fastclr pretrain``'s arguments of a one-step run of TINY on ``folder``."""
    sizes = ["--image-size", "8", "--batch-size", "4", "--width", "0.125", "--limit-steps", "1"]
    where = ["--data", str(folder), "--loader", "stream", "--num-workers", "0", "--no-progress"]
    return ["pretrain", *where, *sizes]


def _plan(folder: Path, **kw: Any) -> Any:
    return plan_run(TrainConfig(**{**TINY, "data": str(folder), **kw}))


def test_auto_rule_and_its_reason(jpegs: Path) -> None:
    plan = _plan(jpegs)
    assert plan.augment_in == "workers"
    assert "stream loader, native augmentation, CPU" in plan.reason("augment_in")
    torch_backend = _plan(jpegs, augment_backend="torch")
    assert torch_backend.augment_in == "main"
    assert "--augment-backend torch" in torch_backend.reason("augment_in")
    memory = plan_run(TrainConfig(**{**TINY, "loader": "memory", "data": "digits"}))
    assert memory.augment_in == "main" and "memory loader" in memory.reason("augment_in")
    given = _plan(jpegs, augment_in="main")
    assert given.augment_in == "main" and given.reason("augment_in") == "given"
    own = plan_run(TrainConfig(**{**TINY, "data": str(jpegs)}), own_augment=False)
    assert own.augment_in == "main" and "its own augmentation" in own.reason("augment_in")


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"loader": "memory", "data": "digits"}, "memory loader"),
        ({"augment_backend": "torch"}, "--augment-backend torch"),
    ],
)
def test_workers_that_cannot_apply_are_refused(jpegs: Path, kw: dict[str, Any], why: str) -> None:
    with pytest.raises(UsageError, match=f"--augment-in workers cannot apply: .*{why}"):
        _plan(jpegs, augment_in="workers", **kw)


def test_workers_on_a_gpu_device_are_refused(jpegs: Path) -> None:
    cfg = TrainConfig(**{**TINY, "data": str(jpegs), "augment_in": "workers"})
    with pytest.raises(UsageError, match=r"--augment-in workers cannot apply: .* on cuda"):
        plan_run(cfg, device=torch.device("cuda"))


def test_cli_refusal_is_one_line_and_exit_2(
    tmp_path: Path, jpegs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_cli_tiny(jpegs), "--augment-backend", "torch", "--augment-in", "workers"]
    argv += ["--out", str(tmp_path / "cli")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--augment-in workers cannot apply" in err and "Traceback" not in err


@pytest.mark.parametrize("mode", ["main", "workers"])
def test_both_paths_train(
    tmp_path: Path, jpegs: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = TrainConfig(**TINY, data=str(jpegs), out=str(tmp_path / mode), limit_steps=3)
    cfg.augment_in = mode
    result = pretrain(cfg)
    header = capsys.readouterr().out
    shown = {"main": "the training process", "workers": "the loader's workers"}[mode]
    assert re.search(f"augment in: +{shown} ", header)
    assert result.global_step == 3 and np.isfinite(result.last_loss)


def test_the_two_paths_draw_different_views(tmp_path: Path, jpegs: Path) -> None:
    """Why a resume keeps the path: the same seed gives other views, so other weights."""
    base = {**TINY, "data": str(jpegs), "limit_steps": 2}
    runs = {
        m: _weights(pretrain(TrainConfig(**base, out=str(tmp_path / m), augment_in=m)))
        for m in ("main", "workers")
    }
    assert not _same(runs["main"], runs["workers"])


def test_workers_path_does_not_depend_on_worker_count(tmp_path: Path, jpegs: Path) -> None:
    base = {**TINY, "data": str(jpegs), "limit_steps": 3, "augment_in": "workers"}
    zero = _weights(pretrain(TrainConfig(**{**base, "out": str(tmp_path / "w0")})))
    two = _weights(pretrain(TrainConfig(**{**base, "num_workers": 2, "out": str(tmp_path / "w2")})))
    assert _same(zero, two)
    other = {**base, "seed": 1, "out": str(tmp_path / "s1")}
    assert not _same(zero, _weights(pretrain(TrainConfig(**other))))  # the check can fail


def test_workers_resume_mid_epoch_is_bit_identical(
    tmp_path: Path, jpegs: Path, interrupt_at: Callable[[int], Any]
) -> None:
    """Interrupted after step 2 of 4 (auto: workers), resumed with 2 workers: same weights."""
    base = {**TINY, "data": str(jpegs), "limit_steps": 4}
    straight = pretrain(TrainConfig(**base, out=str(tmp_path / "a")))
    with pytest.raises(KeyboardInterrupt):
        pretrain(TrainConfig(**base, out=str(tmp_path / "b")), loss_fn=interrupt_at(2))
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert ck["plan"]["augment_in"]["value"] == "workers"
    again = {**base, "num_workers": 2, "out": str(tmp_path / "c"), "resume": str(tmp_path / "b")}
    resumed = pretrain(TrainConfig(**again))
    assert resumed.global_step == 4
    assert _same(_weights(straight), _weights(resumed))
    other = {**base, "out": str(tmp_path / "d"), "resume": str(tmp_path / "b")}
    with pytest.raises(UsageError, match="--augment-in main differs from the workers"):
        pretrain(TrainConfig(**other, augment_in="main"))


def test_cli_resume_refuses_another_augment_in(
    tmp_path: Path, jpegs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(tmp_path / "run")
    argv = [*_cli_tiny(jpegs), "--epochs", "2", "--stop-after-epochs", "1", "--out", run]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["pretrain", "--out", run, "--resume", "--augment-in", "main"]) == 2
    err = capsys.readouterr().err
    assert "--augment-in main differs from the workers" in err and "Traceback" not in err


def test_a_checkpoint_before_the_decision_resumes_in_main(jpegs: Path) -> None:
    first = _plan(jpegs).to_dict()
    del first["augment_in"]
    cfg = TrainConfig(**{**TINY, "data": str(jpegs)})
    plan = plan_run(cfg, saved=first, resume_at=(0, 1, 1))
    assert plan.augment_in == "main" and "predates" in plan.reason("augment_in")
    first["augment_in"] = {"value": "workers", "reason": "auto"}
    assert plan_run(cfg, saved=first, resume_at=(0, 1, 1)).augment_in == "workers"
    with pytest.raises(UsageError, match="the checkpoint's run finished its views"):
        plan_run(
            TrainConfig(**{**TINY, "data": str(jpegs), "augment_backend": "torch"}),
            saved=first,
            resume_at=(0, 1, 1),
        )
