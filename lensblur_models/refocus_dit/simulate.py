r"""Simulated refocusing data: (reference, target, condition) pairs and multi-focus renders.

A refocusing condition is three numbers ``(x, y, b)``:

* ``x, y`` in ``[0, 1]``: the focus point in normalised image coordinates (``x`` along the
  width); the focus plane is the depth of the pixel under it,
  ``S1 = depth[floor(y * H), floor(x * W)]`` (clamped to the image).
* ``b`` in ``[0, 1]``: the bokeh level.  It sets the blur strength
  ``K = b * max_strength * W`` (pixels of coc diameter per diopter), i.e. the thin-lens circle of
  confusion of an object at depth ``S2`` is

  .. math::  c_\text{px} = K \left| \frac{1}{S_2} - \frac{1}{S_1} \right|

  A ``b = 1`` render at 1 diopter of defocus has a coc of ``max_strength`` image widths.  The
  condition is turned into a :class:`lensblur.ThinLens` (fixed focal length and sensor, f-number
  solved from ``K``) and rendered with :func:`lensblur.render`, so the simulated data is exactly
  what the library renders.

**Multi-focus image** (the stacking target).  For focus planes ``S1_1 ... S1_k`` rendered at the
same bokeh level, the multi-focus image is the render whose per-pixel signed coc is the one of
the plane with the smallest coc magnitude:

.. math::  i^*(p) = \arg\min_i |c_i(p)|,\qquad c_\text{multi}(p) = c_{i^*(p)}(p)

and the stacking masks are the one-hot maps ``M_i(p) = [i = i^*(p)]`` (the plane nearest in
disparity, which is what ``|depth - focus depth_i|`` selects).  With ``method="gather"`` (each
output pixel averages its own footprint) the identity

.. math::  \sum_i M_i \, \text{render}_i = \text{render}_\text{multi}

holds exactly; with ``"layered"`` it holds up to occlusion effects at depth edges.  Every pixel
that lies at one of the focus depths is sharp in the multi-focus image.

Everything here is deterministic given a :class:`torch.Generator`.

Example:
    >>> import torch
    >>> from lensblur.scene import make_scene
    >>> img, depth = make_scene(16, 16)
    >>> gen = torch.Generator().manual_seed(0)
    >>> batch = simulate_batch(img, depth, generator=gen)
    >>> batch.reference.shape, batch.targets.shape, batch.conditions.shape
    (torch.Size([1, 3, 16, 16]), torch.Size([1, 2, 3, 16, 16]), torch.Size([1, 2, 3]))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

import lensblur
from lensblur import Aperture, LensBlurError, ThinLens
from lensblur.render import RENDER_METHODS
from lensblur.validation import check_image, check_map, check_same_geometry

__all__ = [
    "DEFAULT_RENDER_METHOD",
    "SimulationConfig",
    "RefocusBatch",
    "focus_depth_at",
    "lens_for_condition",
    "render_condition",
    "render_signed_coc",
    "multi_focus_render",
    "sample_conditions",
    "simulate_batch",
]

#: Render method of the simulation (occlusion-aware ``"layered"``; ``"gather"`` makes the stacking
#: identity exact, see the module docstring).  Every default in this package reads this one line.
DEFAULT_RENDER_METHOD = "layered"

_MAX_F_NUMBER = 1e6  # bokeh level 0: an (almost) pinhole lens, coc < 1e-3 px for any scene


@dataclass
class SimulationConfig:
    """How conditions are sampled and rendered.

    Attributes:
        focal_length_mm, sensor_width_mm: the simulated camera (the f-number follows from ``b``).
        max_strength: blur strength at ``b = 1`` as a fraction of the image width per diopter.
        bokeh_range: ``(lo, hi)`` interval the bokeh level is drawn from.
        num_focus_planes: ``k``, target focus planes per scene (all at one bokeh level); ``>= 2``
            gives the stacking constraint something to stack.
        method: ``lensblur.render`` method.
        gamma: image encoding passed to ``lensblur.render`` (2.2 for sRGB-like data).
        aperture: bokeh shape (``None`` = disk).
        backend: kernel backend for the blur.
    """

    focal_length_mm: float = 50.0
    sensor_width_mm: float = 36.0
    max_strength: float = 0.25
    bokeh_range: Tuple[float, float] = (0.0, 1.0)
    num_focus_planes: int = 2
    method: str = DEFAULT_RENDER_METHOD
    gamma: float = 1.0
    aperture: Optional[Aperture] = None
    backend: str = "auto"

    def __post_init__(self):
        if not self.max_strength > 0:
            raise LensBlurError(f"`max_strength` must be > 0, got {self.max_strength}")
        lo, hi = self.bokeh_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise LensBlurError(f"`bokeh_range` must satisfy 0 <= lo <= hi <= 1, got {self.bokeh_range}")
        if int(self.num_focus_planes) != self.num_focus_planes or self.num_focus_planes < 1:
            raise LensBlurError(f"`num_focus_planes` must be a positive int, got {self.num_focus_planes}")
        if self.method not in RENDER_METHODS:
            raise LensBlurError(f"`method` must be one of {RENDER_METHODS}, got {self.method!r}")


@dataclass
class RefocusBatch:
    """One simulated training batch (``k`` = ``num_focus_planes``).

    Attributes:
        image: ``(B, C, H, W)`` all-in-focus input.
        depth: ``(B, 1, H, W)`` metric depth, metres.
        reference: ``(B, C, H, W)`` the input the model refocuses (rendered at
            ``reference_condition``).
        reference_condition: ``(B, 3)`` its ``(x, y, b)``.
        conditions: ``(B, k, 3)`` target conditions; all ``k`` share one bokeh level.
        targets: ``(B, k, C, H, W)`` renders at ``conditions`` (the pairs' targets).
        multi_focus: ``(B, C, H, W)`` multi-focus render of the ``k`` focus planes.
        masks: ``(B, k, 1, H, W)`` one-hot stacking masks (sum to 1 over ``k``).
    """

    image: torch.Tensor
    depth: torch.Tensor
    reference: torch.Tensor
    reference_condition: torch.Tensor
    conditions: torch.Tensor
    targets: torch.Tensor
    multi_focus: torch.Tensor
    masks: torch.Tensor

    def to(self, *args, **kwargs) -> "RefocusBatch":
        return RefocusBatch(**{f.name: getattr(self, f.name).to(*args, **kwargs)
                               for f in dataclasses.fields(self)})


def _check_condition(condition, batch: int, name: str = "condition") -> torch.Tensor:
    if not isinstance(condition, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(condition).__name__}")
    if condition.shape != (batch, 3):
        raise LensBlurError(f"`{name}` must have shape ({batch}, 3) = (x, y, bokeh), "
                            f"got {tuple(condition.shape)}")
    if not bool(((condition >= 0) & (condition <= 1)).all()):
        raise LensBlurError(f"`{name}` values (x, y, bokeh) must lie in [0, 1]")
    return condition


def focus_depth_at(depth: torch.Tensor, focus_xy: torch.Tensor) -> torch.Tensor:
    """Depth under the focus point: ``depth[b, 0, floor(y*H), floor(x*W)]`` (clamped).

    Args:
        depth: ``(B, 1, H, W)`` metres; focus_xy: ``(B, 2)`` normalised ``(x, y)`` in ``[0, 1]``.

    Returns:
        ``(B,)`` focus distance in metres.

    Example:
        >>> import torch
        >>> d = torch.arange(4.0).view(1, 1, 2, 2) + 1
        >>> focus_depth_at(d, torch.tensor([[0.9, 0.1]]))
        tensor([2.])
    """
    b, _, h, w = depth.shape
    col = (focus_xy[:, 0] * w).long().clamp(0, w - 1)
    row = (focus_xy[:, 1] * h).long().clamp(0, h - 1)
    return depth[torch.arange(b, device=depth.device), 0, row.to(depth.device), col.to(depth.device)]


def lens_for_condition(depth: torch.Tensor, condition: torch.Tensor,
                       config: Optional[SimulationConfig] = None) -> ThinLens:
    """The :class:`lensblur.ThinLens` that realises ``condition = (x, y, b)`` on ``depth``.

    Focus distance: :func:`focus_depth_at`; f-number solved from ``K = b * max_strength * W``:
    ``N = f^2 S1 W / (K (S1 - f) w_sensor)`` (capped at 1e6 for ``b = 0``), so that
    ``lens.coc_px(S2, W) = K |1/S2 - 1/S1|``.

    Args:
        depth: ``(B, 1, H, W)`` metres; condition: ``(B, 3)``.

    Returns:
        a lens with ``(B,)`` ``f_number`` and ``focus_distance_m``.
    """
    config = config or SimulationConfig()
    check_map(depth, "depth", positive=True)
    b, _, _, w = depth.shape
    condition = _check_condition(condition, b)
    s1 = focus_depth_at(depth, condition[:, :2]).double()
    f_m = config.focal_length_mm / 1000.0
    if bool((s1 <= f_m).any()):
        raise LensBlurError(f"`depth` at the focus point must exceed the focal length "
                            f"({config.focal_length_mm} mm); got {float(s1.min()):.4g} m")
    strength = condition[:, 2].double().to(s1.device) * config.max_strength * w
    sensor_m = config.sensor_width_mm / 1000.0
    n = (f_m * f_m * s1 * w) / (strength.clamp_min(1e-300) * (s1 - f_m) * sensor_m)
    n = n.clamp(max=_MAX_F_NUMBER)
    dt = depth.dtype
    return ThinLens(focal_length_mm=config.focal_length_mm, f_number=n.to(dt),
                    focus_distance_m=s1.to(dt), sensor_width_mm=config.sensor_width_mm)


def render_condition(image: torch.Tensor, depth: torch.Tensor, condition: torch.Tensor,
                     config: Optional[SimulationConfig] = None) -> torch.Tensor:
    """Render ``image`` at ``condition`` with :func:`lensblur.render` (``(B, C, H, W)``)."""
    config = config or SimulationConfig()
    lens = lens_for_condition(depth, condition, config)
    return lensblur.render(image, depth, lens, config.aperture, method=config.method,
                           gamma=config.gamma, backend=config.backend)


def render_signed_coc(image: torch.Tensor, signed_coc: torch.Tensor,
                      config: Optional[SimulationConfig] = None) -> torch.Tensor:
    """Render ``image`` with a given signed coc map: :func:`lensblur.render_coc` with the
    config's aperture, method, gamma and backend.  For
    ``signed_coc = lens.coc_px(depth, W, signed=True)`` this equals ``lensblur.render``."""
    config = config or SimulationConfig()
    return lensblur.render_coc(image, signed_coc, config.aperture, config.method, config.gamma,
                               backend=config.backend)


def multi_focus_render(image: torch.Tensor, depth: torch.Tensor, conditions: torch.Tensor,
                       config: Optional[SimulationConfig] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Multi-focus render of ``k`` focus planes and the one-hot stacking masks.

    Per pixel the signed coc of the plane with the smallest ``|coc|`` is used (see the module
    docstring); ties go to the lowest index.

    Args:
        image: ``(B, C, H, W)``; depth: ``(B, 1, H, W)`` metres;
        conditions: ``(B, k, 3)`` ``(x, y, b)`` per plane (``b`` may differ per plane; the
            stacking constraint uses one ``b`` for all planes).

    Returns:
        ``(multi_focus (B, C, H, W), masks (B, k, 1, H, W))``.
    """
    config = config or SimulationConfig()
    if not isinstance(conditions, torch.Tensor) or conditions.dim() != 3 or conditions.shape[-1] != 3 \
            or conditions.shape[0] != image.shape[0]:
        raise LensBlurError(f"`conditions` must have shape ({image.shape[0]}, k, 3), "
                            f"got {tuple(getattr(conditions, 'shape', ()))}")
    b, k = conditions.shape[:2]
    w = image.shape[-1]
    depth_k = depth.repeat_interleave(k, dim=0)
    lens = lens_for_condition(depth_k, conditions.reshape(b * k, 3), config)
    coc = lens.coc_px(depth_k, w, signed=True).reshape(b, k, 1, *depth.shape[-2:])
    idx = coc.abs().argmin(dim=1, keepdim=True)  # (B, 1, 1, H, W)
    signed = coc.gather(1, idx)[:, 0]
    masks = torch.zeros_like(coc).scatter_(1, idx, 1.0).to(image.dtype)
    return render_signed_coc(image, signed, config), masks


def _uniform(n: int, lo: float, hi: float, gen: Optional[torch.Generator]) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64).float()


