r"""Physically based defocus augmentation for training pipelines (kornia compatible).

:class:`RandomDefocus` draws a thin lens per image — focal length, f-number, focus distance (or a
focus *point* whose depth becomes the focus distance) and an aperture (disk, polygon with a
number of blades, or any :class:`~lensblur.Aperture` you give it) — and renders the depth of field
with :func:`lensblur.render`.  The blur of every pixel is the thin-lens circle of confusion

.. math::

    c_\text{px} = \frac{f^2}{N (S_1 - f)} \, \frac{|S_2 - S_1|}{S_2}
                  \cdot \frac{W_\text{px}}{w_\text{sensor}},

so the amount of blur, its growth with depth and its shape all follow a real camera, instead of a
Gaussian of arbitrary width.

Depth comes from, in order of precedence:

1. a ``depth`` tensor passed to the call (``aug(image, depth)``), metres, ``(B, 1, H, W)``;
2. the ``depth_prior`` given at construction:

   * ``"plane"``: a fronto-parallel plane at a distance drawn per image from ``depth_range_m``
     (uniform blur, the shape of the aperture);
   * ``"ramp"``: a ground plane seen from above its horizon: inverse depth is linear in the row,
     from ``depth_range_m[1]`` at the top row to ``depth_range_m[0]`` at the bottom row;
   * a callable ``prior(image) -> depth`` (e.g. a monocular depth network), ``(B, 1, H, W)``
     metres.

The module is a kornia :class:`~kornia.augmentation.IntensityAugmentationBase2D`: it honours
``p``, ``same_on_batch`` and ``keepdim``, draws through torch's global generator (so
``torch.manual_seed`` makes it deterministic, as for every kornia augmentation) or through a
``torch.Generator`` given as ``generator=``, replays ``aug(x, params=aug._params)``, and runs inside
:class:`kornia.augmentation.AugmentationSequential`.  It is also a plain callable ``nn.Module`` for
torchvision-style ``Compose`` pipelines.  It renders with ``backend="auto"`` (the fastest backend
of the image's device) and works under :func:`torch.no_grad`; with grad enabled the output is
differentiable w.r.t. the image and a passed depth.

Example:
    >>> import torch
    >>> from lensblur.augment import RandomDefocus
    >>> aug = RandomDefocus(focal_length_mm=(35.0, 85.0), f_number=(1.4, 4.0),
    ...                     focus_distance_m=(1.0, 3.0), p=1.0)
    >>> _ = torch.manual_seed(0)
    >>> out, coc, params = aug(torch.rand(2, 3, 16, 16), return_coc=True, return_params=True)
    >>> out.shape, coc.shape, params["f_number"].shape
    (torch.Size([2, 3, 16, 16]), torch.Size([2, 1, 16, 16]), torch.Size([2]))
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from kornia.augmentation import IntensityAugmentationBase2D
from kornia.augmentation.random_generator import RandomGeneratorBase

from .apertures import Aperture
from .defocus import BACKENDS
from .optics import ThinLens
from .render import RENDER_METHODS, render_coc
from .validation import (LensBlurError, check_choice, check_map, check_not_meta, check_positive_float,
                         check_same_geometry)

__all__ = ["RandomDefocus", "DefocusParameterGenerator", "DEFAULT_METHOD", "DEPTH_PRIORS"]

#: The rendering method used when ``RandomDefocus(method=None)``.
DEFAULT_METHOD = "layered"

#: The built-in depth priors (a callable is accepted too).
DEPTH_PRIORS = ("plane", "ramp")

_APERTURE_NAMES = ("disk", "polygon")

Range = Union[float, Tuple[float, float]]


# ---------------------------------------------------------------------------------- validation
def _as_range(value, name: str, *, lower: float = 0.0, upper: Optional[float] = None,
              inclusive_lower: bool = False, integer: bool = False) -> Tuple[float, float]:
    """A number ``v`` (read as ``(v, v)``) or an ordered ``(lo, hi)`` pair inside the bounds."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    pair = (value, value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"`{name}` must be a number or a (low, high) pair, got {value!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"`{name}` must contain real numbers, got {value!r}")
        if integer and not isinstance(v, numbers.Integral):
            raise TypeError(f"`{name}` must contain integers, got {value!r}")
        if not math.isfinite(float(v)):
            raise LensBlurError(f"`{name}` must be finite, got {value!r}")
    lo, hi = (int(v) for v in pair) if integer else (float(v) for v in pair)
    if lo > hi:
        raise LensBlurError(f"`{name}` must be ordered as (low, high) with low <= high, got {value!r}")
    if lo < lower or (lo == lower and not inclusive_lower):
        op = ">=" if inclusive_lower else ">"
        raise LensBlurError(f"`{name}` must be {op} {lower:g}, got {value!r}")
    if upper is not None and hi > upper:
        raise LensBlurError(f"`{name}` must be <= {upper:g}, got {value!r}")
    return lo, hi


