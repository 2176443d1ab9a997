r"""Learnable apertures: parametrisations that stay valid apertures under gradient descent.

:func:`lensblur.defocus` and :func:`lensblur.render` propagate gradients to an aperture's own
tensors: the image of :meth:`Aperture.from_image` and the ``rotation_deg`` / ``roundness`` of
:meth:`Aperture.polygon` when they are tensors that require grad.  Such blurs run on the PyTorch
reference differentiated by autograd (in checkpointed chunks, so memory stays ``O(BCHW)``); the
compiled backends take the shape as constants and hand these calls to it with one warning.

An unconstrained tensor is not a valid aperture: it may go negative or vanish.  The modules here
map free parameters to valid ones:

* :class:`LearnableAperture` — a free-form kernel :math:`T = \operatorname{softplus}(\theta)`,
  non-negative by construction; :meth:`Aperture.from_image` scales it to a maximum of one and
  :meth:`Aperture.kernel` normalises every rendered kernel to unit mass, so the overall scale of
  :math:`\theta` never matters.
* :class:`LearnablePolygon` — a ``blades``-sided polygon with a free rotation (degrees) and a
  roundness :math:`\sigma(\rho) \in (0, 1)`.

Calling the module returns the current :class:`~lensblur.Aperture`, to be passed to
:func:`~lensblur.render`, :func:`~lensblur.defocus` or :class:`~lensblur.LensBlur`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .apertures import Aperture
from .optics import ThinLens
from .defocus import BACKENDS
from .render import RENDER_METHODS, render
from .validation import (LensBlurError, check_choice, check_image, check_map, check_positive_float,
                         check_same_geometry)

__all__ = ["LearnableAperture", "LearnablePolygon", "LensFit", "fit_lens"]

_SOFTPLUS_FLOOR = 1e-3   # the smallest kernel value the initial logits represent


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp_min(_SOFTPLUS_FLOOR)
    return x + torch.log(-torch.expm1(-x))


#: Largest side (texels) of a :class:`LearnableAperture` (a million learnable texels).
MAX_APERTURE_SIZE = 1023

class LearnableAperture(nn.Module):
    """A free-form aperture kernel ``softplus(logits)`` of ``size x size`` texels.

    Args:
        size: side of the kernel image in texels, odd and >= 3 (the kernel is centred).
        init: the starting shape: an :class:`~lensblur.Aperture` (rendered at ``size`` pixels,
            default a disk) or a non-negative ``(size, size)`` tensor.
        squeeze, cats_eye: passed on to :meth:`Aperture.from_image`.

    Example:
        >>> learn = LearnableAperture(size=9)
        >>> aperture = learn()                 # a lensblur.Aperture; gradients reach learn.logits
        >>> k = aperture.kernel(7.0)
        >>> bool(k.requires_grad), round(k.sum().item(), 5)
        (True, 1.0)
    """

    def __init__(self, size: int = 15, init: Optional[Union[Aperture, torch.Tensor]] = None, *,
                 squeeze: float = 1.0, cats_eye: float = 0.0) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 3 or size % 2 == 0:
            raise LensBlurError(f"`size` must be an odd integer >= 3, got {size!r}")
        if size > MAX_APERTURE_SIZE:
            raise LensBlurError(f"`size` must be <= {MAX_APERTURE_SIZE} texels, got {size}")
        if init is None:
            init = Aperture.disk()
        if isinstance(init, Aperture):
            start = _render_at(init, int(size))
        elif isinstance(init, torch.Tensor):
            Aperture.from_image(init)            # validates: float, 2-D, finite, non-negative
            if tuple(init.shape) != (size, size):
                raise LensBlurError(f"`init` must have shape ({size}, {size}), got {tuple(init.shape)}")
            start = init.detach().to(torch.float32)
        else:
            raise TypeError(f"`init` must be a lensblur.Aperture, a tensor or None, got {type(init).__name__}")
        start = start / start.max()
        self.logits = nn.Parameter(_inverse_softplus(start))
        self.squeeze = squeeze
        self.cats_eye = cats_eye

    def kernel_image(self) -> torch.Tensor:
        """The non-negative ``(size, size)`` kernel image, scaled to a maximum of one."""
        k = F.softplus(self.logits)
        return k / k.max()

    def forward(self) -> Aperture:
        return Aperture.from_image(self.kernel_image(), squeeze=self.squeeze, cats_eye=self.cats_eye)


class LearnablePolygon(nn.Module):
    """A ``blades``-sided polygon whose rotation and roundness are learned.

    The rotation is a free parameter in radians (``rotation_rad``, so that an optimiser's step
    is comparable to the roundness logit's); roundness is ``sigmoid(roundness_logit)``, always
    strictly between straight edges (0) and a disk (1).  The blade count is discrete and stays
    fixed.

    Example:
        >>> poly = LearnablePolygon(blades=6, rotation_deg=10.0, roundness=0.2)
        >>> ap = poly()
        >>> round(ap.rotation_deg.item(), 3), round(ap.roundness.item(), 3), ap.blades
        (10.0, 0.2, 6)
    """

    def __init__(self, blades: int = 6, rotation_deg: float = 0.0, roundness: float = 0.5, *,
                 squeeze: float = 1.0, cats_eye: float = 0.0) -> None:
        super().__init__()
        Aperture.polygon(blades, rotation_deg, roundness, squeeze=squeeze, cats_eye=cats_eye)  # validates
        r = min(max(float(roundness), 1e-4), 1.0 - 1e-4)
        self.blades = int(blades)
        self.rotation_rad = nn.Parameter(torch.tensor(math.radians(rotation_deg)))
        self.roundness_logit = nn.Parameter(torch.logit(torch.tensor(r)))
        self.squeeze = squeeze
        self.cats_eye = cats_eye

    @property
    def rotation_deg(self) -> torch.Tensor:
        return torch.rad2deg(self.rotation_rad)

    @property
    def roundness(self) -> torch.Tensor:
        return torch.sigmoid(self.roundness_logit)

    def forward(self) -> Aperture:
        return Aperture.polygon(self.blades, self.rotation_deg, self.roundness,
                                squeeze=self.squeeze, cats_eye=self.cats_eye)


def _render_at(aperture: Aperture, size: int) -> torch.Tensor:
    """``aperture``'s kernel drawn on an odd ``size x size`` grid.

    :meth:`Aperture.from_image` maps the outer texel centres to the rim (``R + 1/2``), so the
    shape is drawn with ``R + 1/2 = (size - 1) / 2``, i.e. a diameter of ``size - 2`` pixels.
    """
    k = aperture.kernel(float(size) - 2.0).detach().to(torch.float32)
    pad = (size - k.shape[-1]) // 2           # the kernel is odd-sized and centred
    return F.pad(k, (pad, pad, pad, pad)) if pad >= 0 else k[-pad:pad, -pad:pad]


@dataclasses.dataclass
class LensFit:
    """The result of :func:`fit_lens`: the fitted values and the loss after every step."""

    f_number: float
    focus_distance_m: float
    aperture: Aperture
    losses: List[float]


def fit_lens(image: torch.Tensor, depth: torch.Tensor, target: torch.Tensor, *,
             focal_length_mm: float, sensor_width_mm: float = 36.0, f_number: float = 4.0,
             focus_distance_m: Optional[float] = None,
             aperture: Optional[Union[Aperture, nn.Module]] = None,
             fit_f_number: bool = True, fit_focus: bool = True, steps: int = 200,
             lr: float = 0.05, aperture_lr: Optional[float] = None, method: str = "gather",
             backend: str = "auto", callback: Optional[Callable[[int, float], None]] = None
             ) -> LensFit:
    """Fit a lens to a photo: find the f-number, focus distance and aperture for which
    :func:`~lensblur.render` of the all-in-focus ``image`` reproduces ``target``.

    Plain gradient descent (Adam) through the renderer on the mean squared error; the f-number
    and focus distance are optimised in log space (so they stay positive and their steps are
    relative).  The aperture is fixed (an :class:`~lensblur.Aperture`), or learned when it is a
    module returning one (:class:`LearnablePolygon`, :class:`LearnableAperture`).

    Args:
        image: ``(B, C, H, W)`` all-in-focus image (linear).
        depth: ``(B, 1, H, W)`` metric depth.
        target: ``(B, C, H, W)`` the photo to match.
        focal_length_mm, sensor_width_mm: the known camera (EXIF).
        f_number, focus_distance_m: starting values (focus default: the median depth).
        aperture: fixed aperture, learnable aperture module, or ``None`` (a disk).
        fit_f_number, fit_focus: which lens parameters to optimise.
        steps, lr: Adam steps and learning rate (log lens parameters); ``aperture_lr`` for the
            aperture module's parameters (default ``lr``).
        method, backend: passed to :func:`~lensblur.render`.
        callback: called as ``callback(step, loss)`` after every step.

    Returns:
        :class:`LensFit` with the fitted values (floats), the fitted :class:`~lensblur.Aperture`
        (detached) and the loss history.

    Example:
        >>> img, depth = torch.rand(1, 1, 12, 12), torch.linspace(1, 3, 12).expand(1, 1, 12, 12)
        >>> true = ThinLens(50.0, 2.0, 1.5, sensor_width_mm=4.0)
        >>> target = render(img, depth, true, method="gather")
        >>> fit = fit_lens(img, depth, target, focal_length_mm=50.0, sensor_width_mm=4.0,
        ...                f_number=2.0, focus_distance_m=1.8, fit_f_number=False, steps=60, lr=0.05)
        >>> abs(fit.focus_distance_m - 1.5) < 0.05
        True
    """
    check_image(image, "image")
    check_image(target, "target")
    check_map(depth, "depth", positive=True)
    check_same_geometry(image, depth, "depth")
    if target.shape != image.shape:
        raise LensBlurError(f"`target` must have the shape of `image` {tuple(image.shape)}, "
                            f"got {tuple(target.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise LensBlurError(f"`steps` must be a non-negative integer, got {steps!r}")
    check_choice(method, "method", RENDER_METHODS)
    check_choice(backend, "backend", BACKENDS)
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable or None, got {type(callback).__name__}")
    lr = check_positive_float(lr, "lr")
    aperture_lr = lr if aperture_lr is None else check_positive_float(aperture_lr, "aperture_lr")
    if focus_distance_m is None:
        focus_distance_m = float(depth.detach().median())
    ThinLens(focal_length_mm, f_number, focus_distance_m, sensor_width_mm)   # validates
    if aperture is not None and not isinstance(aperture, (Aperture, nn.Module)):
        raise TypeError(f"`aperture` must be a lensblur.Aperture, a module or None, "
                        f"got {type(aperture).__name__}")

    dtype, device = image.dtype, image.device
    log_n = torch.tensor(math.log(f_number), dtype=dtype, device=device, requires_grad=fit_f_number)
    log_s = torch.tensor(math.log(focus_distance_m), dtype=dtype, device=device,
                         requires_grad=fit_focus)
    groups = [{"params": [p for p in (log_n, log_s) if p.requires_grad], "lr": lr}]
    if isinstance(aperture, nn.Module):
        groups.append({"params": list(aperture.parameters()), "lr": aperture_lr})
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.Adam(groups) if groups else None
    min_log_s = math.log(focal_length_mm / 1000.0 * 1.001)

    def current_aperture():
        return aperture() if isinstance(aperture, nn.Module) else aperture

    losses: List[float] = []
    for step in range(steps if opt is not None else 0):
        opt.zero_grad()
        lens = ThinLens(focal_length_mm, log_n.exp(), log_s.exp(), sensor_width_mm)
        out = render(image, depth, lens, current_aperture(), method=method, backend=backend)
        loss = torch.mean((out - target) ** 2)
        loss.backward()
        opt.step()
        with torch.no_grad():
            log_s.clamp_(min=min_log_s)         # stay beyond the focal length
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, losses[-1])
    with torch.no_grad():
        final = current_aperture() or Aperture.disk()
        final = _detached(final)
    return LensFit(f_number=float(log_n.detach().exp()), focus_distance_m=float(log_s.detach().exp()),
                   aperture=final, losses=losses)


def _detached(aperture: Aperture) -> Aperture:
    """``aperture`` with its shape tensors detached (a plain, constant aperture)."""
    changes = {k: v.detach() for k in ("rotation_deg", "roundness", "table")
               if isinstance(v := getattr(aperture, k), torch.Tensor)}
    return dataclasses.replace(aperture, **changes) if changes else aperture
