"""Thin-lens optics: circle of confusion from focal length, f-number, focus and depth.

All lengths carry their unit in their name.  The image spans the whole sensor, so the pixel pitch
is ``sensor_width_mm / image_width_px``.
"""

from __future__ import annotations

import math
import numbers
from typing import Union

import torch

from .validation import LensBlurError, check_lens_param, check_map, check_not_meta

__all__ = ["ThinLens", "disparity_coc", "chromatic_shifts"]

Param = Union[float, torch.Tensor]


def _as_broadcast(value: Param, like: torch.Tensor, name: str = "lens parameter",
                  like_name: str = "depth") -> torch.Tensor:
    """Turn a lens parameter into a tensor that broadcasts against ``like``.

    A ``(B,)`` parameter is aligned with the batch dimension of ``like`` (its first dimension).
    """
    if isinstance(value, torch.Tensor):
        t = value.to(device=like.device, dtype=like.dtype if like.is_floating_point() else value.dtype)
        if t.dim() == 1 and like.dim() >= 1:
            if like.dim() > 1 or t.shape[0] != like.shape[0]:
                if t.shape[0] not in (1, like.shape[0]):
                    raise LensBlurError(
                        f"`{name}` of shape {tuple(t.shape)} does not match batch size "
                        f"{like.shape[0]} of `{like_name}`")
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
        chromatic: longitudinal chromatic aberration, the relative focal-length shift between
            neighbouring colour channels (0 = none, the default; about 0.001-0.005 for real lenses;
            ``|chromatic| < 0.2``).  See :meth:`channel_coc_px`.

    Example:
        >>> lens = ThinLens(focal_length_mm=50.0, f_number=1.8, focus_distance_m=2.0)
        >>> round(float(lens.coc_px(4.0, 6000)), 2)
        59.35
    """

    def __init__(self, focal_length_mm: Param = 50.0, f_number: Param = 2.8,
                 focus_distance_m: Param = 2.0, sensor_width_mm: Param = 36.0,
                 chromatic: Param = 0.0) -> None:
        check_lens_param(focal_length_mm, "focal_length_mm")
        check_lens_param(f_number, "f_number")
        check_lens_param(focus_distance_m, "focus_distance_m")
        check_lens_param(sensor_width_mm, "sensor_width_mm")
        named = {"focal_length_mm": focal_length_mm, "f_number": f_number,
                 "focus_distance_m": focus_distance_m, "sensor_width_mm": sensor_width_mm}
        if isinstance(chromatic, torch.Tensor):
            named["chromatic"] = chromatic
        sizes = {k: v.shape[0] for k, v in named.items() if isinstance(v, torch.Tensor) and v.dim() == 1}
        if len(set(sizes.values()) - {1}) > 1:
            raise LensBlurError("(B,) lens parameters must have the same length (or length 1), got "
                                + ", ".join(f"`{k}` of length {n}" for k, n in sizes.items()))
        # compared in float64 from the values as given (a Python float is not rounded to float32)
        f_m = torch.as_tensor(focal_length_mm, dtype=torch.float64).detach().cpu() / 1000.0 \
            if not isinstance(focal_length_mm, torch.Tensor) else focal_length_mm.detach().double().cpu() / 1000.0
        s_m = torch.as_tensor(focus_distance_m, dtype=torch.float64).detach().cpu() \
            if not isinstance(focus_distance_m, torch.Tensor) else focus_distance_m.detach().double().cpu()
        if bool((s_m <= f_m).any()):
            raise LensBlurError(
                "`focus_distance_m` must be greater than the focal length "
                f"(focal_length_mm={_fmt(focal_length_mm)} mm, focus_distance_m={_fmt(focus_distance_m)} m)")
        self.focal_length_mm = focal_length_mm
        self.f_number = f_number
        self.focus_distance_m = focus_distance_m
        self.sensor_width_mm = sensor_width_mm
        self.chromatic = _check_chromatic(chromatic)

    def __repr__(self) -> str:
        extra = "" if not self.has_chromatic else f", chromatic={_fmt(self.chromatic)}"
        return (f"ThinLens(focal_length_mm={_fmt(self.focal_length_mm)}, f_number={_fmt(self.f_number)}, "
                f"focus_distance_m={_fmt(self.focus_distance_m)}, "
                f"sensor_width_mm={_fmt(self.sensor_width_mm)}{extra})")

    @property
    def has_chromatic(self) -> bool:
        """True when the lens has chromatic aberration (a tensor ``chromatic`` always counts)."""
        return isinstance(self.chromatic, torch.Tensor) or self.chromatic != 0.0

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
        s2 = _at_least_fp32(self._depth_tensor(depth_m))
        f = _as_broadcast(self.focal_length_mm, s2, "focal_length_mm", "depth_m") / 1000.0
        n = _as_broadcast(self.f_number, s2, "f_number", "depth_m")
        s1 = _as_broadcast(self.focus_distance_m, s2, "focus_distance_m", "depth_m")
        sensor = _as_broadcast(self.sensor_width_mm, s2, "sensor_width_mm", "depth_m") / 1000.0
        diff = s2 - s1
        if not signed:
            diff = diff.abs()
        c_sensor = f * f / (n * (s1 - f)) * diff / s2
        return c_sensor / sensor * image_width_px

    def channel_coc_px(self, depth_m: torch.Tensor, image_width_px: int, num_channels: int,
                       signed: bool = False) -> torch.Tensor:
        r"""Per-channel coc diameters in pixels with longitudinal chromatic aberration.

        Channel :math:`c` sees the focal length :math:`f_c = f (1 + \chi k_c)` with
        :math:`k = (+1, 0, -1)` for RGB (RGBA: alpha like green; one channel: 0): blue focuses
        shorter than green, red longer.  The sensor stays where green is in focus,
        :math:`v = f S_1 / (S_1 - f)`, and the aperture diameter is :math:`f/N`, so

        .. math::

            c_c = \frac{f}{N} \left(\frac{v (S_2 - f_c)}{f_c S_2} - 1\right),

        which is :meth:`coc_px` for :math:`\chi = 0` and for the green channel.  Channel
        :math:`c` is sharpest at :math:`S_2 = f_c v / (v - f_c)` (nearer than the focus distance
        for blue, farther for red when :math:`\chi > 0`), so defocused edges get coloured fringes.

        Args:
            depth_m: ``(B, 1, H, W)`` depth in metres.
            image_width_px: image width in pixels.
            num_channels: number of image channels (1, 3 or 4 when ``chromatic != 0``).
            signed: negative for the near side of each channel's own focus plane.

        Returns:
            ``(B, num_channels, H, W)`` coc diameters in pixels.

        Example:
            >>> lens = ThinLens(50.0, 2.0, 2.0, chromatic=0.002)
            >>> c = lens.channel_coc_px(torch.full((1, 1, 1, 1), 2.0), 1000, 3)
            >>> [round(float(v), 2) for v in c.flatten()]   # green is in focus, red/blue are not
            [1.42, 0.0, 1.43]
        """
        if isinstance(image_width_px, bool) or not isinstance(image_width_px, numbers.Integral) \
                or image_width_px <= 0:
            raise LensBlurError(f"`image_width_px` must be a positive integer, got {image_width_px!r}")
        if not isinstance(depth_m, torch.Tensor) or depth_m.dim() != 4 or depth_m.shape[1] != 1:
            raise LensBlurError("`depth_m` must be a (B, 1, H, W) tensor")
        if isinstance(num_channels, bool) or not isinstance(num_channels, numbers.Integral) \
                or num_channels <= 0:
            raise LensBlurError(f"`num_channels` must be a positive integer, got {num_channels!r}")
        shifts = chromatic_shifts(num_channels) if self.has_chromatic else [0.0] * num_channels
        s2 = _at_least_fp32(self._depth_tensor(depth_m))
        f = _as_broadcast(self.focal_length_mm, s2, "focal_length_mm", "depth_m") / 1000.0
        n = _as_broadcast(self.f_number, s2, "f_number", "depth_m")
        s1 = _as_broadcast(self.focus_distance_m, s2, "focus_distance_m", "depth_m")
        sensor = _as_broadcast(self.sensor_width_mm, s2, "sensor_width_mm", "depth_m") / 1000.0
        chi = _as_broadcast(self.chromatic, s2, "chromatic", "depth_m")
        k = torch.tensor(shifts, dtype=s2.dtype, device=s2.device).view(1, -1, 1, 1)
        f_c = f * (1.0 + chi * k)
        v = f * s1 / (s1 - f)
        c_sensor = f / n * (v * (s2 - f_c) / (f_c * s2) - 1.0)
        if not signed:
            c_sensor = c_sensor.abs()
        return c_sensor / sensor * image_width_px

    def _depth_tensor(self, depth_m: Param) -> torch.Tensor:
        """``depth_m`` validated, as a tensor (a float takes the dtype/device of the parameters)."""
        if isinstance(depth_m, torch.Tensor):
            if not depth_m.is_floating_point():
                raise TypeError(f"`depth_m` must be a floating point tensor, got dtype {depth_m.dtype}")
            check_not_meta(depth_m, "depth_m")
            if not bool(torch.isfinite(depth_m).all()):
                raise LensBlurError("`depth_m` contains NaN or infinite values")
            if not bool((depth_m > 0).all()):
                raise LensBlurError("`depth_m` must be > 0 everywhere")
            return depth_m
        check_lens_param(depth_m, "depth_m")
        ref = next((p for p in (self.focal_length_mm, self.f_number, self.focus_distance_m,
                                self.sensor_width_mm) if isinstance(p, torch.Tensor)), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else None
        return torch.tensor(float(depth_m), dtype=dtype, device=device)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 depth is computed in float32: a coc in pixels easily exceeds fp16's 65504."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def chromatic_shifts(num_channels: int) -> list:
    """Focal-length shift multipliers :math:`k_c` per channel: RGB ``(+1, 0, -1)``, RGBA adds 0
    for alpha, one channel ``(0,)``."""
    table = {1: [0.0], 3: [1.0, 0.0, -1.0], 4: [1.0, 0.0, -1.0, 0.0]}
    if num_channels not in table:
        raise LensBlurError("chromatic aberration needs an image with 1, 3 (RGB) or 4 (RGBA) "
                            f"channels, got {num_channels}")
    return table[num_channels]


def _check_chromatic(value: Param) -> Param:
    if isinstance(value, bool):
        raise TypeError("`chromatic` must be a number or a tensor, got bool")
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.dim() > 1:
            raise LensBlurError("`chromatic` must be a float, a 0-d or a (B,) floating point tensor")
        bad = not bool(torch.isfinite(value.detach()).all()) or bool((value.detach().abs() >= 0.2).any())
        if bad:
            raise LensBlurError("`chromatic` must be finite with |chromatic| < 0.2")
        return value
    if not isinstance(value, numbers.Real):
        raise TypeError(f"`chromatic` must be a number or a tensor, got {type(value).__name__}")
    if not math.isfinite(value) or abs(value) >= 0.2:
        raise LensBlurError(f"`chromatic` must be finite with |chromatic| < 0.2, got {value}")
    return float(value)


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
    check_lens_param(focus_disparity, "focus_disparity", allow_zero=True)
    check_lens_param(strength, "strength", allow_zero=True)
    fd = _as_broadcast(focus_disparity, disparity, "focus_disparity", "disparity")
    k = _as_broadcast(strength, disparity, "strength", "disparity")
    return k * (disparity - fd).abs()
