"""Thin-lens optics: circle of confusion from focal length, f-number, focus and depth.

All lengths carry their unit in their name.  The image spans the whole sensor, so the pixel pitch
is ``sensor_width_mm / image_width_px``.
"""

from __future__ import annotations

import numbers
from typing import Union

import torch

from .validation import LensBlurError, check_lens_param, check_map

__all__ = ["ThinLens", "disparity_coc"]

Param = Union[float, torch.Tensor]


def _as_broadcast(value: Param, like: torch.Tensor) -> torch.Tensor:
    """Turn a lens parameter into a tensor that broadcasts against ``like``.

    A ``(B,)`` parameter is aligned with the batch dimension of ``like`` (its first dimension).
    """
    if isinstance(value, torch.Tensor):
        t = value.to(device=like.device, dtype=like.dtype if like.is_floating_point() else value.dtype)
        if t.dim() == 1 and like.dim() >= 1:
            if like.dim() > 1 or t.shape[0] != like.shape[0]:
                if t.shape[0] not in (1, like.shape[0]):
                    raise LensBlurError(
                        f"lens parameter of shape {tuple(t.shape)} does not match batch size "
                        f"{like.shape[0]} of depth")
            t = t.view(t.shape[0], *([1] * (like.dim() - 1)))
        return t
    return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)


class ThinLens:
    r"""A thin lens focused at ``focus_distance_m``.

    The diameter of the circle of confusion on the sensor for an object at distance
    :math:`S_2` is

    .. math::

        c_\text{sensor} = \frac{f^2}{N (S_1 - f)} \, \frac{|S_2 - S_1|}{S_2},
        \qquad c_\text{px} = \frac{c_\text{sensor}}{w_\text{sensor}} \, W_\text{px}

    with focal length :math:`f`, f-number :math:`N` and focus distance :math:`S_1`, all lengths in
    metres.  Every parameter may be a Python float, a 0-d tensor or a ``(B,)`` tensor (one value
    per batch item); gradients flow to every tensor parameter.

    Args:
        focal_length_mm: focal length :math:`f` in millimetres, > 0.
        f_number: f-number :math:`N`, > 0.
        focus_distance_m: focus distance :math:`S_1` in metres, > focal length.
        sensor_width_mm: sensor width in millimetres (36 for full frame), > 0.

    Example:
        >>> lens = ThinLens(focal_length_mm=50.0, f_number=1.8, focus_distance_m=2.0)
        >>> round(float(lens.coc_px(4.0, 6000)), 2)
        59.35
    """

    def __init__(self, focal_length_mm: Param = 50.0, f_number: Param = 2.8,
                 focus_distance_m: Param = 2.0, sensor_width_mm: Param = 36.0) -> None:
        check_lens_param(focal_length_mm, "focal_length_mm")
        check_lens_param(f_number, "f_number")
        check_lens_param(focus_distance_m, "focus_distance_m")
        check_lens_param(sensor_width_mm, "sensor_width_mm")
        f_m = torch.as_tensor(focal_length_mm).detach().double().cpu() / 1000.0
        s_m = torch.as_tensor(focus_distance_m).detach().double().cpu()
        if f_m.dim() and s_m.dim() and f_m.shape != s_m.shape and 1 not in (f_m.shape[0], s_m.shape[0]):
            raise LensBlurError(
                f"`focal_length_mm` of shape {tuple(f_m.shape)} and `focus_distance_m` of shape "
                f"{tuple(s_m.shape)} must have the same batch size")
        if bool((s_m <= f_m).any()):
            raise LensBlurError(
                "`focus_distance_m` must be greater than the focal length "
                f"(focal_length_mm={_fmt(focal_length_mm)} mm, focus_distance_m={_fmt(focus_distance_m)} m)")
        self.focal_length_mm = focal_length_mm
        self.f_number = f_number
        self.focus_distance_m = focus_distance_m
        self.sensor_width_mm = sensor_width_mm

    def __repr__(self) -> str:
        return (f"ThinLens(focal_length_mm={_fmt(self.focal_length_mm)}, f_number={_fmt(self.f_number)}, "
                f"focus_distance_m={_fmt(self.focus_distance_m)}, "
                f"sensor_width_mm={_fmt(self.sensor_width_mm)})")

    def coc_px(self, depth_m: Param, image_width_px: int, signed: bool = False) -> torch.Tensor:
        """Circle-of-confusion **diameter** in pixels for objects at ``depth_m`` metres.

        Args:
            depth_m: float, or tensor of any shape (typically ``(B, 1, H, W)``), metres, > 0.
                ``(B,)`` lens parameters are aligned with its first (batch) dimension.
            image_width_px: width of the image in pixels (the image spans the whole sensor).
            signed: if True, the result is negative for objects nearer than the focus plane.

        Returns:
            Tensor with the (broadcast) shape of ``depth_m``, in pixels.
        """
        if isinstance(image_width_px, bool) or not isinstance(image_width_px, numbers.Integral) \
                or image_width_px <= 0:
            raise LensBlurError(f"`image_width_px` must be a positive integer, got {image_width_px!r}")
        if isinstance(depth_m, torch.Tensor):
            if not depth_m.is_floating_point():
                raise TypeError(f"`depth_m` must be a floating point tensor, got dtype {depth_m.dtype}")
            if not bool(torch.isfinite(depth_m).all()):
                raise LensBlurError("`depth_m` contains NaN or infinite values")
            if not bool((depth_m > 0).all()):
                raise LensBlurError("`depth_m` must be > 0 everywhere")
            s2 = depth_m
        else:
            check_lens_param(depth_m, "depth_m")
            ref = next((p for p in (self.focal_length_mm, self.f_number, self.focus_distance_m,
                                    self.sensor_width_mm) if isinstance(p, torch.Tensor)), None)
            dtype = ref.dtype if ref is not None else torch.get_default_dtype()
            device = ref.device if ref is not None else None
            s2 = torch.tensor(float(depth_m), dtype=dtype, device=device)
        f = _as_broadcast(self.focal_length_mm, s2) / 1000.0
        n = _as_broadcast(self.f_number, s2)
        s1 = _as_broadcast(self.focus_distance_m, s2)
        sensor = _as_broadcast(self.sensor_width_mm, s2) / 1000.0
        diff = s2 - s1
        if not signed:
            diff = diff.abs()
        c_sensor = f * f / (n * (s1 - f)) * diff / s2
        return c_sensor / sensor * image_width_px


