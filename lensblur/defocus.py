"""The public spatially varying blur operator and the one place that picks a backend."""

from __future__ import annotations

import importlib
import math
import warnings
from types import ModuleType
from typing import Optional

import torch

from .apertures import Aperture
from .validation import LensBlurError, check_choice, check_image, check_map, check_same_geometry

__all__ = ["defocus", "METHODS", "BACKENDS", "resolve_backend", "available_backends",
           "coc_limit_px", "MAX_CATSEYE_LIMIT"]

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
        mod = _module(backend)
        reason = getattr(mod, "unavailable_reason", lambda: None)() if mod is not None else None
        why = f" ({reason})" if reason else ""
        raise LensBlurError(f"`backend` {backend!r} is not available for {device.type} tensors "
                            f"here{why}; available: {', '.join(available_backends(device))}")
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

    **Blurs larger than the frame.**  Cost and memory are bounded by the frame whatever the coc
    (a coc of ``1e30`` px costs what a coc of the frame's size costs): cocs are clamped to
    :func:`coc_limit_px`, the diameter from which a disk or polygon footprint covers the whole
    frame at full weight from every pixel.  For the gather this is exact (values and gradients:
    every larger coc gives the same weights inside the frame).  For the scatter each source's
    footprint inside the frame is also the same, but its mass :math:`Z(c)` keeps growing, so a
    source beyond the limit gets the relative weight :math:`Z(c_{lim}) / Z(c)` with
    :math:`Z(c) \propto (c/2)^2 + 1/12` (the area under the anti-aliased rim; within about
    1e-3 of the discrete sum for limits of 20 px and more), restored by blurring one extra
    channel; gradients w.r.t. the coc flow through that weight.  Under ``torch.compile`` the
    scatter only clamps.  Approximations: with strong cat's-eye vignetting beyond
    :data:`MAX_CATSEYE_LIMIT` times the limit, and with image apertures (whose kernel is
    stretched, so a larger coc shows a smaller part of it inside the frame), the kernel beyond
    the limit is that at the limit.

    **Safe ranges.**  Any finite coc >= 0; image values with ``|x| <= 1e30`` (``1e290`` for
    float64 images), so that no sum overflows; larger values raise :class:`LensBlurError`.

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
    _check_magnitude(image)
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
        return _bounded(defocus_autograd, image, coc, aperture, method)
    return _bounded(_module_for(name).defocus, image, coc, aperture, method)


@torch.compiler.assume_constant_result
def _resolve_for(backend: str, device_type: str, device_index) -> str:
    """:func:`resolve_backend`, a constant for ``torch.compile`` (it imports, may build); also
    loads the backend's module for :func:`_module_for`."""
    name = resolve_backend(backend, torch.device(device_type, device_index))
    _LOADED.setdefault(name, _module(name))
    return name


_LOADED = {}

# ----------------------------------------------------------------------------- blur bounded by the frame

#: With cat's-eye vignetting the coc limit is at most this many times the limit without it (the
#: exact limit grows like ``1 / (1 - cats_eye)``); beyond it the cat's-eye cut is approximated.
MAX_CATSEYE_LIMIT = 4.0
#: In the scatter reweighting, cocs above this many times the limit count as this (their weight
#: relative to a coc at the limit, ``< 1e-30``, is negligible in float32 anyway).
_MAX_REWEIGHT = 1e15


def coc_limit_px(aperture: Aperture, height: int, width: int) -> float:
    r"""The coc diameter (pixels) beyond which a larger blur changes nothing inside the frame.

    For disk and polygon apertures the weight :math:`W(d; c)` is 1 for every offset ``d`` that
    joins two pixels of an ``height x width`` frame as soon as :math:`c/2 + 1/2 - n(e) \ge 1` for
    the largest shape norm :math:`n` over those offsets (a norm is convex: its largest value on
    the rectangle of offsets is at a corner).  From that diameter on, the gather is exactly the
    same for every larger coc, and so is each scatter source's footprint (only its mass
    :math:`Z` keeps growing, see :func:`defocus`).  With cat's-eye vignetting the cut disk also
    has to cover the frame, which needs :math:`R (1 - \kappa |v|_{max}) \ge |e|_{max} + 1/2`;
    that limit is capped at :data:`MAX_CATSEYE_LIMIT` times the limit without it.  Image
    apertures use the limit of the disk (their kernel then spans the whole frame).
    """
    ex, ey = aperture.squeeze * max(width - 1, 0), float(max(height - 1, 0))
    e_max = math.hypot(ex, ey)
    if aperture.kind == "polygon":
        with torch.no_grad():
            xs = torch.tensor([ex, ex, -ex, -ex], dtype=torch.float64)
            ys = torch.tensor([ey, -ey, ey, -ey], dtype=torch.float64)
            n_max = float(aperture.shape_norm(xs, ys).max())
    else:
        n_max = e_max
    limit = 2.0 * n_max + 2.0              # R = n_max + 1: half a pixel of margin for rounding
    if aperture.cats_eye > 0:
        v_max = math.hypot(width - 1, height - 1) / math.hypot(width, height)
        exact = 2.0 * (e_max + 1.0) / (1.0 - aperture.cats_eye * v_max)
        limit = max(limit, min(exact, MAX_CATSEYE_LIMIT * limit))
    return limit


#: Largest ``|image|`` value per accumulation dtype: every blur sums at most ``H W`` taps (the coc
#: is bounded by the frame), so sums of up to ~3e8 such values stay finite in float32.
MAX_ABS_VALUE = {torch.float64: 1e290, torch.float32: 1e30}


def _check_magnitude(image: torch.Tensor) -> None:
    if torch.compiler.is_compiling():
        return
    bound = MAX_ABS_VALUE[torch.float64 if image.dtype == torch.float64 else torch.float32]
    peak = float(image.detach().abs().max())
    if peak > bound:
        raise LensBlurError(f"`image` holds values up to {peak:.3g}; the blur accumulates in "
                            f"{'float64' if image.dtype == torch.float64 else 'float32'} and takes "
                            f"|values| <= {bound:g}")


def _bounded(blur, image: torch.Tensor, coc: torch.Tensor, aperture: Aperture, method: str
             ) -> torch.Tensor:
    """``blur(image, coc, aperture, method)`` with the coc clamped to :func:`coc_limit_px`, so
    that cost and memory are bounded by the frame whatever the coc (see :func:`defocus`)."""
    limit = coc_limit_px(aperture, image.shape[-2], image.shape[-1])
    if method == "gather" or torch.compiler.is_compiling():
        # the clamp changes nothing in the gather; under torch.compile the scatter only clamps
        return blur(image, coc.clamp(max=limit), aperture, method)
    if not bool((coc.detach() > limit).any()):
        return blur(image, coc, aperture, method)
    # scatter: a source beyond the limit reaches every pixel of the frame with the weight of the
    # limit, but its mass Z(c) ~ (R^2 + 1/12) keeps growing; its relative weight
    # m = Z(limit) / Z(c) is restored by blurring [m I, m] and dividing (the backends normalise
    # each output pixel, so a per-source factor enters as an extra channel)
    work = torch.promote_types(image.dtype, torch.float32)
    c = coc.to(work)

    def mass(x):  # Z(c) up to a factor that cancels: image tables stretch over R + 1/2
        r = 0.5 * x
        return (r + 0.5) ** 2 if aperture.kind == "image" else r * r + 1.0 / 12.0

    m = torch.where(c > limit, mass(torch.tensor(limit, dtype=work, device=c.device))
                    / mass(c.clamp(max=limit * _MAX_REWEIGHT)), torch.ones_like(c))
    C = image.shape[1]
    y = blur(torch.cat([image.to(work) * m, m], 1), c.clamp(max=limit), aperture, method)
    return (y[:, :C] / y[:, C:]).to(image.dtype)


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
