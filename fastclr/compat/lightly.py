"""lightly's ``NTXentLoss`` (SimCLR, and MoCo with a memory bank) on fastclr's fused backends.

Change ``from lightly.loss import NTXentLoss`` to ``from fastclr.compat.lightly import
NTXentLoss``; the constructor keeps lightly's positional order
``NTXentLoss(temperature=0.5, memory_bank_size=0, gather_distributed=False)`` and the call stays
``loss(out0, out1)``.

Reproduced (lightly 1.5/1.6):

* ``memory_bank_size=0``: NT-Xent over the 2N rows (``fastclr.NTXentLoss`` at the same τ); with
  ``gather_distributed=True`` the local anchors see every rank's rows as keys.
* ``memory_bank_size=K`` (an int, or a ``(K, dim)`` tuple): the MoCo form. Anchors are the rows
  of ``out0`` only; each one's logits are its positive ``out1[i]`` and the K rows of the bank —
  the other rows of the batch are NOT keys::

      loss_i = −log( exp(s_i⁺) / (exp(s_i⁺) + Σ_j exp(s(out0_i, bank_j))) ),   mean over i

  The bank starts as K random unit vectors drawn with ``torch.randn`` from the global generator
  (at construction for a tuple, at the first call for an int, as lightly does, so the same seed
  gives the same bank; lightly 1.6 requires the tuple, earlier versions also took an int). It
  is read before it is updated, and is updated with the normalised ``out1`` only when
  ``out0.requires_grad`` (so evaluation does not change it). The queue
  pointer wraps like lightly's: a batch that reaches the end fills it and the rest of that batch
  is dropped. With ``gather_distributed=True`` every rank's ``out1`` is enqueued.

The bank term runs through the rectangular fused kernel (N anchors against K keys, forward and
backward) and never forms the N×K logits; queries are taken in chunks of at most K rows with the
kernel's excluded self term added back exactly.

Deliberate difference: lightly accepts a negative temperature; here τ must be > 0 (a negative τ
turns the loss into one that pushes positives apart).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastclr.compat._common import check_rows
from fastclr.distributed import all_gather_no_grad, world_size
from fastclr.loss import (
    BackendName,
    _check_finite,
    _check_temperature,
    lse_all_keys,
    ntxent,
    resolve_backend,
)

__all__ = ["NTXentLoss"]

_LIGHTLY_EPS = 1e-12  # lightly normalises with torch.nn.functional.normalize's default eps


class NTXentLoss(nn.Module):
    """lightly's ``NTXentLoss``, fused (see the module docstring for what is reproduced).

    Args:
        temperature: τ > 0 (default 0.5).
        memory_bank_size: 0 (SimCLR), K, or ``(K, dim)`` (MoCo-style bank of K past ``out1``).
        gather_distributed: gather every rank's rows as keys (no bank), or every rank's ``out1``
            into the bank (with a bank).
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Shape: out0, out1 (N, D); output a scalar in their dtype.

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.2, memory_bank_size=(4096, 128))
        >>> loss = loss_fn(torch.randn(32, 128, requires_grad=True), torch.randn(32, 128))
    """

    bank: Tensor

    def __init__(
        self,
        temperature: float = 0.5,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
        *,
        backend: BackendName = "auto",
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        size = (memory_bank_size,) if isinstance(memory_bank_size, int) else tuple(memory_bank_size)
        if (
            not 1 <= len(size) <= 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in size)
            or any(x < 0 for x in size)
        ):
            raise ValueError(
                "memory_bank_size must be a non-negative int K or a (K, dim) tuple, "
                f"got {memory_bank_size!r}"
            )
        if gather_distributed and not torch.distributed.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available in this torch"
            )
        self.size = size
        self.gather_distributed = gather_distributed
        self.backend: BackendName = backend
        self.check_finite = check_finite
        self._ptr = 0
        self.register_buffer("bank", torch.empty(size, dtype=torch.float), persistent=False)
        if len(size) == 2:
            self._init_bank(size)

    @torch.no_grad()
    def _init_bank(self, size: tuple[int, ...]) -> None:
        # the same draw as lightly: randn on the global CPU generator, then the buffer's device
        self.bank = F.normalize(torch.randn(size).type_as(self.bank), dim=-1)
        self._ptr = 0

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        if self.gather_distributed and world_size() > 1:
            keys = all_gather_no_grad(keys)
        k, n = self.size[0], keys.shape[0]
        if self._ptr + n >= k:
            self.bank[self._ptr :] = keys[: k - self._ptr]
            self._ptr = 0
        else:
            self.bank[self._ptr : self._ptr + n] = keys
            self._ptr += n

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        out0 = check_rows("out0", out0)
        out1 = check_rows("out1", out1)
        if out0.shape != out1.shape:
            raise ValueError(
                f"out0 and out1 must have the same shape, got {tuple(out0.shape)} and "
                f"{tuple(out1.shape)}"
            )
        if self.size[0] == 0:
            return ntxent(
                out0,
                out1,
                temperature=self.temperature,
                backend=self.backend,
                gather_distributed=self.gather_distributed,
                eps=_LIGHTLY_EPS,
                check_finite=self.check_finite,
            )
        if self.check_finite and not torch.compiler.is_compiling():
            _check_finite(out0)
            _check_finite(out1)
        if self.bank.dim() == 1:
            self._init_bank((self.size[0], out0.shape[1]))
        if self.bank.shape[1] != out0.shape[1]:
            raise ValueError(
                f"out0 has {out0.shape[1]} features but the memory bank holds "
                f"{self.bank.shape[1]}-dim keys (memory_bank_size={self.size})"
            )
        name = resolve_backend(self.backend, out0.device, out0.dtype)
        work = torch.float64 if out0.dtype == torch.float64 else torch.float32
        kdtype = out0.dtype if out0.dtype in (torch.float16, torch.bfloat16) else work
        q = F.normalize(out0.to(work), dim=1, eps=_LIGHTLY_EPS)
        p = F.normalize(out1.to(work), dim=1, eps=_LIGHTLY_EPS)
        # a copy read before the update (the kernels' backward needs the keys it saw)
        bank = self.bank.detach().to(device=q.device, dtype=work, copy=True)
        if out0.requires_grad:
            self._enqueue(p.detach())
        s_pos = (q * p).sum(dim=1) / self.temperature
        bank_lse = lse_all_keys(q, bank, self.temperature, name, kdtype)
        # −log softmax of the positive among [positive, bank] = softplus(bank LSE − positive)
        return F.softplus(bank_lse - s_pos).mean().to(out0.dtype)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, memory_bank_size={self.size}, "
            f"gather_distributed={self.gather_distributed}, backend={self.backend!r}"
        )