def sample_conditions(batch: int, num_planes: int, config: Optional[SimulationConfig] = None,
                      generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw a reference condition ``(B, 3)`` and ``k`` target conditions ``(B, k, 3)``.

    Focus points are uniform in the unit square; the reference bokeh level and the (shared)
    target bokeh level are uniform in ``config.bokeh_range``.  CPU tensors.
    """
    config = config or SimulationConfig()
    lo, hi = config.bokeh_range
    ref = torch.stack([_uniform(batch, 0, 1, generator), _uniform(batch, 0, 1, generator),
                       _uniform(batch, lo, hi, generator)], dim=1)
    xy = _uniform(batch * num_planes * 2, 0, 1, generator).view(batch, num_planes, 2)
    bok = _uniform(batch, lo, hi, generator).view(batch, 1, 1).expand(batch, num_planes, 1)
    return ref, torch.cat([xy, bok], dim=-1)


def simulate_batch(image: torch.Tensor, depth: torch.Tensor,
                   config: Optional[SimulationConfig] = None,
                   generator: Optional[torch.Generator] = None,
                   reference_condition: Optional[torch.Tensor] = None,
                   conditions: Optional[torch.Tensor] = None) -> RefocusBatch:
    """Simulate a :class:`RefocusBatch` from all-in-focus images and their depth.

    Conditions are drawn with :func:`sample_conditions` (CPU ``generator``, so the result is
    deterministic for a seed on any device) unless given.  All renders of the batch run as one
    batched :func:`lensblur.render` call with per-sample lens parameters.

    Args:
        image: ``(B, C, H, W)`` all-in-focus image; depth: ``(B, 1, H, W)`` metres.
        config: :class:`SimulationConfig`.
        generator: CPU generator for the conditions.
        reference_condition: optional ``(B, 3)``; conditions: optional ``(B, k, 3)``.
    """
    config = config or SimulationConfig()
    check_image(image, "image")
    check_map(depth, "depth", positive=True)
    check_same_geometry(image, depth, "depth")
    b = image.shape[0]
    k = int(config.num_focus_planes) if conditions is None else conditions.shape[1]
    ref_c, tgt_c = sample_conditions(b, k, config, generator)
    if reference_condition is not None:
        ref_c = _check_condition(reference_condition, b, "reference_condition").detach().cpu().float()
    if conditions is not None:
        if conditions.dim() != 3 or conditions.shape[0] != b or conditions.shape[-1] != 3:
            raise LensBlurError(f"`conditions` must have shape ({b}, k, 3), got {tuple(conditions.shape)}")
        tgt_c = conditions.detach().cpu().float()
    ref_c, tgt_c = ref_c.to(image.device), tgt_c.to(image.device)
    # one batched render: references then the k targets of every sample
    all_img = torch.cat([image, image.repeat_interleave(k, dim=0)])
    all_depth = torch.cat([depth, depth.repeat_interleave(k, dim=0)])
    all_cond = torch.cat([ref_c, tgt_c.reshape(b * k, 3)])
    renders = render_condition(all_img, all_depth, all_cond, config)
    reference, targets = renders[:b], renders[b:].reshape(b, k, *image.shape[1:])
    multi, masks = multi_focus_render(image, depth, tgt_c, config)
    return RefocusBatch(image=image, depth=depth, reference=reference, reference_condition=ref_c,
                        conditions=tgt_c, targets=targets, multi_focus=multi, masks=masks)
