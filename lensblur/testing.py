"""Hypothesis strategies and gradient checks for property-testing lens-blur layers.

Our own tests use these first; users can property-test their layers with them::

    from hypothesis import given
    from lensblur.testing import scenes, lenses

    @given(scenes(), lenses())
    def test_my_layer_keeps_constant_images(scene, lens):
        image, depth = scene
        ...

Requires ``hypothesis`` (in the ``test`` extra).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - exercised only without the test extra
    raise ImportError("lensblur.testing needs the `hypothesis` package: pip install 'lensblur[test]'") from exc

from .apertures import Aperture
from .optics import ThinLens

__all__ = ["images", "depths", "coc_maps", "scenes", "lenses", "apertures", "gradcheck",
           "check_gradients"]


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
