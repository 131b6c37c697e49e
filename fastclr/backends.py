"""One registry of implementations for every op that has several backends (loss, augmentation).

Each op builds a :class:`Registry` of :class:`Impl` entries, best first. An entry declares its
name, the device types and input dtypes ``backend="auto"`` may send it, whether it needs a dense
(not ragged) batch, and how to load it; loading raises when the backend is unavailable in this
process (a missing native library, triton not installed), and ``requires`` / ``hint`` name what is
missing and how to get it.

The resolution rule, the same for every op:

- an explicit name is validated and returned as is (loading it later raises, with the hint, when
  it is unavailable: asking for a backend by name never silently gives another one);
- ``"auto"`` takes the first entry, in registration order, that is eligible for auto, serves the
  device type, dtype and layout of the call, and loads. Skipping an entry that would have served
  the call but failed to load is a fallback, announced by :func:`fallback_warning`.

The fallback warning is shown once per missing requirement per process, whichever op meets it
first: the loss and the augmentation share the native library, so its absence is reported once.

Everything else code needs to know about a backend is a declared property of its entry, asked
through the registry (:meth:`Registry.info`, :meth:`Registry.runs_on`, :meth:`Registry.require`),
so no module outside this one compares backend names: where it runs when named explicitly
(``devices``, and Triton on the CPU under ``TRITON_INTERPRET=1``), whether it computes in its
inputs' own precision (``exact``: the reference keeps float64), and whether it draws its own
random parameters (``draws_own_params``: kornia), and whether a loader's workers can finish the
views with it (``worker_views``: the native kernel), and whether the loss has a whole-loss op
that takes the views as they are (``fused_views``: Triton).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from fastclr import _native
from fastclr.errors import UsageError

__all__ = ["TRITON_HINT", "Impl", "Registry", "fallback_warning", "native_impl", "triton_impl"]

T = TypeVar("T")

#: How to get the Triton backends (the native library's hint is ``fastclr._native.NATIVE_HINT``).
TRITON_HINT = "Install triton (`pip install triton`; Linux) for the CUDA kernels."

#: Requirements whose absence has already been announced in this process.
_announced: set[str] = set()


def fallback_warning(
    requires: str, reason: str, op: str, device: str, chosen: str, hint: str
) -> None:
    """Warn (once per ``requires``) that an unavailable backend made ``op`` fall back."""
    if requires in _announced:
        return
    _announced.add(requires)
    warnings.warn(
        f"fastclr: {requires} is unavailable ({reason}), so {op} on {device} falls back to "
        f"backend={chosen!r}, which is slower; other ops that need it fall back too (this is "
        f"said once). {hint}",
        RuntimeWarning,
        stacklevel=4,
    )


@dataclass(frozen=True)
class Impl(Generic[T]):
    """One backend of an op.

    Attributes:
        name: the ``backend=`` string users pass.
        load: returns the implementation (what the op calls); raises ``ImportError`` or
            ``RuntimeError`` when it cannot run in this process.
        devices: torch device types ``"auto"`` may send it; empty: any.
        dtypes: input dtypes ``"auto"`` may send it; empty: any.
        dense_only: ``"auto"`` sends it dense batches only (not ragged lists).
        auto: whether ``"auto"`` may pick it at all.
        priority: ``"auto"`` tries higher priorities first (ties: registration order).
        requires: what it needs, in words (the fallback warning's subject).
        hint: how to get what it needs.
        interpreted: runs on the CPU too under Triton's interpreter (``TRITON_INTERPRET=1``).
        exact: computes in its inputs' own precision (float64 stays float64): the definition.
        draws_own_params: draws its own random parameters (no explicit-parameter ``apply``).
        worker_views: has a pass a data loader's worker processes can run to finish the views
            from the decoded images (crop, resize and augmentation; the native kernel).
        fused_views: has a whole-loss op for V >= 2 equal views that takes them as they are
            (no concatenated batch; Triton's ``fastclr.ops.triton_fused``).
    """

    name: str
    load: Callable[[], T]
    devices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = ()
    dense_only: bool = False
    auto: bool = True
    priority: int = 0
    requires: str = ""
    hint: str = ""
    interpreted: bool = False
    exact: bool = False
    draws_own_params: bool = False
    worker_views: bool = False
    fused_views: bool = False

    def runs_on(self, device: str) -> bool:
        """Whether the backend can run on a ``device`` type here when named explicitly."""
        if not self.devices or device in self.devices:
            return True
        return self.interpreted and device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"

    def serves(self, device: str, dtype: torch.dtype | None, dense: bool) -> bool:
        """Whether ``"auto"`` may send a call on ``device`` with ``dtype`` and layout here."""
        return (
            self.auto
            and (not self.devices or device in self.devices)
            and (not self.dtypes or dtype is None or dtype in self.dtypes)
            and (dense or not self.dense_only)
        )


class Registry(Generic[T]):
    """The backends of one op, best first, and the one rule that picks among them.

    Args:
        op: the op in words, for messages (e.g. ``"the NT-Xent loss"``).
        impls: the entries, in the order messages list them. ``"auto"`` tries them by
            ``priority``; the one it tries last must serve every call (a fallback that is always
            available).
    """

    def __init__(self, op: str, impls: Sequence[Impl[T]]) -> None:
        self.op = op
        self._impls = {impl.name: impl for impl in impls}
        self._auto_order = sorted(impls, key=lambda impl: -impl.priority)  # stable
        self._loaded: dict[str, T] = {}
        self._errors: dict[str, str] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Every accepted ``backend=`` value, ``"auto"`` first."""
        return ("auto", *self._impls)

    def check_name(self, name: object) -> str:
        """``name`` if it is a known backend, else one ValueError that lists the choices."""
        if not isinstance(name, str) or (name != "auto" and name not in self._impls):
            raise ValueError(f"backend must be one of {self.names}, got {name!r}")
        return name

    def _try_load(self, name: str) -> bool:
        if name in self._loaded:
            return True
        if name in self._errors:
            return False
        try:
            self._loaded[name] = self._impls[name].load()
        except (ImportError, RuntimeError) as exc:
            self._errors[name] = str(exc) or type(exc).__name__
            return False
        return True

    def is_available(self, name: str) -> bool:
        """Whether backend ``name`` loads in this process (the result is cached)."""
        return self._try_load(self.check_name(name))

    def available(self) -> list[str]:
        """Names of the backends that load in this process, in registration order."""
        return [name for name in self._impls if self._try_load(name)]

    def resolve(
        self,
        name: str,
        device: torch.device,
        dtype: torch.dtype | None = None,
        dense: bool = True,
    ) -> str:
        """The concrete backend for a call on ``device`` with ``dtype`` (module docstring rule)."""
        if self.check_name(name) != "auto":
            return name
        skipped: Impl[T] | None = None
        for impl in self._auto_order:
            if not impl.serves(device.type, dtype, dense):
                continue
            if self._try_load(impl.name):
                if skipped is not None:
                    fallback_warning(
                        skipped.requires or f"backend={skipped.name!r}",
                        self._errors[skipped.name],
                        self.op,
                        device.type,
                        impl.name,
                        skipped.hint,
                    )
                return impl.name
            skipped = skipped or impl
        raise RuntimeError(f"no backend of {self.op} serves {device.type} {dtype}")

    def info(self, name: str) -> Impl[T]:
        """The declared entry of backend ``name`` (not ``"auto"``: resolve it first)."""
        if self.check_name(name) == "auto":
            raise ValueError("resolve backend='auto' to a concrete backend first")
        return self._impls[name]

    def runs_on(self, name: str, device: str) -> bool:
        """Whether ``name`` can run on ``device`` in this process (``"auto"`` always can)."""
        return self.check_name(name) == "auto" or self._impls[name].runs_on(device)

    def require(self, name: str, device: torch.device, flag: str) -> None:
        """Refuse, with one :class:`~fastclr.errors.UsageError` naming ``flag``, a backend that
        cannot run on ``device`` in this process: the wrong device, or not loadable here."""
        if self.check_name(name) == "auto":
            return
        impl = self._impls[name]
        if not impl.runs_on(device.type):
            where = " or ".join("CUDA devices" if d == "cuda" else "the CPU" for d in impl.devices)
            raise UsageError(
                f"{flag} {name} runs on {where}, and the run is on {device}; use {flag} auto"
            )
        if not self._try_load(name):
            hint = f"; {impl.hint}" if impl.hint else ""
            raise UsageError(
                f"{flag} {name} is not available in this process ({self._errors[name]}){hint}"
            )

    def get(self, name: str) -> T:
        """The implementation of backend ``name``; RuntimeError naming the fix if unavailable."""
        if name == "auto":
            raise ValueError("resolve backend='auto' to a concrete backend first")
        if not self._try_load(self.check_name(name)):
            impl = self._impls[name]
            raise RuntimeError(
                f"backend={name!r} is not available in this process ({self._errors[name]})"
                + (f": {impl.hint}" if impl.hint else "")
            )
        return self._loaded[name]


def native_impl(load: Callable[[], T], **kw: Any) -> Impl[T]:
    """The ``"native"`` entry of an op: CPU tensors, the native library, preferred over plain torch.

    ``load`` returns the op's implementation; it runs only once the library has loaded. ``kw``
    adds the op's own restrictions (``dtypes``, ``dense_only``).
    """

    def checked() -> T:
        _native.check()
        return load()

    return Impl(
        "native",
        checked,
        devices=("cpu",),
        priority=1,
        requires=_native.NATIVE_LIBRARY,
        hint=_native.NATIVE_HINT,
        **kw,
    )


def triton_impl(load: Callable[[], T], **kw: Any) -> Impl[T]:
    """The ``"triton"`` entry of an op: CUDA tensors through Triton, preferred over everything."""
    return Impl(
        "triton",
        load,
        devices=("cuda",),
        priority=2,
        requires="triton",
        hint=TRITON_HINT,
        interpreted=True,
        **kw,
    )
