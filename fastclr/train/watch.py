"""The run watches itself: a warning in the log when the loss or the kNN monitor stops improving.

:class:`PlateauWatcher` is fed one ``(epoch, loss, knn)`` per epoch. After warm-up, when the
epoch loss has not fallen below its best by more than :data:`LOSS_MIN_DELTA` (relative), or the
kNN top-1 has not risen above its best by more than :data:`KNN_MIN_DELTA`, for ``patience``
epochs (:func:`patience_for`: 5 epochs, or a tenth of a longer run), it returns a warning naming
the stalled signal, how long it has been flat, and the likely cause it can tell from the run's
settings (a learning rate far from the rule's, a loss still at chance, kNN flat while the loss
falls). The run goes on; the same signal is reported again only after another ``patience``
epochs without improvement. Epochs at the very end of the cosine schedule are not reported (the
learning rate is near zero there by design).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["KNN_MIN_DELTA", "LOSS_MIN_DELTA", "PlateauWatcher", "patience_for"]

LOSS_MIN_DELTA = 0.005  # relative fall of the epoch loss that counts as progress (0.5%)
KNN_MIN_DELTA = 0.005  # absolute rise of kNN top-1 that counts as progress (0.5 points)
MIN_PATIENCE = 5
PATIENCE_FRACTION = 0.1
LR_FAR = 4.0  # a learning rate this many times off the rule's is "far" from it
TAIL_FRACTION = 0.1  # the last 10% of the run: the cosine schedule's lr is near zero anyway


def patience_for(epochs: int) -> int:
    """Epochs without improvement before a warning: 5, or a tenth of a run of over 50 epochs."""
    return max(MIN_PATIENCE, round(PATIENCE_FRACTION * epochs))


@dataclass
class _Signal:
    best: float = math.nan
    best_epoch: int = -1
    last_warned: int = -1


@dataclass
class PlateauWatcher:
    """Per-epoch plateau detection (see the module docstring).

    Args:
        epochs: the run's length (the patience and the schedule's tail come from it).
        warmup_epochs: epochs of warm-up; nothing is judged before they end.
        lr: the run's peak learning rate; ``rule_lr`` the recipe's for this batch and length.
        chance_loss: NT-Xent at chance, ``log(2N − 1)``.
    """

    epochs: int
    warmup_epochs: float
    lr: float
    rule_lr: float
    chance_loss: float
    patience: int = 0
    loss: _Signal = field(default_factory=_Signal)
    knn: _Signal = field(default_factory=_Signal)

    def __post_init__(self) -> None:
        if self.patience < 1:
            self.patience = patience_for(self.epochs)

    def _improved(self, sig: _Signal, value: float, epoch: int, better: bool) -> None:
        if math.isnan(sig.best) or better:
            sig.best, sig.best_epoch = value, epoch

    def update(self, epoch: int, loss: float, knn: float | None) -> list[str]:
        """Feed epoch ``epoch`` (0-based); returns the warnings to log (usually none)."""
        out: list[str] = []
        loss_ok = math.isfinite(loss)
        if loss_ok:
            best = self.loss.best
            self._improved(self.loss, loss, epoch, loss < best * (1 - LOSS_MIN_DELTA))
        if knn is not None and math.isfinite(knn):
            self._improved(self.knn, knn, epoch, knn > self.knn.best + KNN_MIN_DELTA)
        judged_from = math.ceil(self.warmup_epochs)
        if epoch + 1 <= judged_from or epoch + 1 > self.epochs * (1 - TAIL_FRACTION):
            return out
        loss_flat = self._flat(self.loss, epoch, judged_from)
        knn_flat = self._flat(self.knn, epoch, judged_from)
        if loss_flat:
            out.append(self._message("loss", self.loss, epoch, loss, knn_flat=False))
        if knn_flat:
            out.append(self._message("kNN", self.knn, epoch, loss, knn_flat=True))
        return out

    def _flat(self, sig: _Signal, epoch: int, judged_from: int) -> bool:
        if sig.best_epoch < 0:
            return False
        since = max(sig.best_epoch, judged_from - 1, sig.last_warned)
        if epoch - since >= self.patience:
            sig.last_warned = epoch
            return True
        return False

    def _message(self, what: str, sig: _Signal, epoch: int, loss: float, knn_flat: bool) -> str:
        best = f"{sig.best:.4f}" if what == "loss" else f"{sig.best:.2%}"
        head = (
            f"watch: epoch {epoch + 1}: the {what} has not improved for {epoch - sig.best_epoch} "
            f"epochs (best {best} at epoch {sig.best_epoch + 1}); the run goes on. "
        )
        loss_falling = epoch - self.loss.best_epoch < self.patience
        return head + "Likely cause: " + self._cause(loss, knn_flat and loss_falling)

    def _cause(self, loss: float, knn_flat_loss_falling: bool) -> str:
        if self.lr < self.rule_lr / LR_FAR:
            return (
                f"the learning rate {self.lr:.3g} is far below the rule's {self.rule_lr:.3g} "
                "(the weights barely move); try --lr unset or closer to it."
            )
        if self.lr > self.rule_lr * LR_FAR:
            return (
                f"the learning rate {self.lr:.3g} is far above the rule's {self.rule_lr:.3g} "
                "(steps overshoot); try a lower --lr."
            )
        if math.isfinite(loss) and loss > 0.97 * self.chance_loss:
            return (
                f"the loss {loss:.3f} is still near chance log(2N - 1) = {self.chance_loss:.3f}: "
                "the two views share too little (augmentation too strong for these images?)."
            )
        if knn_flat_loss_falling:
            return (
                "the loss still falls but kNN does not follow. Early on this is usual: kNN "
                "first dips below the random encoder's and recovers only after a few hundred "
                "steps (bench/results/quality.md), so a short run may need more epochs or a "
                "smaller --batch-size (more steps). Later, the views may be matched without "
                "the class (crops too large, colour as a shortcut)."
            )
        return (
            "the run may have converged for this model and data, or the learning rate (within "
            f"{LR_FAR:g}x of the rule's) may still be off for them."
        )
