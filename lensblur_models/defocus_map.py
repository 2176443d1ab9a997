r"""Defocus maps in disparity space, and the blur strength ``K`` of a thin lens.

The thin-lens circle of confusion (see :class:`lensblur.ThinLens`) written in inverse depth is
linear in disparity:

.. math::

    c_\text{px}(S_2) = \frac{f^2}{N (S_1 - f)} \frac{|S_2 - S_1|}{S_2} \frac{W}{w_\text{sensor}}
                     = K \, \left| \frac{1}{S_2} - \frac{1}{S_1} \right|,
    \qquad K = \frac{f^2 S_1}{N (S_1 - f)} \frac{W}{w_\text{sensor}}

so a refocusing model only needs a disparity map, the disparity of the focus plane and one
number ``K`` (pixels of blur diameter per unit of disparity).  :func:`blur_strength_from_lens`
obtains ``K`` from :meth:`lensblur.ThinLens.coc_px` itself (no second copy of the formula), so
``defocus_map(1 / depth, 1 / lens.focus_distance_m, blur_strength_from_lens(lens, W))`` equals
``lens.coc_px(depth, W)``.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch

import lensblur
from lensblur import LensBlurError, ThinLens
from lensblur.validation import check_lens_param

__all__ = ["defocus_map", "blur_strength_from_lens", "focus_disparity_at"]

Param = Union[float, torch.Tensor]


def _per_batch(value: Param, like: torch.Tensor, name: str) -> torch.Tensor:
    """``value`` as a tensor broadcastable against ``like`` ``(B, 1, H, W)``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device) if not isinstance(value, torch.Tensor) \
        else value.to(device=like.device, dtype=like.dtype)
    if t.dim() == 1:
        if t.shape[0] not in (1, like.shape[0]):
            raise LensBlurError(f"`{name}` of shape {tuple(t.shape)} does not match batch size {like.shape[0]}")
        t = t.view(-1, 1, 1, 1)
    return t


def defocus_map(disparity: torch.Tensor, focus_disparity: Param, strength: Param,
                max_px: Optional[Param] = None) -> torch.Tensor:
    r"""Defocus map ``D = strength * |disparity - focus_disparity|``, clamped to ``max_px``.

    Args:
        disparity: ``(B, 1, H, W)`` positive disparity (``1 / depth_m`` for metric ``K``; any
            scale otherwise, with ``strength`` in the matching unit).
        focus_disparity: float, 0-d or ``(B,)`` tensor, >= 0: the disparity of the focus plane.
        strength: ``K``, float, 0-d or ``(B,)`` tensor, >= 0: pixels of coc diameter per unit of
            disparity (see :func:`blur_strength_from_lens`).
        max_px: optional float, 0-d or ``(B,)`` tensor, > 0: upper clamp of the map in pixels.

    Returns:
        ``(B, 1, H, W)`` coc **diameter** in pixels, in ``disparity``'s dtype; differentiable
        w.r.t. every tensor argument (zero gradient where the clamp is active).

    Example:
        >>> d = torch.tensor([[[[0.25, 0.5, 1.0]]]])
        >>> defocus_map(d, 0.5, 40.0).flatten().tolist()
        [10.0, 0.0, 20.0]
        >>> defocus_map(d, 0.5, 40.0, max_px=12.0).flatten().tolist()
        [10.0, 0.0, 12.0]
    """
    coc = lensblur.disparity_coc(disparity, focus_disparity, strength)  # validates all three
    if max_px is None:
        return coc
    check_lens_param(max_px, "max_px")
    return torch.minimum(coc, _per_batch(max_px, coc, "max_px"))


