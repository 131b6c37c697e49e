"""SimCLR augmentations on uint8 image tensors: one parameter draw, several backends.

``SimCLRAugmentation`` is the public entry point::

    aug = SimCLRAugmentation(AugmentConfig.imagenet(224), seed=0)
    v1, v2 = aug(images)                 # two independent views, (N, 3, S, S) channels_last
    p1, p2 = aug.sample(n, src_sizes)    # or draw the parameters explicitly …
    v1 = aug.apply(images, p1)           # … and apply them (any backend, same maths)

Backends (``backend=``):

- ``"reference"``: :func:`~fastclr.augment.reference.apply_reference`, per image in float64, the
  definition every other backend is tested against;
- ``"torch"``: :func:`~fastclr.augment.torch_backend.apply_torch`, batched float32 torch (CPU or
  CUDA), equal to the reference within :data:`fastclr.testing.AUGMENT_ATOL` (1e-3 normalised,
  added to twice the reference's own rounding error in the output dtype). On CPU it runs its
  ops single-threaded over cache-sized chunks, one Python worker per configured intra-op thread,
  setting ``torch.set_num_threads(1)`` for the duration of the call;
- ``"native"``: :func:`~fastclr.augment.native_backend.apply_native`, one fused C++ pass per
  image and view (``kernels/cpu/augment.cpp``) on a dense CPU batch, images in parallel;
- ``"triton"``: the fused CUDA kernel in ``fastclr.augment.triton_backend`` (imported lazily). That
  module provides ``apply_triton(images, params, config) -> Tensor`` with the contract of
  ``apply_reference``;
- ``"kornia"``: :class:`~fastclr.augment.kornia.KorniaAugmentation`, a baseline that draws its own
  parameters (``apply``/``sample`` are not available for it);
- ``"dali"``: :func:`fastclr.augment.dali.apply_dali` (DALI imported lazily; needs the ``dali``
  extra), DALI's operators on image tensors. Reading and decoding files with DALI is a loader:
  :mod:`fastclr.data.dali`;
- ``"auto"``: ``"triton"`` for CUDA images when the Triton backend imports; ``"native"`` for a
  dense CPU batch when the native library is built; else ``"torch"`` (the rule and its one
  fallback warning are :mod:`fastclr.backends`'s, shared with the loss).

Throughput next to kornia and DALI: ``python bench/throughput.py --only augment``.

Images: a dense uint8 (N, H, W, C) tensor or a sequence of uint8 (H, W, C) tensors (ragged), C ∈
{1, 3, 4} (gray repeated, alpha dropped; see :mod:`fastclr.augment.inputs`). A shape that could be
channels-first as well (height 1, 3 or 4) is refused unless ``layout`` says which it is.

Explicit parameters: every ``apply`` entry point (``SimCLRAugmentation.apply`` and each backend's
``apply_*``) checks them by one rule, :meth:`AugmentParams.validate` (:data:`PARAM_RULES`): crop
boxes inside their source, orders that are permutations of 0..3, factors in range. The native
kernel also refuses, by itself, any crop box or order that would make it read outside its input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from fastclr.augment.inputs import (
    LAYOUTS,
    ApplyView,
    Images,
    check_apply_args,
    check_images,
    images_device,
    src_sizes_of,
)
from fastclr.augment.params import (
    JITTER_OPS,
    PARAM_RULES,
    AugmentConfig,
    AugmentParams,
    sample_params,
)
from fastclr.augment.reference import apply_reference
from fastclr.augment.torch_backend import apply_torch
from fastclr.backends import Impl, Registry, native_impl, triton_impl

__all__ = [
    "BACKENDS",
    "JITTER_OPS",
    "LAYOUTS",
    "PARAM_RULES",
    "AugmentConfig",
    "AugmentParams",
    "SimCLRAugmentation",
    "apply_reference",
    "apply_torch",
    "kornia_pipeline",
    "sample_params",
]

if TYPE_CHECKING:
    from fastclr.augment.kornia import KorniaAugmentation


def kornia_pipeline(config: AugmentConfig | None = None) -> Callable[[Images], Tensor]:
    """The kornia baseline of ONE view for ``config`` (default ImageNet), e.g. for benchmarks.

    ``kornia_pipeline(cfg)(images)`` takes the same uint8 (N, H, W, C) input as
    ``SimCLRAugmentation`` and returns (N, 3, S, S) channels_last in ``cfg.dtype``.
    """
    from fastclr.augment.kornia import kornia_pipeline as make

    return make(config)


class _ApplyViews(Protocol):
    """Several views of one batch in one pass (``apply_triton_views``'s contract)."""

    def __call__(
        self,
        images: Images,
        views: Sequence[AugmentParams],
        config: AugmentConfig,
        *,
        layout: str | None = None,
        validate: bool = True,
    ) -> list[Tensor]: ...


@dataclass(frozen=True)
class _Backend:
    """What an augmentation backend provides: one view's ``apply`` (None where the backend
    draws its own parameters), and optionally every view of a batch in one pass."""

    apply: ApplyView | None
    apply_views: _ApplyViews | None = None


def _load_native() -> _Backend:
    from fastclr.augment.native_backend import apply_native

    return _Backend(apply_native)


def _load_triton() -> _Backend:
    from fastclr.augment.triton_backend import apply_triton, apply_triton_views

    return _Backend(apply_triton, apply_triton_views)


def _load_dali() -> _Backend:
    from fastclr.augment.dali import apply_dali
    from fastclr.optional import import_dali

    import_dali()  # unavailable without the extra (the error names it)
    return _Backend(apply_dali)


#: The augmentation backends (module docstring). kornia draws its own parameters and so has no
#: ``apply``. "auto": Triton for CUDA images, the native kernel for a dense CPU batch, else torch.
REGISTRY: Registry[_Backend] = Registry(
    "the augmentation",
    [
        Impl("reference", lambda: _Backend(apply_reference), auto=False, exact=True),
        Impl("torch", lambda: _Backend(apply_torch)),
        native_impl(_load_native, dense_only=True, worker_views=True),
        triton_impl(_load_triton),
        Impl("kornia", lambda: _Backend(None), auto=False, draws_own_params=True),
        Impl("dali", _load_dali, auto=False),
    ],
)
BACKENDS = REGISTRY.names


class SimCLRAugmentation:
    """Two independent SimCLR views of a batch of uint8 images (SimCLR paper, Appendix A).

    Args:
        config: an :class:`AugmentConfig` (default ``AugmentConfig.imagenet()``).
        backend: one of :data:`BACKENDS` (module docstring).
        seed: seeds this object's own ``torch.Generator`` (None: a nondeterministic seed).
        device: device of the generator and of the parameters; None: the images' device, chosen
            at the first call.
        layout: None (channels-last; a shape that could be channels-first, height 1, 3 or 4, is
            refused), ``"NHWC"`` or ``"NCHW"`` (converted); see :mod:`fastclr.augment.inputs`.

    Shape:
        images: uint8 (N, H, W, C) or a sequence of uint8 (H, W, C); C ∈ {1, 3, 4}.
        output: two tensors (N, 3, S, S), channels_last, ``config.dtype``.

    Example:
        >>> aug = SimCLRAugmentation(AugmentConfig.cifar(), seed=0)
        >>> v1, v2 = aug(torch.zeros(8, 32, 32, 3, dtype=torch.uint8))
        >>> v1.shape, v1.is_contiguous(memory_format=torch.channels_last)
        (torch.Size([8, 3, 32, 32]), True)
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        backend: str = "auto",
        seed: int | None = None,
        device: torch.device | str | None = None,
        layout: str | None = None,
    ) -> None:
        if config is not None and not isinstance(config, AugmentConfig):
            raise TypeError(f"config must be an AugmentConfig, got {type(config).__name__}")
        REGISTRY.check_name(backend)
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be None or one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.config = config or AugmentConfig.imagenet()
        self.backend = backend
        self._draws_own_params = backend != "auto" and REGISTRY.info(backend).draws_own_params
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._device = torch.device(device) if device is not None else None
        self._kornia: KorniaAugmentation | None = None
        if device is not None:
            self._make_generator(self._device)  # type: ignore[arg-type]

    def _make_generator(self, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        self._generator = g
        self._device = device
        return g

    def generator(self, device: torch.device) -> torch.Generator:
        """This object's generator, created on ``device`` at first use."""
        if self._generator is None:
            return self._make_generator(device)
        return self._generator

    def resolve_backend(self, device: torch.device, ragged: bool = False) -> str:
        """The concrete backend ``"auto"`` stands for on ``device`` (and for a ragged batch)."""
        return REGISTRY.resolve(self.backend, device, dense=not ragged)

    def _apply_fn(self, device: torch.device, ragged: bool = False) -> ApplyView:
        name = self.resolve_backend(device, ragged)
        fn = REGISTRY.get(name).apply
        if fn is None:
            raise ValueError(f"backend={name!r} cannot apply explicit parameters")
        return fn

    def sample(
        self, n: int, src_sizes: Tensor, device: torch.device | str | None = None
    ) -> tuple[AugmentParams, AugmentParams]:
        """Draw the parameters of two independent views of ``n`` images.

        Args:
            n: number of images.
            src_sizes: (n, 2) integer (H, W) of the sources.
            device: where to draw (default: this object's device, else ``src_sizes.device``).
        """
        if self._draws_own_params:
            raise ValueError(
                f"backend={self.backend!r} draws its own parameters; sample() is unavailable"
            )
        dev = torch.device(device) if device is not None else (self._device or src_sizes.device)
        g = self.generator(dev)
        sizes = src_sizes.to(g.device)
        return (
            sample_params(n, sizes, self.config, g),
            sample_params(n, sizes, self.config, g),
        )

    def apply(self, images: Images, params: AugmentParams, *, validate: bool = True) -> Tensor:
        """Apply ONE view's ``params`` with this backend, after the shared parameter check.

        ``validate=False`` skips the check (a host sync) for parameters valid by construction,
        e.g. drawn by :meth:`sample` for these very sources (the streaming loaders' full-image
        crops in :func:`fastclr.train.views.augment_views`).
        """
        imgs, params = check_apply_args(images, params, layout=self.layout, validate=validate)
        fn = self._apply_fn(images_device(imgs), not isinstance(imgs, Tensor))
        return fn(imgs, params, self.config, layout="NHWC", validate=False)

    def __call__(self, images: Images) -> tuple[Tensor, Tensor]:
        """Two independent views ``(v1, v2)`` of ``images``."""
        imgs = check_images(images, self.layout)
        dev = images_device(imgs)
        if self._draws_own_params:
            if self._kornia is None:
                from fastclr.augment.kornia import KorniaAugmentation

                self._kornia = KorniaAugmentation(self.config)
            return self._kornia(imgs, layout="NHWC"), self._kornia(imgs, layout="NHWC")
        n = imgs.shape[0] if isinstance(imgs, Tensor) else len(imgs)
        p1, p2 = self.sample(n, src_sizes_of(imgs))
        ragged = not isinstance(imgs, Tensor)
        # The parameters were just drawn for these sources: valid by construction, no host sync.
        both = REGISTRY.get(self.resolve_backend(dev, ragged)).apply_views
        if both is not None:  # both views in one pass (a ragged batch is packed once)
            v1, v2 = both(imgs, [p1, p2], self.config, layout="NHWC", validate=False)
            return v1, v2
        fn = self._apply_fn(dev, ragged)
        return (
            fn(imgs, p1, self.config, layout="NHWC", validate=False),
            fn(imgs, p2, self.config, layout="NHWC", validate=False),
        )

    def __repr__(self) -> str:
        return (
            f"SimCLRAugmentation(config={self.config!r}, backend={self.backend!r}, "
            f"seed={self.seed!r})"
        )
