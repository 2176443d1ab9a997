"""The public spatially varying blur operator and the one place that picks a backend."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Optional

import torch

from .apertures import Aperture
from .validation import LensBlurError, check_choice, check_image, check_map, check_same_geometry

__all__ = ["defocus", "METHODS", "BACKENDS", "resolve_backend", "available_backends"]

METHODS = ("gather", "scatter")
BACKENDS = ("auto", "triton", "native", "torch")

# Backend modules expose ``is_available(device) -> bool`` and
# ``defocus(image, coc, aperture, method) -> Tensor`` (differentiable w.r.t. image and coc).
_MODULES = {
    "torch": "lensblur.ops.reference",
    "native": "lensblur.ops.native",
    "triton": "lensblur.ops.triton_blur",
}


def _module(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:
        return None


def _available(name: str, device: torch.device) -> bool:
    mod = _module(name)
    return mod is not None and bool(mod.is_available(device))


def available_backends(device="cpu") -> tuple:
    """The backends that can run on ``device`` (besides ``"auto"``)."""
    device = torch.device(device)
    return tuple(b for b in ("triton", "native", "torch") if _available(b, device))


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (possibly ``"auto"``) to a concrete backend name for ``device``.

    ``"auto"`` picks Triton for CUDA tensors, the native C++ kernels for CPU tensors, and the
    PyTorch reference when neither is available.
    """
    check_choice(backend, "backend", BACKENDS)
    device = torch.device(device)
    if backend == "auto":
        preferred = "triton" if device.type == "cuda" else "native" if device.type == "cpu" else None
        if preferred is not None and _available(preferred, device):
            return preferred
        return "torch"
    if not _available(backend, device):
        raise LensBlurError(f"`backend` {backend!r} is not available for {device.type} tensors here; "
                            f"available: {', '.join(available_backends(device))}")
    return backend


def defocus(image: torch.Tensor, coc: torch.Tensor, aperture: Optional[Aperture] = None,
            method: str = "gather", backend: str = "auto") -> torch.Tensor:
    r"""Spatially varying blur of ``image`` by a per-pixel circle-of-confusion field.

    * ``"gather"``: each output pixel averages the pixels inside its **own** aperture footprint,
      :math:`out(p) = \sum_q A_{c(p)}(q - p) I(q) / \sum_q A_{c(p)}(q - p)`.
    * ``"scatter"``: each source pixel spreads its energy over **its** footprint,
      :math:`out(p) = \sum_q A_{c(q)}(p - q) I(q) / \sum_q A_{c(q)}(p - q)`, with each
      :math:`A_{c(q)}` normalised to unit mass.

    Both preserve a constant image for any coc field, leave pixels with coc < 1 px unchanged
    where their neighbours are in focus too, treat pixels outside the frame as absent (the
    normalisation only counts pixels inside it), and are differentiable w.r.t. ``image`` and
    ``coc``.  See :mod:`lensblur.apertures` for the weights and :mod:`lensblur.ops.reference`
    for the exact forward and backward formulas.

    Args:
        image: ``(B, C, H, W)`` float tensor (linear radiance).
        coc: ``(B, 1, H, W)`` circle-of-confusion **diameter** in pixels, >= 0.
        aperture: an :class:`~lensblur.Aperture` (``None`` = disk).  If its shape tensors
            require grad (a learnable aperture, :mod:`lensblur.learnable`), the call runs on the
            PyTorch reference differentiated by autograd, whatever ``backend`` says (with one
            warning per backend), so that the aperture receives its gradient.
        method: ``"gather"`` or ``"scatter"``.
        backend: ``"auto"``, ``"triton"``, ``"native"`` or ``"torch"`` (the reference).

    Returns:
        ``(B, C, H, W)`` tensor of ``image``'s dtype.

    Example:
        >>> img = torch.rand(1, 3, 16, 16)
        >>> out = defocus(img, torch.full((1, 1, 16, 16), 5.0), backend="torch")
        >>> out.shape
        torch.Size([1, 3, 16, 16])
    """
    check_image(image, "image")
    check_map(coc, "coc", nonnegative=True)
    check_same_geometry(image, coc, "coc")
    check_choice(method, "method", METHODS)
    if aperture is None:
        aperture = Aperture.disk()
    elif not isinstance(aperture, Aperture):
        raise TypeError(f"`aperture` must be a lensblur.Aperture or None, got {type(aperture).__name__}")
    name = _resolve_for(backend, image.device.type, image.device.index)
    if aperture.requires_grad and torch.is_grad_enabled():
        # Gradients w.r.t. the aperture's own tensors come from the reference, differentiated by
        # autograd (chunked and checkpointed); the compiled kernels take the shape as constants.
        if name != "torch":
            _warn_aperture_fallback(name)
        from .ops.reference import defocus_autograd
        return defocus_autograd(image, coc, aperture, method)
    return _module_for(name).defocus(image, coc, aperture, method)


@torch.compiler.assume_constant_result
def _resolve_for(backend: str, device_type: str, device_index) -> str:
    """:func:`resolve_backend`, a constant for ``torch.compile`` (it imports, may build); also
    loads the backend's module for :func:`_module_for`."""
    name = resolve_backend(backend, torch.device(device_type, device_index))
    _LOADED.setdefault(name, _module(name))
    return name


_LOADED = {}


def _module_for(name: str) -> ModuleType:
    """The module of a backend name resolved by :func:`_resolve_for` (no import while tracing)."""
    return _LOADED[name]


_WARNED_APERTURE_FALLBACK = set()


def _warn_aperture_fallback(name: str) -> None:
    if name not in _WARNED_APERTURE_FALLBACK:
        _WARNED_APERTURE_FALLBACK.add(name)
        warnings.warn(f"the {name!r} backend has no kernels for gradients w.r.t. the aperture "
                      "shape; blurs with a learnable aperture run on the PyTorch reference "
                      "(backend='torch') instead", RuntimeWarning, stacklevel=3)