def blur_strength_from_lens(lens: ThinLens, image_width_px: int) -> torch.Tensor:
    r"""The blur strength ``K`` (pixels per unit of inverse metres) of a thin lens.

    ``K`` is read off :meth:`lensblur.ThinLens.coc_px` at the reference depth ``2 S_1`` (where
    ``|1/S_2 - 1/S_1| = 1 / (2 S_1)``), so that for every depth

    ``defocus_map(1 / depth_m, 1 / lens.focus_distance_m, K) == lens.coc_px(depth_m, image_width_px)``.

    Analytically ``K = f^2 S_1 / (N (S_1 - f)) * image_width_px / sensor_width``.

    Args:
        lens: a :class:`lensblur.ThinLens` (parameters may be floats, 0-d or ``(B,)`` tensors).
        image_width_px: image width in pixels (the image spans the sensor).

    Returns:
        0-d tensor, or ``(B,)`` when a lens parameter is ``(B,)``; float64 when every lens
        parameter is a Python number, else the parameters' dtype.  Differentiable w.r.t. the lens
        parameters.

    Example:
        >>> lens = ThinLens(focal_length_mm=50.0, f_number=1.8, focus_distance_m=2.0)
        >>> k = blur_strength_from_lens(lens, 6000)
        >>> round(float(k * abs(1 / 4.0 - 1 / 2.0)), 2)   # = lens.coc_px(4.0, 6000)
        59.35
    """
    if not isinstance(lens, ThinLens):
        raise TypeError(f"`lens` must be a lensblur.ThinLens, got {type(lens).__name__}")
    if isinstance(image_width_px, bool) or not isinstance(image_width_px, numbers.Integral) \
            or image_width_px <= 0:
        raise LensBlurError(f"`image_width_px` must be a positive integer, got {image_width_px!r}")
    params = (lens.focal_length_mm, lens.f_number, lens.focus_distance_m, lens.sensor_width_mm)
    ref = next((p for p in params if isinstance(p, torch.Tensor)), None)
    dtype = ref.dtype if ref is not None else torch.float64
    device = ref.device if ref is not None else None
    s1 = torch.as_tensor(lens.focus_distance_m, dtype=dtype, device=device)
    depth_ref = 2.0 * s1
    batch = max((p.shape[0] for p in params if isinstance(p, torch.Tensor) and p.dim() == 1), default=0)
    if depth_ref.dim() == 1 and depth_ref.shape[0] == 1 and batch > 1:
        depth_ref = depth_ref.expand(batch)
    # |1/(2 S1) - 1/S1| = 1/(2 S1), so K = coc_px(2 S1) * 2 S1
    return lens.coc_px(depth_ref, int(image_width_px)) * depth_ref


def focus_disparity_at(disparity: torch.Tensor, focus_xy: Union[Sequence[float], torch.Tensor],
                       window: int = 3) -> torch.Tensor:
    """The disparity of the focus plane chosen by clicking the pixel ``focus_xy``.

    Args:
        disparity: ``(B, 1, H, W)`` positive disparity.
        focus_xy: ``(x, y)`` pixel coordinates (x right, y down), shared by the batch, or a
            ``(B, 2)`` tensor with one point per batch item.  Must lie inside the image.
        window: odd size of the square window whose **median** is taken (robust to edges).

    Returns:
        ``(B,)`` focus disparity.

    Example:
        >>> d = torch.arange(16.0).view(1, 1, 4, 4) + 1
        >>> focus_disparity_at(d, (2, 1), window=1).tolist()
        [7.0]
    """
    if not isinstance(disparity, torch.Tensor):
        raise TypeError(f"`disparity` must be a torch.Tensor, got {type(disparity).__name__}")
    if not disparity.is_floating_point():
        raise TypeError(f"`disparity` must be a floating point tensor, got dtype {disparity.dtype}")
    if disparity.dim() != 4 or disparity.shape[1] != 1 or disparity.numel() == 0:
        raise LensBlurError(f"`disparity` must have shape (B, 1, H, W), got {tuple(disparity.shape)}")
    if not bool(torch.isfinite(disparity).all()) or not bool((disparity > 0).all()):
        raise LensBlurError("`disparity` must be finite and > 0 everywhere")
    b, _, h, w = disparity.shape
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise LensBlurError(f"`window` must be a positive odd integer, got {window!r}")
    xy = _focus_points(focus_xy, b, h, w)
    r = window // 2
    out = []
    for i, (x, y) in enumerate(xy):
        patch = disparity[i, 0, max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1]
        out.append(patch.reshape(-1).median())
    return torch.stack(out)


def _focus_points(focus_xy, b: int, h: int, w: int) -> list:
    if isinstance(focus_xy, torch.Tensor):
        if focus_xy.shape not in ((2,), (b, 2)):
            raise LensBlurError(f"`focus_xy` must have shape (2,) or ({b}, 2), got {tuple(focus_xy.shape)}")
        pts = focus_xy.detach().reshape(-1, 2).tolist()
    else:
        try:
            pts = [[float(focus_xy[0]), float(focus_xy[1])]]
            if len(focus_xy) != 2:
                raise TypeError
        except (TypeError, IndexError, ValueError):
            raise TypeError(f"`focus_xy` must be an (x, y) pair or a (B, 2) tensor, got {focus_xy!r}") from None
    if len(pts) == 1:
        pts = pts * b
    res = []
    for x, y in pts:
        xi, yi = int(round(x)), int(round(y))
        if not (0 <= xi < w and 0 <= yi < h):
            raise LensBlurError(f"`focus_xy` ({x}, {y}) lies outside the {w}x{h} image")
        res.append((xi, yi))
    return res