def _check_apertures(aperture) -> Tuple[Union[str, Aperture], ...]:
    items = (aperture,) if isinstance(aperture, (str, Aperture)) else aperture
    if not isinstance(items, (tuple, list)) or len(items) == 0:
        raise TypeError("`aperture` must be 'disk', 'polygon', a lensblur.Aperture or a non-empty "
                        f"sequence of those, got {aperture!r}")
    for a in items:
        if isinstance(a, str):
            check_choice(a, "aperture", _APERTURE_NAMES)
        elif not isinstance(a, Aperture):
            raise TypeError(f"`aperture` entries must be 'disk', 'polygon' or a lensblur.Aperture, "
                            f"got {type(a).__name__}")
    return tuple(items)


def _check_focus_point(focus_point) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    if focus_point is None or focus_point is False:
        return None
    if focus_point is True:
        return (0.0, 1.0), (0.0, 1.0)
    if not isinstance(focus_point, (tuple, list)) or len(focus_point) != 2:
        raise TypeError("`focus_point` must be None, True or ((x_low, x_high), (y_low, y_high)) in "
                        f"fractions of the frame, got {focus_point!r}")
    return (_as_range(focus_point[0], "focus_point", lower=0.0, upper=1.0, inclusive_lower=True),
            _as_range(focus_point[1], "focus_point", lower=0.0, upper=1.0, inclusive_lower=True))


