"""Hypothesis strategies and gradient checks for property-testing lens-blur layers.

Our own tests use these first; users can property-test their layers with them::

    from hypothesis import given
    from lensblur.testing import scenes, lenses

    @given(scenes(), lenses())
    def test_my_layer_keeps_constant_images(scene, lens):
        image, depth = scene
        ...

Beyond i.i.d. noise (:func:`images`, :func:`depths`, :func:`scenes`), the structured strategies
draw what breaks depth-of-field code: piecewise-planar depth with sharp occlusion edges
(:func:`layered_depths`), sparse highlights far brighter than the rest (:func:`highlights`), and
whole scenes with an in-focus layer anywhere in the stack (:func:`layered_scenes`, used by
``tests/test_structured_properties.py``).

Requires ``hypothesis`` (in the ``test`` extra).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import torch

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without the test extra
    raise ImportError("lensblur.testing needs the `hypothesis` package: pip install 'lensblur[test]'") from exc

from .apertures import Aperture
from .optics import ThinLens

__all__ = ["images", "depths", "coc_maps", "scenes", "lenses", "apertures", "gradcheck",
           "check_gradients"]
__all__ += ["layered_depths", "highlights", "layered_scenes", "LayeredScene"]


def _tensor(draw, shape, lo: float, hi: float, dtype) -> torch.Tensor:
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


def _shape(draw, batch, channels, height, width):
    pick = lambda s: draw(s) if isinstance(s, st.SearchStrategy) else s  # noqa: E731
    return pick(batch), pick(channels), pick(height), pick(width)


@st.composite
def images(draw, batch=st.integers(1, 2), channels=st.sampled_from([1, 3]),
           height=st.integers(3, 12), width=st.integers(3, 12), *, min_value: float = 0.0,
           max_value: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """``(B, C, H, W)`` images with values in ``[min_value, max_value]``.

    Each size argument is an int or a strategy.
    """
    return _tensor(draw, _shape(draw, batch, channels, height, width), min_value, max_value, dtype)


@st.composite
def depths(draw, batch=st.integers(1, 2), height=st.integers(3, 12), width=st.integers(3, 12), *,
           min_m: float = 0.5, max_m: float = 20.0, dtype=torch.float64) -> torch.Tensor:
    """``(B, 1, H, W)`` metric depth maps in ``[min_m, max_m]`` metres (> 0)."""
    b, _, h, w = _shape(draw, batch, 1, height, width)
    return _tensor(draw, (b, 1, h, w), min_m, max_m, dtype)


@st.composite
def coc_maps(draw, batch=st.integers(1, 2), height=st.integers(3, 12), width=st.integers(3, 12), *,
             max_px: float = 8.0, dtype=torch.float64) -> torch.Tensor:
    """``(B, 1, H, W)`` coc diameter fields in ``[0, max_px]`` pixels."""
    b, _, h, w = _shape(draw, batch, 1, height, width)
    return _tensor(draw, (b, 1, h, w), 0.0, max_px, dtype)


@st.composite
def scenes(draw, batch=st.integers(1, 2), channels=st.sampled_from([1, 3]),
           height=st.integers(3, 12), width=st.integers(3, 12), *, min_m: float = 0.5,
           max_m: float = 20.0, dtype=torch.float64):
    """``(image, depth)`` pairs of matching batch and size."""
    b, c, h, w = _shape(draw, batch, channels, height, width)
    return draw(images(b, c, h, w, dtype=dtype)), draw(depths(b, h, w, min_m=min_m, max_m=max_m,
                                                              dtype=dtype))


@st.composite
def lenses(draw, focal_length_mm=st.floats(18.0, 135.0), f_number=st.floats(1.2, 16.0),
           focus_distance_m=st.floats(0.5, 20.0), sensor_width_mm=st.sampled_from([36.0, 23.5])
           ) -> ThinLens:
    """Physically plausible thin lenses (focus always beyond the focal length)."""
    f = draw(focal_length_mm)
    s1 = max(draw(focus_distance_m), 2.0 * f / 1000.0)
    return ThinLens(focal_length_mm=f, f_number=draw(f_number), focus_distance_m=s1,
                    sensor_width_mm=draw(sensor_width_mm))


@st.composite
def apertures(draw, kinds: Sequence[str] = ("disk", "polygon", "image"), *,
              extras: bool = True) -> Aperture:
    """Disks, polygons (3–9 blades, any rotation and roundness) and random image kernels;
    with ``extras``, also anamorphic squeeze and cat's-eye vignetting."""
    kind = draw(st.sampled_from(list(kinds)))
    kw = {}
    if extras and draw(st.booleans()):
        kw = dict(squeeze=draw(st.floats(0.6, 1.8)), cats_eye=draw(st.floats(0.0, 1.0)))
    if kind == "disk":
        return Aperture.disk(**kw)
    if kind == "polygon":
        return Aperture.polygon(blades=draw(st.integers(3, 9)), rotation_deg=draw(st.floats(-180, 180)),
                                roundness=draw(st.floats(0.0, 1.0)), **kw)
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    table = _tensor(draw, (h, w), 0.0, 1.0, torch.float32)
    table[h // 2, w // 2] = 1.0
    return Aperture.from_image(table, **kw)


# ------------------------------------------------------------------ structured scenes
# i.i.d. noise has no occlusion edges, no in-focus regions and no highlights: the places where
# depth-of-field code breaks.  These strategies draw them on purpose.


@st.composite
def layered_depths(draw, height=st.integers(10, 20), width=st.integers(10, 20), *,
                   planes=st.integers(2, 4), min_m: float = 0.5, max_m: float = 20.0,
                   tilt: bool = True, dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    """Piecewise-planar depth with sharp occlusion edges: ``(depth (1, 1, H, W), labels (1, 1, H, W))``.

    Layer 0 is a background plane filling the frame; every further layer is a rectangle (any
    position and size, possibly cut by the border) painted over the previous ones and strictly
    **nearer** than all of them, so the map is what a camera sees of a stack of planar
    surfaces.  Each layer is a plane in 3D: its inverse depth is affine in the pixel
    coordinates (``1/z = u + a x + b y``; with ``tilt=False`` fronto-parallel), with slopes small
    enough that layers never interpenetrate.  ``labels`` holds the layer index of every pixel
    (``torch.long``); layer ``k`` is nearer than layer ``k - 1`` everywhere.
    """
    pick = lambda s: draw(s) if isinstance(s, st.SearchStrategy) else s  # noqa: E731
    h, w, k = pick(height), pick(width), pick(planes)
    # base inverse depths, far to near, with gaps of at least 20 % of the step
    inv_lo, inv_hi = 1.0 / max_m, 1.0 / min_m
    cuts = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k)))
    step = (inv_hi - inv_lo) / k
    base = [inv_lo + step * (i + 0.1 + 0.6 * c) for i, c in enumerate(cuts)]
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, h, dtype=torch.float64),
                            torch.linspace(-0.5, 0.5, w, dtype=torch.float64), indexing="ij")
    inv = torch.empty(h, w, dtype=torch.float64)
    labels = torch.zeros(h, w, dtype=torch.long)
    for i, u in enumerate(base):
        a, b = (draw(st.floats(-0.15, 0.15)) * step, draw(st.floats(-0.15, 0.15)) * step) if tilt else (0.0, 0.0)
        plane = u + a * xs + b * ys                    # within u +- 0.15 step: no interpenetration
        if i == 0:
            mask = torch.ones(h, w, dtype=torch.bool)
        else:
            r0, c0 = draw(st.integers(-2, h - 3)), draw(st.integers(-2, w - 3))
            rh, cw = draw(st.integers(3, max(3, h // 2 + 2))), draw(st.integers(3, max(3, w // 2 + 2)))
            mask = torch.zeros(h, w, dtype=torch.bool)
            mask[max(0, r0):max(0, r0 + rh), max(0, c0):max(0, c0 + cw)] = True
        inv = torch.where(mask, plane, inv)
        labels = torch.where(mask, torch.full_like(labels, i), labels)
    return (1.0 / inv).to(dtype)[None, None], labels[None, None]


@st.composite
def highlights(draw, height=st.integers(10, 20), width=st.integers(10, 20), *, count=st.integers(1, 4),
               background: Tuple[float, float] = (0.0, 0.3), peak: Tuple[float, float] = (5.0, 50.0),
               channels: int = 3, dtype=torch.float64) -> torch.Tensor:
    """``(1, C, H, W)`` dim images with a few sparse, very bright pixels (linear radiance far
    above 1, as specular highlights and lights are): where bokeh discs come from, and where a
    renderer that loses or invents energy shows it at once."""
    pick = lambda s: draw(s) if isinstance(s, st.SearchStrategy) else s  # noqa: E731
    h, w, n = pick(height), pick(width), pick(count)
    img = _tensor(draw, (1, channels, h, w), background[0], background[1], dtype)
    for _ in range(n):
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        img[0, :, y, x] = draw(st.floats(*peak))
    return img


@dataclasses.dataclass
class LayeredScene:
    """A scene drawn by :func:`layered_scenes`.

    Attributes:
        image: ``(1, C, H, W)`` linear radiance: a colour per layer with a little texture, plus
            sparse highlights.
        depth: ``(1, 1, H, W)`` piecewise-planar metres (:func:`layered_depths`).
        labels: ``(1, 1, H, W)`` layer index per pixel (higher = nearer).
        focus_distance_m: the depth of the in-focus layer (a fronto-parallel one).
        in_focus: ``(1, 1, H, W)`` bool, the pixels exactly at ``focus_distance_m`` (coc 0).
        highlight: ``(1, 1, H, W)`` bool, the highlight pixels.
    """

    image: torch.Tensor
    depth: torch.Tensor
    labels: torch.Tensor
    focus_distance_m: float
    in_focus: torch.Tensor
    highlight: torch.Tensor


@st.composite
def layered_scenes(draw, height=st.integers(10, 20), width=st.integers(10, 20), *,
                   planes=st.integers(2, 4), min_m: float = 0.5, max_m: float = 20.0,
                   channels: int = 3, highlight_count=st.integers(0, 3), dtype=torch.float64) -> LayeredScene:
    """Piecewise-planar scenes with sharp occlusion edges, an in-focus layer and highlights.

    One layer (any of them: background, middle or front) is made fronto-parallel and is the
    focus plane, so a renderer must leave it sharp; the others are tilted planes in front of or
    behind it.  The image gives each layer its own colour (plus 5 % texture), so occlusion
    edges are colour edges, and adds sparse highlights (values 5-50) anywhere.
    """
    pick = lambda s: draw(s) if isinstance(s, st.SearchStrategy) else s  # noqa: E731
    h, w, k = pick(height), pick(width), pick(planes)
    depth, labels = draw(layered_depths(h, w, planes=k, min_m=min_m, max_m=max_m, dtype=torch.float64))
    present = sorted(set(labels.flatten().tolist()))
    sharp = draw(st.sampled_from(present))
    z = float(depth[labels == sharp].median())
    depth = torch.where(labels == sharp, torch.full_like(depth, z), depth)   # fronto-parallel
    colours = _tensor(draw, (k, channels), 0.1, 0.9, torch.float64)
    image = colours[labels[0, 0]].permute(2, 0, 1)[None]                      # (1, C, H, W)
    image = image * (1 + 0.05 * (2 * _tensor(draw, image.shape, 0.0, 1.0, torch.float64) - 1))
    n = pick(highlight_count)
    highlight = torch.zeros(1, 1, h, w, dtype=torch.bool)
    for _ in range(n):
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        image[0, :, y, x] = draw(st.floats(5.0, 50.0))
        highlight[0, 0, y, x] = True
    return LayeredScene(image.to(dtype), depth.to(dtype), labels, z, labels == sharp, highlight)


def gradcheck(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, nondet_tol: float = 0.0) -> bool:
    """``torch.autograd.gradcheck`` of ``fn`` in float64 w.r.t. every floating input.

    The inputs are cloned to float64 leaves that require grad (the originals are not touched).
    Returns True or raises ``GradcheckError`` with the offending entries.

    Example:
        >>> import lensblur
        >>> img, coc = torch.rand(1, 1, 4, 5), torch.rand(1, 1, 4, 5) * 3 + 0.1
        >>> gradcheck(lambda i, c: lensblur.defocus(i, c, backend="torch"), img, coc)
        True
    """
    leaves = tuple(x.detach().to(torch.float64).clone().requires_grad_(x.is_floating_point())
                   if isinstance(x, torch.Tensor) else x for x in inputs)
    return torch.autograd.gradcheck(fn, leaves, eps=eps, atol=atol, rtol=rtol, nondet_tol=nondet_tol)


def check_gradients(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor,
                    reference: Optional[Callable[..., torch.Tensor]] = None,
                    atol: float = 1e-6, rtol: float = 1e-5, seed: int = 0) -> None:
    """Compare ``fn``'s gradients with ``reference``'s (or finite differences when None).

    Both are evaluated in float64 on the same inputs with the same random upstream gradient;
    raises ``AssertionError`` naming the input whose gradient differs.
    """
    if reference is None:
        gradcheck(fn, *inputs)
        return
    def grads(f):
        leaves = [x.detach().double().clone().requires_grad_() for x in inputs]
        out = f(*leaves)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return torch.autograd.grad(out, leaves, g, allow_unused=True)
    for i, (a, b) in enumerate(zip(grads(fn), grads(reference))):
        if a is None or b is None:
            if (a is None) != (b is None):
                raise AssertionError(f"gradient of input {i}: one function returns none")
            continue
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"gradient of input {i}: {m}")