def _fmt(v: Param) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor(shape={tuple(v.shape)})" if v.dim() else f"{v.item():.4g}"
    return f"{v:.4g}"


def disparity_coc(disparity: torch.Tensor, focus_disparity: Param, strength: Param) -> torch.Tensor:
    """Circle of confusion from disparity: ``strength * |disparity - focus_disparity|`` pixels.

    This is the thin-lens CoC written in inverse depth (used by refocusing models): with
    disparity ``1/depth`` the strength equals ``f^2 S1 / (N (S1 - f))`` converted to pixels.

    Args:
        disparity: ``(B, 1, H, W)`` positive disparity (any scale).
        focus_disparity: float, 0-d or ``(B,)`` tensor: the disparity of the focus plane.
        strength: float, 0-d or ``(B,)`` tensor, >= 0: pixels of blur diameter per unit disparity.

    Returns:
        ``(B, 1, H, W)`` coc diameter in pixels.

    Example:
        >>> d = torch.full((1, 1, 2, 2), 0.5)
        >>> disparity_coc(d, 0.25, 40.0)[0, 0, 0, 0].item()
        10.0
    """
    check_map(disparity, "disparity", positive=True)
    _check_nonneg_param(focus_disparity, "focus_disparity")
    _check_nonneg_param(strength, "strength")
    fd = _as_broadcast(focus_disparity, disparity)
    k = _as_broadcast(strength, disparity)
    return k * (disparity - fd).abs()


def _check_nonneg_param(value: Param, name: str) -> None:
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number or a tensor, got bool")
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"`{name}` must be a floating point tensor, got dtype {value.dtype}")
        if value.dim() > 1:
            raise LensBlurError(f"`{name}` must be a 0-d or (B,) tensor, got shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value.detach()).all()) or not bool((value.detach() >= 0).all()):
            raise LensBlurError(f"`{name}` must be finite and >= 0")
    elif isinstance(value, numbers.Real):
        if not (float(value) >= 0) or float(value) == float("inf"):
            raise LensBlurError(f"`{name}` must be finite and >= 0, got {value}")
    else:
        raise TypeError(f"`{name}` must be a float or a tensor, got {type(value).__name__}")
