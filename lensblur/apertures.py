r"""Aperture shapes: disk, polygon (blades, rotation, roundness) and arbitrary image kernels.

An aperture is described by an *unnormalised* weight :math:`W(d; c, v)` for a pixel offset
:math:`d = (d_x, d_y)` (source pixel minus the kernel's centre pixel; x right, y down), a
circle-of-confusion diameter :math:`c` in pixels (radius :math:`R = c/2`) and, for cat's-eye
vignetting only, the normalised position :math:`v` of the kernel's pixel in the frame.
With shape coordinates :math:`e = (s_q d_x, d_y)` (``squeeze`` :math:`s_q`):

* disk: :math:`n(e) = |e|`
* polygon with :math:`B` blades, rotation :math:`\phi`, roundness :math:`\rho`:
  :math:`n(e) = (1-\rho)\max_k (e\cdot\nu_k)/\cos(\pi/B) + \rho |e|`, with edge normals
  :math:`\nu_k` at angles :math:`\phi + (2k+1)\pi/B` (a vertex points at angle :math:`\phi`).
  Both terms are norms, so every roundness gives a convex shape between the polygon and the disk.
* disk and polygon: :math:`W = \operatorname{clamp}(R + 1/2 - n(e), 0, 1)` — weight one inside,
  a one-pixel anti-aliased rim, so :math:`W` varies continuously with :math:`c` and
  :math:`\partial W/\partial c = 1/2` on the rim.
* image kernel :math:`T` (``h x w``, scaled to max 1, zero-padded by one texel): bilinear sample of
  :math:`T` at :math:`u = e/(R + 1/2) \in [-1, 1]^2`, plus :math:`10^{-6}` at :math:`d = 0` so
  that every kernel has positive mass.
* cat's eye :math:`\kappa`: the shape is intersected with a disk of the same radius centred at
  :math:`\kappa R v` (:math:`|v| = 1` in the frame corners):
  :math:`W \leftarrow \min(W, \operatorname{clamp}(R + 1/2 - |e - \kappa R v|, 0, 1))`.

These formulas are the single definition used by every backend (PyTorch reference, C++, Triton).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Tuple, Union

import torch

from .validation import LensBlurError, check_positive_float, check_range

__all__ = ["Aperture", "MAX_BLADES", "MAX_KERNEL_PX"]

#: Most blades of :meth:`Aperture.polygon`: with more, the polygon is a disk to within
#: ``1 - cos(pi / 64)`` = 0.12 % of its radius (and every tap would cost one dot per blade).
MAX_BLADES = 64
#: Largest diameter (pixels) of :meth:`Aperture.kernel` and of a learnable aperture's table: a
#: ``(k, k)`` kernel of this size already holds 16.8 M entries.
MAX_KERNEL_PX = 4096

KIND_IDS = {"disk": 0, "polygon": 1, "image": 2}
IMAGE_CENTER_EPS = 1e-6
_MIN_TABLE = 3

Number = Union[float, torch.Tensor]


@dataclasses.dataclass(frozen=True, eq=False)
class Aperture:
    """The shape of the lens aperture (the bokeh shape).

    Build one with :meth:`disk`, :meth:`polygon` or :meth:`from_image`.  Every constructor also
    takes ``squeeze`` (anamorphic squeeze: bokeh ``squeeze`` times taller than wide, 1 = round)
    and ``cats_eye`` (0 = off; 1 = strong cat's-eye vignetting in the frame corners).

    Example:
        >>> k = Aperture.polygon(blades=6).kernel(9.0)
        >>> tuple(k.shape), round(float(k.sum()), 6)
        ((9, 9), 1.0)
    """

    kind: str = "disk"
    blades: int = 0
    rotation_deg: float = 0.0
    roundness: float = 1.0
    squeeze: float = 1.0
    cats_eye: float = 0.0
    table: Optional[torch.Tensor] = None  # max-normalised (h, w) float32, unpadded

    def __post_init__(self):
        # every way of making one (constructors, replace, the dataclass itself) bounds the kind
        # and the blade count that the kernels index
        if self.kind not in KIND_IDS:
            raise LensBlurError(f"`kind` must be one of {', '.join(KIND_IDS)}, got {self.kind!r}")
        if self.kind == "polygon" and not (3 <= self.blades <= MAX_BLADES):
            raise LensBlurError(f"`blades` must lie in [3, {MAX_BLADES}], got {self.blades}")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def disk(cls, *, squeeze: float = 1.0, cats_eye: float = 0.0) -> "Aperture":
        """A circular aperture."""
        return cls(kind="disk", squeeze=_check_squeeze(squeeze), cats_eye=_check_cats_eye(cats_eye))

    @classmethod
    def polygon(cls, blades: int = 6, rotation_deg: float = 0.0, roundness: float = 0.0, *,
                squeeze: float = 1.0, cats_eye: float = 0.0) -> "Aperture":
        """A regular polygon made by ``blades`` straight blades.

        Args:
            blades: number of blades (edges), >= 3.
            rotation_deg: rotation in degrees (counter-clockwise on screen is negative y).
            roundness: 0 = straight edges, 1 = a disk; values between blend the two.

        ``rotation_deg`` and ``roundness`` may be 0-d tensors that require grad: the blur is then
        differentiable w.r.t. them (see :mod:`lensblur.learnable`).
        """
        if isinstance(blades, bool) or not isinstance(blades, numbers.Integral):
            raise TypeError(f"`blades` must be an integer, got {type(blades).__name__}")
        if blades < 3:
            raise LensBlurError(f"`blades` must be >= 3, got {blades}")
        if blades > MAX_BLADES:
            raise LensBlurError(f"`blades` must be <= {MAX_BLADES}, got {blades} (a polygon with that "
                                f"many blades is a disk: use Aperture.disk())")
        return cls(kind="polygon", blades=int(blades),
                   rotation_deg=_check_shape_param(rotation_deg, "rotation_deg", None, None),
                   roundness=_check_shape_param(roundness, "roundness", 0.0, 1.0),
                   squeeze=_check_squeeze(squeeze), cats_eye=_check_cats_eye(cats_eye))

    @classmethod
    def from_image(cls, kernel: torch.Tensor, *, squeeze: float = 1.0,
                   cats_eye: float = 0.0) -> "Aperture":
        """An aperture given by a non-negative ``(h, w)`` image (any size, e.g. a star or a heart).

        The image is stretched over the blur diameter; its scale does not matter.  If ``kernel``
        requires grad, :func:`~lensblur.defocus` and :func:`~lensblur.render` propagate
        gradients to it.
        """
        if not isinstance(kernel, torch.Tensor):
            raise TypeError(f"`kernel` must be a torch.Tensor, got {type(kernel).__name__}")
        if not kernel.is_floating_point():
            raise TypeError(f"`kernel` must be a floating point tensor, got dtype {kernel.dtype}")
        if kernel.dim() != 2 or min(kernel.shape) == 0:
            raise LensBlurError(f"`kernel` must have shape (h, w), got {tuple(kernel.shape)}")
        k = kernel if kernel.dtype == torch.float64 else kernel.to(torch.float32)
        kd = k.detach()
        if not bool(torch.isfinite(kd).all()):
            raise LensBlurError("`kernel` contains NaN or infinite values")
        if bool((kd < 0).any()):
            raise LensBlurError("`kernel` must be non-negative")
        if not bool((kd > 0).any()):
            raise LensBlurError("`kernel` must have a positive entry")
        if min(k.shape) < _MIN_TABLE:
            h, w = max(k.shape[0], _MIN_TABLE), max(k.shape[1], _MIN_TABLE)
            k = torch.nn.functional.interpolate(k[None, None], size=(h, w), mode="nearest")[0, 0]
        # max-normalised; differentiable when ``kernel`` requires grad (a learnable aperture)
        return cls(kind="image", table=(k / k.max()).contiguous(), squeeze=_check_squeeze(squeeze),
                   cats_eye=_check_cats_eye(cats_eye))

    def replace(self, **changes) -> "Aperture":
        """A copy with some fields changed (e.g. ``ap.replace(squeeze=1.5)``), re-validated."""
        ap = dataclasses.replace(self, **changes)
        _check_squeeze(ap.squeeze)
        _check_cats_eye(ap.cats_eye)
        return ap

    # ---------------------------------------------------------------- properties
    @property
    def kind_id(self) -> int:
        """0 disk, 1 polygon, 2 image (as the kernels see it)."""
        return KIND_IDS[self.kind]

    @property
    def rotation_rad(self):
        """Rotation in radians (a float, or a 0-d tensor when ``rotation_deg`` is one)."""
        if isinstance(self.rotation_deg, torch.Tensor):
            return torch.deg2rad(self.rotation_deg)
        return math.radians(self.rotation_deg)

    @property
    def requires_grad(self) -> bool:
        """True when a shape parameter (image table, rotation, roundness) requires grad."""
        return any(isinstance(v, torch.Tensor) and v.requires_grad
                   for v in (self.table, self.rotation_deg, self.roundness))

    def kernel_params(self) -> list:
        """``[kind_id, blades, rotation_rad, roundness, squeeze, cats_eye]`` as the kernels take them."""
        return [float(self.kind_id), float(self.blades), float(_value(self.rotation_rad)),
                float(_value(self.roundness)), float(self.squeeze), float(self.cats_eye)]

    def table_padded(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The image table with a one-texel zero border, ``(h + 2, w + 2)``."""
        if self.table is None:
            return torch.zeros(1, 1, device=device, dtype=dtype)
        return torch.nn.functional.pad(self.table, (1, 1, 1, 1)).to(device=device, dtype=dtype)

    def reach(self) -> float:
        """Largest horizontal/vertical extent of the support, in units of ``R + 1/2``."""
        if self.kind == "image":
            h, w = self.table.shape
            return 1.0 + 2.0 / (min(h, w) - 1)
        return 1.0

    def support(self, radius_px: float) -> Tuple[int, int]:
        """Half-widths ``(kx, ky)`` of the window outside which ``W`` is zero for coc radius
        ``radius_px`` (the largest radius in the image)."""
        ext = (float(radius_px) + 0.5) * self.reach()
        kx = max(int(math.ceil(ext / self.squeeze)) - 1, 0)
        ky = max(int(math.ceil(ext)) - 1, 0)
        return kx, ky

    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)}" for k, neutral in (("squeeze", 1.0), ("cats_eye", 0.0))
                        if getattr(self, k) != neutral)
        if self.kind == "disk":
            return f"Aperture.disk({extra.lstrip(', ')})"
        if self.kind == "polygon":
            return (f"Aperture.polygon(blades={self.blades}, rotation_deg={_value(self.rotation_deg):g}, "
                    f"roundness={_value(self.roundness):g}{extra})")
        return f"Aperture.from_image(<{tuple(self.table.shape)} kernel>{extra})"

    # ---------------------------------------------------------------- the weight function
    def shape_norm(self, ex: torch.Tensor, ey: torch.Tensor) -> torch.Tensor:
        """The shape's norm ``n(e)`` (disk and polygon), boundary at ``n = R + 1/2``."""
        r = torch.sqrt(ex * ex + ey * ey)
        if self.kind == "disk" or (not isinstance(self.roundness, torch.Tensor) and self.roundness >= 1.0):
            return r
        b = self.blades
        rot = self.rotation_rad
        cos, sin = (torch.cos, torch.sin) if isinstance(rot, torch.Tensor) else (math.cos, math.sin)
        m = None
        for k in range(b):
            a = rot + (2 * k + 1) * math.pi / b
            dot = ex * cos(a) + ey * sin(a)
            m = dot if m is None else torch.maximum(m, dot)
        poly = m / math.cos(math.pi / b)
        return (1.0 - self.roundness) * poly + self.roundness * r

    def weight(self, dx, dy, coc: torch.Tensor,
               pos: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised weight ``W(d; c, v)`` and its derivative ``dW/dc``.

        Args:
            dx, dy: offsets in pixels (numbers or tensors broadcastable with ``coc``).
            coc: coc diameters in pixels (any shape).
            pos: ``(vx, vy)`` normalised frame positions of the kernel's pixel; needed only when
                ``cats_eye > 0`` (ignored otherwise).

        Returns:
            ``(W, dW/dc)`` broadcast to a common shape, in ``coc``'s dtype.
        """
        dt, dev = coc.dtype, coc.device
        dx = torch.as_tensor(dx, dtype=dt, device=dev)
        dy = torch.as_tensor(dy, dtype=dt, device=dev)
        radius = 0.5 * coc
        ex = dx * self.squeeze
        ey = dy
        if self.kind == "image":
            w, dw = self._sample_table(ex, ey, radius)
            w = w + IMAGE_CENTER_EPS * ((dx == 0) & (dy == 0)).to(dt)
        else:
            t = radius + 0.5 - self.shape_norm(ex, ey)
            w = t.clamp(0.0, 1.0)
            dw = 0.5 * ((t > 0) & (t < 1)).to(dt)
        if self.cats_eye > 0 and pos is not None:
            vx, vy = pos
            k = self.cats_eye
            rx = ex - k * radius * vx
            ry = ey - k * radius * vy
            rho = torch.sqrt((rx * rx + ry * ry).clamp_min(1e-24))  # safe for autograd at 0
            t2 = radius + 0.5 - rho
            w2 = t2.clamp(0.0, 1.0)
            dt2 = 1.0 + k * (rx * vx + ry * vy) / rho.clamp_min(1e-12)
            dw2 = 0.5 * dt2 * ((t2 > 0) & (t2 < 1)).to(dt)
            use2 = w2 < w
            w, dw = torch.where(use2, w2, w), torch.where(use2, dw2, dw)
        return w, dw

    def _sample_table(self, ex, ey, radius):
        tab = self.table_padded(device=radius.device, dtype=radius.dtype)
        hp, wp = tab.shape
        h, w = hp - 2, wp - 2
        scale = 1.0 / (radius + 0.5)
        xt = (ex * scale + 1.0) * (0.5 * (w - 1)) + 1.0
        yt = (ey * scale + 1.0) * (0.5 * (h - 1)) + 1.0
        x0f, y0f = torch.floor(xt), torch.floor(yt)
        fx, fy = xt - x0f, yt - y0f
        x0 = x0f.long()
        y0 = y0f.long()
        flat = tab.reshape(-1)

        def at(yy, xx):
            inside = (xx >= 0) & (xx < wp) & (yy >= 0) & (yy < hp)
            idx = (yy.clamp(0, hp - 1) * wp + xx.clamp(0, wp - 1))
            return flat[idx] * inside.to(tab.dtype)

        t00, t01 = at(y0, x0), at(y0, x0 + 1)
        t10, t11 = at(y0 + 1, x0), at(y0 + 1, x0 + 1)
        top = t00 + fx * (t01 - t00)
        bot = t10 + fx * (t11 - t10)
        val = top + fy * (bot - top)
        dval_dx = (1 - fy) * (t01 - t00) + fy * (t11 - t10)
        dval_dy = bot - top
        # d(xt)/dR = -(w-1)/2 * ex / (R + 1/2)^2, and dR/dc = 1/2
        dxt = -0.5 * (w - 1) * ex * scale * scale
        dyt = -0.5 * (h - 1) * ey * scale * scale
        return val, 0.5 * (dval_dx * dxt + dval_dy * dyt)

    # ---------------------------------------------------------------- user-facing kernel
    def kernel(self, diameter_px: Number) -> torch.Tensor:
        """The normalised ``(k, k)`` blur kernel for a uniform coc of ``diameter_px`` pixels.

        Entry ``[ky + dy, kx + dx]`` is the weight of offset ``(dx, dy)``; the kernel sums to 1,
        its support matches the diameter, and its rim is anti-aliased so that it varies smoothly
        with the diameter (it is differentiable w.r.t. a tensor ``diameter_px``).

        Example:
            >>> Aperture.disk().kernel(0.5).shape   # below one pixel: the identity
            torch.Size([1, 1])
        """
        if isinstance(diameter_px, torch.Tensor):
            if diameter_px.dim() != 0 or not diameter_px.is_floating_point():
                raise LensBlurError("`diameter_px` must be a float or a 0-d floating point tensor")
            if not bool(torch.isfinite(diameter_px.detach())) or float(diameter_px.detach()) < 0:
                raise LensBlurError(f"`diameter_px` must be finite and >= 0, got {float(diameter_px)}")
            c = diameter_px
        else:
            c = torch.tensor(check_positive_float(diameter_px, "diameter_px", allow_zero=True),
                             dtype=torch.float32)
        if float(c.detach()) > MAX_KERNEL_PX:
            raise LensBlurError(f"`diameter_px` must be <= {MAX_KERNEL_PX} for a kernel image, got "
                                f"{float(c.detach()):.4g} (a ({MAX_KERNEL_PX}, {MAX_KERNEL_PX}) "
                                f"kernel already holds {MAX_KERNEL_PX ** 2 / 1e6:.1f} M entries)")
        kx, ky = self.support(float(c.detach()) / 2)
        k = max(kx, ky)
        offs = torch.arange(-k, k + 1, dtype=c.dtype)
        dy, dx = torch.meshgrid(offs, offs, indexing="ij")
        w, _ = self.weight(dx, dy, c)
        return w / w.sum()


def _value(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _check_shape_param(v, name: str, lo, hi):
    """A float, or a finite 0-d floating tensor (kept as is, so gradients can flow to it)."""
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or not v.is_floating_point():
            raise LensBlurError(f"`{name}` must be a float or a 0-d floating point tensor")
        x = float(v.detach())
    elif isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"`{name}` must be a real number or a 0-d tensor, got {type(v).__name__}")
    else:
        x = float(v)
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f" in [{lo}, {hi}]" if lo is not None else ""
        raise LensBlurError(f"`{name}` must be finite{rng}, got {x}")
    return v if isinstance(v, torch.Tensor) else x


def _check_squeeze(v) -> float:
    v = check_positive_float(v, "squeeze")
    if not (0.2 <= v <= 5.0):
        raise LensBlurError(f"`squeeze` must lie in [0.2, 5], got {v}")
    return v


def _check_cats_eye(v) -> float:
    return check_range(v, "cats_eye", 0.0, 1.0)
