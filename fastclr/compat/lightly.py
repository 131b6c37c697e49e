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

The bank is lightly's: ``loss.memory_bank`` holds ``bank`` (K, dim) float32 and ``bank_ptr``, and
stores ``out1`` normalised the way lightly normalises it (``F.normalize`` in ``out1``'s dtype,
under the caller's autocast), so the bank's rows are rounded as lightly's are.
The loss is returned in lightly's dtype: float32 under autocast (lightly's cross-entropy runs in
float32 there), the inputs' dtype otherwise; it is computed in float32 (float64 for float64
inputs) whatever the inputs' dtype.

The bank term runs through the rectangular fused kernel (N anchors against K keys, forward and
backward) and never forms the N×K logits; queries are taken in chunks of at most K rows with the
kernel's excluded self term added back exactly.

Deliberate differences: lightly accepts a negative temperature; here τ must be > 0 (a negative τ
turns the loss into one that pushes positives apart). Rows with norm above ~1.8e19 (float32):
lightly's normalisation overflows (every logit becomes 0); here it is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastclr.compat._common import check_rows, full_precision, peer_dtype
from fastclr.distributed import all_gather_no_grad, world_size
from fastclr.loss import (
    BackendName,
    check_temperature,
    fused_rows,
    lse_all_keys,
    positive_mean,
    require_finite,
    resolve_backend,
)
from fastclr.reference import l2_normalize, views_to_batch

__all__ = ["NTXentLoss"]

_LIGHTLY_EPS = 1e-12  # lightly normalises with torch.nn.functional.normalize's default eps


class MemoryBank(nn.Module):
    """lightly's ``MemoryBankModule`` state: ``bank`` (K, dim) float32 and ``bank_ptr`` (1,).

    The bank starts as K random unit rows (``torch.randn`` on the global generator, normalised);
    ``enqueue`` writes from the pointer and, at the end, fills the bank, drops the rest of the
    batch and returns the pointer to 0 (lightly's queue rule). Both buffers are non-persistent,
    as lightly's are.
    """

    bank: Tensor
    bank_ptr: Tensor

    def __init__(self, size: tuple[int, ...], gather_distributed: bool) -> None:
        super().__init__()
        self.size = size
        self.gather_distributed = gather_distributed
        self._ptr = 0  # bank_ptr on the host, so that enqueue needs no device sync
        self.register_buffer("bank", torch.empty(size, dtype=torch.float), persistent=False)
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long), persistent=False)
        if len(size) == 2:
            self.init_bank(size)

    @torch.no_grad()
    def init_bank(self, size: tuple[int, ...]) -> None:
        """K random unit rows, the same draw as lightly: randn on the global CPU generator."""
        self.bank = F.normalize(torch.randn(size).type_as(self.bank), dim=-1)
        self._ptr = 0
        self.bank_ptr.zero_()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (every rank's under ``gather_distributed``) at the pointer."""
        if self.gather_distributed and world_size() > 1:
            keys = all_gather_no_grad(keys)
        k, n = self.size[0], keys.shape[0]
        if self._ptr + n >= k:
            self.bank[self._ptr :] = keys[: k - self._ptr]
            self._ptr = 0
        else:
            self.bank[self._ptr : self._ptr + n] = keys
            self._ptr += n
        self.bank_ptr.fill_(self._ptr)


class NTXentLoss(nn.Module):
    """lightly's ``NTXentLoss``, fused (see the module docstring for what is reproduced).

    Args:
        temperature: τ > 0 (default 0.5).
        memory_bank_size: 0 (SimCLR), K, or ``(K, dim)`` (MoCo-style bank of K past ``out1``).
        gather_distributed: gather every rank's rows as keys (no bank), or every rank's ``out1``
            into the bank (with a bank).
        backend / check_finite: as in :class:`fastclr.NTXentLoss` (keyword-only).

    Attributes:
        memory_bank: lightly's bank state (``.bank`` (K, dim), ``.bank_ptr``, ``.size``).

    Shape: out0, out1 (N, D); output a scalar in lightly's dtype (float32 under autocast, the
    inputs' dtype otherwise).

    Example:
        >>> loss_fn = NTXentLoss(temperature=0.2, memory_bank_size=(4096, 128))
        >>> loss = loss_fn(torch.randn(32, 128, requires_grad=True), torch.randn(32, 128))
    """

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
        self.temperature = check_temperature(temperature)
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
        self.memory_bank = MemoryBank(size, gather_distributed)

    @property
    def bank(self) -> Tensor:
        """The memory bank's rows, ``memory_bank.bank`` (K, dim)."""
        return self.memory_bank.bank

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        out0 = check_rows("out0", out0)
        out1 = check_rows("out1", out1)
        if out0.shape != out1.shape:
            raise ValueError(
                f"out0 and out1 must have the same shape, got {tuple(out0.shape)} and "
                f"{tuple(out1.shape)}"
            )
        if self.check_finite and not torch.compiler.is_compiling():
            require_finite(out0)
            require_finite(out1)
        out_dtype = peer_dtype("lightly", out0)
        name = resolve_backend(self.backend, out0.device, out0.dtype)
        if self.size[0] == 0:
            with full_precision(out0):
                return self._simclr(out0, out1, name).to(out_dtype)
        if self.memory_bank.bank.dim() == 1:
            self.memory_bank.init_bank((self.size[0], out0.shape[1]))
        if self.bank.shape[1] != out0.shape[1]:
            raise ValueError(
                f"out0 has {out0.shape[1]} features but the memory bank holds "
                f"{self.bank.shape[1]}-dim keys (memory_bank_size={self.size})"
            )
        # a copy read before the update (the kernels' backward needs the keys it saw)
        bank = self.bank.detach().clone()
        if out0.requires_grad:
            # lightly's own normalisation of out1, in its dtype and under the caller's autocast,
            # so that the stored rows are rounded as lightly's are
            self.memory_bank.enqueue(F.normalize(out1.detach(), dim=1))
        with full_precision(out0):
            return self._banked(out0, out1, bank, name).to(out_dtype)

    def _simclr(self, out0: Tensor, out1: Tensor, name: str) -> Tensor:
        """NT-Xent over the 2N rows (every rank's rows as keys under gather_distributed)."""
        z, labels = views_to_batch([out0, out1])
        distributed = self.gather_distributed and world_size() > 1
        rows = fused_rows(
            z, labels, self.temperature, name, _LIGHTLY_EPS, from_views=2, distributed=distributed
        )
        pos_mean, _ = positive_mean(rows, self.temperature)
        return (rows.lse.to(pos_mean.dtype) - pos_mean).mean()

    def _banked(self, out0: Tensor, out1: Tensor, bank: Tensor, name: str) -> Tensor:
        """The MoCo form: each out0 row against its out1 row and the K rows of ``bank``."""
        work = torch.float64 if out0.dtype == torch.float64 else torch.float32
        kdtype = out0.dtype if out0.dtype in (torch.float16, torch.bfloat16) else work
        q = l2_normalize(out0.to(work), _LIGHTLY_EPS)
        p = l2_normalize(out1.to(work), _LIGHTLY_EPS)
        keys = bank.to(device=q.device, dtype=work)
        s_pos = (q * p).sum(dim=1) / self.temperature
        bank_lse = lse_all_keys(q, keys, self.temperature, name, kdtype)
        # −log softmax of the positive among [positive, bank] = softplus(bank LSE − positive)
        return F.softplus(bank_lse - s_pos).mean()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, memory_bank_size={self.size}, "
            f"gather_distributed={self.gather_distributed}, backend={self.backend!r}"
        )