# ---------------------------------------------------------------------------------- sampling
class DefocusParameterGenerator(RandomGeneratorBase):
    """Draws the per-image lens and aperture parameters of :class:`RandomDefocus`.

    All continuous values are uniform in their ``(low, high)`` range, blades uniform among the
    integers of theirs, the aperture uniform among the entries of ``apertures``.  Draws go through
    ``generator`` when given, else through torch's global generator of the sampling device.

    Returns (from ``forward(batch_shape, same_on_batch)``) a dict of ``(B,)`` tensors:
    ``focal_length_mm``, ``f_number``, ``focus_distance_m``, ``aperture_index`` (long),
    ``blades`` (long), ``rotation_deg``, and, when used, ``plane_distance_m`` and ``focus_point``
    (``(B, 2)``: x, y as fractions of the frame).
    """

    def __init__(self, focal_length_mm: Tuple[float, float], f_number: Tuple[float, float],
                 focus_distance_m: Tuple[float, float], num_apertures: int, blades: Tuple[int, int],
                 rotation_deg: Tuple[float, float], plane_distance_m: Optional[Tuple[float, float]],
                 focus_point: Optional[Tuple[Tuple[float, float], Tuple[float, float]]],
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.focal_length_mm = focal_length_mm
        self.f_number = f_number
        self.focus_distance_m = focus_distance_m
        self.num_apertures = num_apertures
        self.blades = blades
        self.rotation_deg = rotation_deg
        self.plane_distance_m = plane_distance_m
        self.focus_point = focus_point
        self.generator = generator

    def __repr__(self) -> str:
        txt = (f"focal_length_mm={self.focal_length_mm}, f_number={self.f_number}, "
               f"focus_distance_m={self.focus_distance_m}, blades={self.blades}, "
               f"rotation_deg={self.rotation_deg}")
        if self.plane_distance_m is not None:
            txt += f", plane_distance_m={self.plane_distance_m}"
        if self.focus_point is not None:
            txt += f", focus_point={self.focus_point}"
        return txt

    def make_samplers(self, device: torch.device, dtype: torch.dtype) -> None:
        # Draws are made with torch.rand / torch.randint on demand; nothing to pre-build.
        pass

    def rand(self, n: int) -> torch.Tensor:
        """``n`` uniform draws in ``[0, 1)`` on the sampling device, float64 (exact ranges)."""
        if self.generator is not None:
            u = torch.rand(n, generator=self.generator, device=self.generator.device, dtype=torch.float64)
            return u.to(self.device)
        return torch.rand(n, device=self.device, dtype=torch.float64)

    def _uniform(self, rng: Tuple[float, float], n: int) -> torch.Tensor:
        lo, hi = rng
        return (lo + (hi - lo) * self.rand(n)).clamp(lo, hi)

    def _integer(self, lo: int, hi: int, n: int) -> torch.Tensor:
        return (lo + torch.floor(self.rand(n) * (hi - lo + 1))).clamp(lo, hi).long()

    def forward(self, batch_shape: Tuple[int, ...], same_on_batch: bool = False) -> Dict[str, torch.Tensor]:
        b = int(batch_shape[0])
        n = 1 if same_on_batch else b
        # The order of draws is fixed: equal seeds give equal parameters.
        out = {
            "focal_length_mm": self._uniform(self.focal_length_mm, n),
            "f_number": self._uniform(self.f_number, n),
            "focus_distance_m": self._uniform(self.focus_distance_m, n),
            "aperture_index": self._integer(0, self.num_apertures - 1, n),
            "blades": self._integer(*self.blades, n),
            "rotation_deg": self._uniform(self.rotation_deg, n),
        }
        if self.plane_distance_m is not None:
            out["plane_distance_m"] = self._uniform(self.plane_distance_m, n)
        if self.focus_point is not None:
            out["focus_point"] = torch.stack([self._uniform(self.focus_point[0], n),
                                              self._uniform(self.focus_point[1], n)], dim=-1)
        if same_on_batch:
            out = {k: v.expand(b, *v.shape[1:]) for k, v in out.items()}
        return out


# ---------------------------------------------------------------------------------- the augmentation
class RandomDefocus(IntensityAugmentationBase2D):
    r"""Random, physically based depth-of-field blur (a kornia augmentation and an ``nn.Module``).

    Per image it draws a focal length, an f-number, a focus distance (or a focus point) and an
    aperture from the given ranges, builds the per-pixel circle of confusion of a thin lens from
    the depth (passed, or from ``depth_prior``) and renders with :func:`lensblur.render_coc`.  A range
    is a ``(low, high)`` pair (uniform draw) or a single number (fixed).

    Args:
        focal_length_mm: focal length range in millimetres, > 0.
        f_number: f-number range, > 0.
        focus_distance_m: focus distance range in metres; its low end must exceed the largest
            focal length.  With ``focus_point`` it is the range the focus distance is clamped to.
        focus_point: ``None`` (draw ``focus_distance_m``), ``True`` (a pixel anywhere in the
            frame) or ``((x_low, x_high), (y_low, y_high))`` in fractions of the width and height:
            a pixel is drawn and its depth becomes the focus distance.
        aperture: ``"disk"``, ``"polygon"``, a :class:`~lensblur.Aperture` or a sequence of those,
            drawn uniformly per image.
        blades: integer range of polygon blades, >= 3.
        rotation_deg: polygon rotation range in degrees.
        depth_prior: ``"plane"``, ``"ramp"`` or a callable ``image (B, C, H, W) -> depth
            (B, 1, H, W)`` in metres; used when no depth is passed to the call.
        depth_range_m: ``(near, far)`` metres, > 0: the plane's distance range (``"plane"``) or
            the ramp's bottom and top distances (``"ramp"``).
        sensor_width_mm: sensor width in millimetres (the image spans it), > 0.
        method: ``"layered"``, ``"gather"`` or ``"scatter"``; ``None`` = :data:`DEFAULT_METHOD`.
        backend: kernel backend, ``"auto"`` = fastest on the image's device.
        gamma: encoding of the images (2.2 for sRGB-like images; 1 = linear), > 0.
        signed_coc: return the signed coc (negative = nearer than the focus plane).
        generator: optional ``torch.Generator`` for every draw (gate and parameters) of this
            instance; without it draws use torch's global generator, as kornia does.
        same_on_batch: one draw shared by the whole batch.
        p: probability of blurring each image.
        keepdim: keep the input's rank (``(C, H, W)`` in, ``(C, H, W)`` out).

    Call:
        ``aug(image, depth=None, params=None, *, return_coc=False, return_params=False)``

        * ``image``: ``(B, C, H, W)``, ``(C, H, W)`` or ``(H, W)`` float tensor.
        * ``depth``: optional metres, ``(B, 1, H, W)``, ``(B, H, W)`` or ``(H, W)``, > 0.
        * ``params``: replay a previous draw (``aug._params``).

        Returns the image (``(B, C, H, W)``, or the input's rank with ``keepdim``), or a tuple
        ``(image, coc)``, ``(image, params)`` or ``(image, coc, params)`` as requested.  ``coc`` is
        the circle-of-confusion diameter in pixels that was rendered, ``(B, 1, H, W)`` (zero for
        images the ``p`` gate skipped).  ``params`` holds ``(B,)`` tensors on the image's device:
        ``focal_length_mm``, ``f_number``, ``focus_distance_m`` (the one used, also with a focus
        point), ``aperture_index``, ``blades``, ``rotation_deg``, ``applied`` (bool), and, when
        used, ``plane_distance_m`` and ``focus_point``; :meth:`lens` and :meth:`aperture_for` turn
        them into a :class:`~lensblur.ThinLens` and :class:`~lensblur.Aperture`.

    Example:
        >>> import torch
        >>> aug = RandomDefocus(focal_length_mm=85.0, f_number=(1.4, 2.8), focus_distance_m=(1.0, 2.0),
        ...                     depth_prior="ramp", depth_range_m=(1.0, 30.0), p=1.0, keepdim=True)
        >>> aug(torch.rand(3, 24, 24)).shape
        torch.Size([3, 24, 24])
    """

    def __init__(self, focal_length_mm: Range = (24.0, 85.0), f_number: Range = (1.4, 8.0),
                 focus_distance_m: Range = (0.5, 10.0), *, focus_point=None,
                 aperture: Union[str, Aperture, Sequence[Union[str, Aperture]]] = ("disk", "polygon"),
                 blades: Union[int, Tuple[int, int]] = (5, 9), rotation_deg: Range = 0.0,
                 depth_prior: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "plane",
                 depth_range_m: Range = (1.0, 20.0), sensor_width_mm: float = 36.0,
                 method: Optional[str] = None, backend: str = "auto", gamma: float = 1.0,
                 signed_coc: bool = False, generator: Optional[torch.Generator] = None,
                 same_on_batch: bool = False, p: float = 0.5, keepdim: bool = False) -> None:
        super().__init__(p=_check_probability(p), same_on_batch=bool(same_on_batch), p_batch=1.0,
                         keepdim=bool(keepdim))
        focal = _as_range(focal_length_mm, "focal_length_mm")
        fnum = _as_range(f_number, "f_number")
        focus = _as_range(focus_distance_m, "focus_distance_m")
        if focus[0] * 1000.0 <= focal[1]:
            raise LensBlurError(
                f"`focus_distance_m` must be greater than the focal length: its low end {focus[0]:g} m "
                f"is not beyond the largest focal length {focal[1]:g} mm")
        blades_rng = _as_range(blades, "blades", lower=3, inclusive_lower=True, integer=True)
        rotation = _as_range(rotation_deg, "rotation_deg", lower=-math.inf)
        if isinstance(depth_prior, str):
            check_choice(depth_prior, "depth_prior", DEPTH_PRIORS)
        elif not callable(depth_prior):
            raise TypeError(f"`depth_prior` must be one of {DEPTH_PRIORS} or a callable, "
                            f"got {type(depth_prior).__name__}")
        depth_rng = _as_range(depth_range_m, "depth_range_m")
        if method is None:
            method = DEFAULT_METHOD
        check_choice(method, "method", RENDER_METHODS)
        check_choice(backend, "backend", BACKENDS)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")

        self.apertures = _check_apertures(aperture)
        self.depth_prior = depth_prior
        self.generator = generator
        self.flags = {
            "depth_prior": depth_prior if isinstance(depth_prior, str) else "callable",
            "depth_range_m": depth_rng,
            "sensor_width_mm": check_positive_float(sensor_width_mm, "sensor_width_mm"),
            "method": method,
            "backend": backend,
            "gamma": check_positive_float(gamma, "gamma"),
            "signed_coc": bool(signed_coc),
        }
        self._param_generator = DefocusParameterGenerator(
            focal, fnum, focus, len(self.apertures), blades_rng, rotation,
            depth_rng if depth_prior == "plane" else None, _check_focus_point(focus_point), generator)
        self._param_generator.set_rng_device_and_dtype(self.device, self.dtype)
        self._call_depth: Optional[torch.Tensor] = None
        self._last: Optional[Tuple[torch.Tensor, Dict[str, torch.Tensor]]] = None

    # ------------------------------------------------------------------ kornia hooks
    def __batch_prob_generator__(self, batch_shape: Tuple[int, ...], p: float, p_batch: float,
                                 same_on_batch: bool) -> torch.Tensor:
        if self.generator is None:
            return super().__batch_prob_generator__(batch_shape, p, p_batch, same_on_batch)
        b = int(batch_shape[0])
        if p in (0.0, 1.0):
            return torch.full((b,), float(p), device=self.device, dtype=self.dtype)
        u = self._param_generator.rand(1 if same_on_batch else b).expand(b)
        return (u < p).to(device=self.device, dtype=self.dtype)

    def apply_transform(self, input: torch.Tensor, params: Dict[str, torch.Tensor], flags: Dict[str, Any],
                        transform: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, h, w = input.shape
        dev = input.device
        cdtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        depth = self._depth(input, params).to(cdtype)
        used = {k: params[k].to(dev) for k in ("focal_length_mm", "f_number", "aperture_index", "blades",
                                               "rotation_deg")}
        used["focal_length_mm"] = used["focal_length_mm"].to(cdtype)
        used["f_number"] = used["f_number"].to(cdtype)
        used["rotation_deg"] = used["rotation_deg"].to(cdtype)
        focus = params["focus_distance_m"].to(dev, cdtype)
        if "plane_distance_m" in params:
            used["plane_distance_m"] = params["plane_distance_m"].to(dev, cdtype)
        if "focus_point" in params:
            fp = params["focus_point"].to(dev, cdtype)
            xs = (fp[:, 0] * (w - 1)).round().long().clamp(0, w - 1)
            ys = (fp[:, 1] * (h - 1)).round().long().clamp(0, h - 1)
            lo, hi = self._param_generator.focus_distance_m
            focus = depth[torch.arange(b, device=dev), 0, ys, xs].clamp(lo, hi)
            used["focus_point"] = fp
        used["focus_distance_m"] = focus
        applied = self._gate(params).to(dev).reshape(-1).bool()
        if applied.numel() == 1 and b != 1:
            applied = applied.expand(b)
        used["applied"] = applied

        lens = self.lens(used, flags["sensor_width_mm"])
        signed = lens.coc_px(depth, w, signed=True) * applied.view(b, 1, 1, 1).to(depth.dtype)
        coc = signed if flags["signed_coc"] else signed.abs()

        out = input.clone()
        idx = applied.nonzero().flatten()
        if idx.numel():  # one render of the drawn images, each with its own aperture
            out[idx] = render_coc(input[idx], signed[idx], self._apertures(used, idx.tolist()),
                                  flags["method"], flags["gamma"], backend=flags["backend"])
        self._last = (coc, used)
        return out

    # ------------------------------------------------------------------ call
    def forward(self, input: torch.Tensor, depth: Optional[torch.Tensor] = None,
                params: Optional[Dict[str, torch.Tensor]] = None, *, return_coc: bool = False,
                return_params: bool = False, **kwargs: Any):
        """Blur ``input``; see the class docstring for the arguments and the results."""
        if isinstance(depth, dict) and params is None:  # kornia's positional ``aug(x, params)``
            depth, params = None, depth
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"`input` must be a torch.Tensor, got {type(input).__name__}")
        if not input.is_floating_point():
            raise TypeError(f"`input` must be a real floating point tensor, got dtype {input.dtype}")
        if input.dim() not in (2, 3, 4):
            raise LensBlurError(f"`input` must have shape (H, W), (C, H, W) or (B, C, H, W), got "
                                f"{tuple(input.shape)} ({input.dim()}-D)")
        check_not_meta(input, "input")
        if depth is not None:
            depth = _promote_depth(depth, input)
        self._call_depth = depth
        self._last = None
        try:
            out = super().forward(input, params=params, **kwargs)
        finally:
            self._call_depth = None
        if not (return_coc or return_params):
            return out
        coc, used = self._last
        if self.keepdim and input.dim() < 4:
            coc = coc.reshape(coc.shape[-input.dim():]) if input.dim() == 2 else coc[0]
        extra = ((coc,) if return_coc else ()) + ((dict(used),) if return_params else ())
        return (out, *extra)

    # ------------------------------------------------------------------ helpers
    def lens(self, params: Dict[str, torch.Tensor], sensor_width_mm: Optional[float] = None) -> ThinLens:
        """The :class:`~lensblur.ThinLens` of returned ``params`` (``(B,)`` parameters)."""
        if sensor_width_mm is None:
            sensor_width_mm = self.flags["sensor_width_mm"]
        return ThinLens(params["focal_length_mm"], params["f_number"], params["focus_distance_m"],
                        sensor_width_mm)

    def aperture_for(self, params: Dict[str, torch.Tensor], i: int) -> Aperture:
        """The :class:`~lensblur.Aperture` used for image ``i`` of returned ``params``."""
        return self._make_aperture(*self._aperture_key(params, i))

    def _aperture_key(self, params, i: int) -> tuple:
        idx = int(params["aperture_index"][i])
        if self.apertures[idx] == "polygon":
            return idx, int(params["blades"][i]), float(params["rotation_deg"][i])
        return idx, 0, 0.0

    def _apertures(self, used: Dict[str, torch.Tensor], idx: List[int]) -> List[Aperture]:
        """The apertures of images ``idx``; images with the same draw share one object, so
        :func:`~lensblur.render_coc` renders them together."""
        made: Dict[tuple, Aperture] = {}
        keys = [self._aperture_key(used, i) for i in idx]
        for k in keys:
            if k not in made:
                made[k] = self._make_aperture(*k)
        return [made[k] for k in keys]

    def _make_aperture(self, idx: int, blades: int, rotation_deg: float) -> Aperture:
        a = self.apertures[idx]
        if isinstance(a, Aperture):
            return a
        if a == "polygon":
            return Aperture.polygon(blades=blades, rotation_deg=rotation_deg)
        return Aperture.disk()

    def _depth(self, input: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self._call_depth is not None:
            depth = self._call_depth
            check_same_geometry(input, depth, "depth", "input")
            return depth
        return self.prior_depth(input, params)

    def prior_depth(self, image: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The depth ``(B, 1, H, W)`` in metres that ``depth_prior`` gives ``image`` ``(B, C, H, W)``
        for a draw ``params`` (``aug._params`` or the returned params)."""
        b, _, h, w = image.shape
        prior = self.depth_prior
        near, far = self.flags["depth_range_m"]
        if prior == "plane":
            dist = params["plane_distance_m"].to(image.device, torch.float64)
            return dist.view(b, 1, 1, 1).expand(b, 1, h, w)
        if prior == "ramp":
            t = torch.linspace(0.0, 1.0, h, device=image.device, dtype=torch.float64)
            disparity = 1.0 / far + t * (1.0 / near - 1.0 / far)
            return (1.0 / disparity).view(1, 1, h, 1).expand(b, 1, h, w)
        depth = prior(image)
        check_map(depth, "depth_prior(image)", positive=True)
        check_same_geometry(image, depth, "depth_prior(image)", "image")
        return depth


def _check_probability(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"`p` must be a real number, got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise LensBlurError(f"`p` must lie in [0, 1], got {p}")
    return float(p)


def _promote_depth(depth, input: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` / ``(B, H, W)`` / ``(B, 1, H, W)`` depth -> ``(B, 1, H, W)``, validated."""
    if not isinstance(depth, torch.Tensor):
        raise TypeError(f"`depth` must be a torch.Tensor or None, got {type(depth).__name__}")
    if depth.dim() == 2:
        depth = depth[None, None]
    elif depth.dim() == 3:
        depth = depth.unsqueeze(1)
    check_map(depth, "depth", positive=True)
    return depth
