"""Depth-of-field rendering from an all-in-focus image, its depth and a thin lens."""

from __future__ import annotations

import numbers
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .apertures import Aperture
from .defocus import BACKENDS, defocus
from .optics import ThinLens
from .validation import (LensBlurError, _check_finite, _check_tensor, check_choice, check_image, check_map,
                         check_positive_float, check_same_geometry)

__all__ = ["render", "render_coc", "LensBlur", "RENDER_METHODS", "boost_highlights"]

RENDER_METHODS = ("layered", "gather", "scatter")


def _luminance(image: torch.Tensor) -> torch.Tensor:
    if image.shape[1] == 3:
        w = torch.tensor([0.2126, 0.7152, 0.0722], dtype=image.dtype, device=image.device)
        return (image * w.view(1, 3, 1, 1)).sum(1, keepdim=True)
    return image.mean(1, keepdim=True)


def boost_highlights(image: torch.Tensor, boost: float, threshold: float) -> torch.Tensor:
    """Raise the luminance above ``threshold`` by ``(1 + boost)``, keeping each pixel's colour.

    A pixel of luminance ``Y > threshold`` gets ``Y' = threshold + (1 + boost) (Y - threshold)``:
    clipped highlights in an all-in-focus image regain the energy that makes bokeh discs bright.
    """
    if boost == 0:
        return image
    y = _luminance(image)
    excess = torch.relu(y - threshold)
    return image * (1.0 + boost * excess / y.clamp_min(1e-6))


def _gamma_decode(x: torch.Tensor, gamma: float) -> torch.Tensor:
    return x if gamma == 1.0 else x.sign() * x.abs().clamp_min(1e-12).pow(gamma)


ApertureArg = Union[None, Aperture, Sequence[Optional[Aperture]]]


def _check_render_options(method, backend, gamma, highlight_boost, highlight_threshold, near_scale,
                          far_scale, num_layers) -> dict:
    check_choice(method, "method", RENDER_METHODS)
    check_choice(backend, "backend", BACKENDS)
    _check_num_layers(num_layers)
    return dict(method=method, backend=backend, gamma=check_positive_float(gamma, "gamma"),
                highlight_boost=check_positive_float(highlight_boost, "highlight_boost", allow_zero=True),
                highlight_threshold=check_positive_float(highlight_threshold, "highlight_threshold"),
                near_scale=check_positive_float(near_scale, "near_scale", allow_zero=True),
                far_scale=check_positive_float(far_scale, "far_scale", allow_zero=True),
                num_layers=num_layers)


def _check_apertures(aperture: ApertureArg, batch: int, squeeze, cats_eye) -> List[Aperture]:
    """One :class:`Aperture` per batch item (``None`` = disk), with the overrides applied; items
    that share an aperture share the same object, so they are rendered together."""
    if isinstance(aperture, (list, tuple)):
        if len(aperture) != batch:
            raise LensBlurError(f"`aperture` is a sequence of {len(aperture)} apertures for a batch of "
                                f"{batch}: give one per batch item (or a single aperture)")
        items = list(aperture)
    else:
        items = [aperture] * batch
    changes = {k: v for k, v in (("squeeze", squeeze), ("cats_eye", cats_eye)) if v is not None}
    done: Dict[int, Aperture] = {}
    out = []
    for i, a in enumerate(items):
        if a is not None and not isinstance(a, Aperture):
            where = f"`aperture[{i}]`" if isinstance(aperture, (list, tuple)) else "`aperture`"
            raise TypeError(f"{where} must be a lensblur.Aperture or None, got {type(a).__name__}")
        key = id(a)
        if key not in done:
            ap = Aperture.disk() if a is None else a
            done[key] = ap.replace(**changes) if changes else ap
        out.append(done[key])
    return out


def _render_coc(image: torch.Tensor, signed: torch.Tensor, apertures: List[Aperture], *, method: str,
                backend: str, gamma: float, highlight_boost: float, highlight_threshold: float,
                near_scale: float, far_scale: float, num_layers: Optional[int]) -> torch.Tensor:
    """:func:`render_coc` on validated arguments (one aperture object per batch item)."""
    if near_scale != 1.0 or far_scale != 1.0:
        signed = torch.where(signed < 0, signed * near_scale, signed * far_scale)
    linear = boost_highlights(_gamma_decode(image, gamma), highlight_boost, highlight_threshold)
    groups: Dict[int, List[int]] = {}
    for i, a in enumerate(apertures):
        groups.setdefault(id(a), []).append(i)
    if len(groups) == 1:
        out = _blur(linear, signed, apertures[0], method, backend, num_layers)
    else:  # per-sample apertures: one call per distinct aperture, then back in batch order
        parts, order = [], []
        for idx in groups.values():
            sel = torch.tensor(idx, device=image.device)
            parts.append(_blur(linear.index_select(0, sel), signed.index_select(0, sel),
                               apertures[idx[0]], method, backend, num_layers))
            order.extend(idx)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        out = torch.cat(parts).index_select(0, inverse.to(image.device))
    return _gamma_decode(out, 1.0 / gamma).to(image.dtype)


def _blur(linear: torch.Tensor, signed: torch.Tensor, aperture: Aperture, method: str, backend: str,
          num_layers: Optional[int]) -> torch.Tensor:
    b, c, h, w = linear.shape
    if signed.shape[1] > 1:
        # chromatic aberration: every channel is blurred with its own coc, as its own image
        linear, signed = linear.reshape(b * c, 1, h, w), signed.reshape(b * c, 1, h, w)
    if method == "layered":
        from .layered import render_layered
        out = render_layered(linear, signed, aperture, backend=backend, num_layers=num_layers)
    else:
        out = defocus(linear, signed.abs(), aperture, method=method, backend=backend)
    return out.reshape(b, c, h, w)


def render_coc(image: torch.Tensor, signed_coc: torch.Tensor, aperture: ApertureArg = None,
               method: str = "layered", gamma: float = 1.0, *, backend: str = "auto",
               highlight_boost: float = 0.0, highlight_threshold: float = 1.0,
               squeeze: Optional[float] = None, cats_eye: Optional[float] = None,
               near_scale: float = 1.0, far_scale: float = 1.0,
               num_layers: Optional[int] = None) -> torch.Tensor:
    r"""Render depth of field from an all-in-focus ``image`` and a **signed** coc map.

    The rendering step of :func:`render` without the optics: ``render(image, depth, lens, ...)``
    is ``render_coc(image, lens.coc_px(depth, W, signed=True), ...)`` (with
    :meth:`ThinLens.channel_coc_px` for a chromatic lens).  Use it when the coc comes from
    elsewhere: a disparity map (:func:`~lensblur.disparity_coc` with a sign), a refocusing
    model's defocus map, a simulation.

    Steps, in order: the coc is scaled by ``near_scale`` where it is negative and by
    ``far_scale`` where it is positive; the image is decoded to linear light with the odd power
    :math:`x \mapsto \operatorname{sign}(x)|x|^{\gamma}` (negative values keep their sign, as
    images are not clamped); highlights are boosted (:func:`boost_highlights`); the image is
    blurred (``"layered"``: :func:`lensblur.layered.render_layered` on the signed coc;
    ``"gather"``/``"scatter"``: :func:`~lensblur.defocus` on ``|signed_coc|``); the result is
    encoded back with the power ``1 / gamma``.

    Args:
        image: ``(B, C, H, W)`` all-in-focus image; linear radiance when ``gamma == 1``.
        signed_coc: ``(B, 1, H, W)`` circle-of-confusion **diameter** in pixels, negative in
            front of the focus plane; or ``(B, C, H, W)``, one coc per colour channel (each
            channel is then blurred as its own image).
        aperture: bokeh shape (``None`` = disk), or a sequence of ``B`` of them (``None``
            entries = disk), one per batch item: items that share the same aperture object are
            blurred in one call.
        method: ``"layered"`` (default, occlusion aware), ``"gather"`` or ``"scatter"``.
        gamma: encoding of ``image`` (2.2 for sRGB-like images; 1 = already linear), > 0.

    The other keyword arguments (``backend``, ``highlight_boost``, ``highlight_threshold``,
    ``squeeze``, ``cats_eye``, ``near_scale``, ``far_scale``, ``num_layers``) are those of
    :func:`render`.

    Returns:
        ``(B, C, H, W)`` rendered image in ``image``'s encoding and dtype; differentiable w.r.t.
        ``image`` and ``signed_coc``.

    Example:
        >>> img = torch.rand(2, 3, 16, 16)
        >>> s = torch.zeros(2, 1, 16, 16); s[..., 8:, :] = 5.0    # lower half behind focus
        >>> out = render_coc(img, s, [Aperture.disk(), Aperture.polygon(6)], method="gather")
        >>> out.shape, torch.allclose(out[..., :2, :], img[..., :2, :])
        (torch.Size([2, 3, 16, 16]), True)
    """
    check_image(image, "image")
    _check_tensor(signed_coc, "signed_coc")
    if signed_coc.dim() != 4 or signed_coc.shape[1] not in (1, image.shape[1]):
        raise LensBlurError(f"`signed_coc` must have shape (B, 1, H, W) or (B, C, H, W) with C = "
                            f"{image.shape[1]} (the image's channels), got {tuple(signed_coc.shape)}")
    check_same_geometry(image, signed_coc, "signed_coc")
    _check_finite(signed_coc, "signed_coc")
    opts = _check_render_options(method, backend, gamma, highlight_boost, highlight_threshold,
                                 near_scale, far_scale, num_layers)
    apertures = _check_apertures(aperture, image.shape[0], squeeze, cats_eye)
    return _render_coc(image, signed_coc, apertures, **opts)


def render(image: torch.Tensor, depth: torch.Tensor, lens: ThinLens,
           aperture: ApertureArg = None, method: str = "layered", gamma: float = 1.0, *,
           backend: str = "auto", highlight_boost: float = 0.0, highlight_threshold: float = 1.0,
           squeeze: Optional[float] = None, cats_eye: Optional[float] = None,
           near_scale: float = 1.0, far_scale: float = 1.0,
           num_layers: Optional[int] = None) -> torch.Tensor:
    r"""Render depth of field from an all-in-focus ``image`` and its metric ``depth``.

    The coc of every pixel comes from ``lens`` (:meth:`ThinLens.coc_px`, signed) and the image
    is rendered with it by :func:`render_coc`: ``render = lens.coc_px + render_coc``.
    ``"layered"`` is occlusion aware (see :mod:`lensblur.layered`); ``"gather"`` and
    ``"scatter"`` call :func:`~lensblur.defocus` with the lens's coc.  Differentiable w.r.t.
    ``image``, ``depth`` and every tensor lens parameter.

    Args:
        image: ``(B, C, H, W)`` all-in-focus image; linear radiance when ``gamma == 1``.
        depth: ``(B, 1, H, W)`` metric depth in metres, > 0.
        lens: a :class:`~lensblur.ThinLens` (its parameters may be ``(B,)`` tensors; with
            ``chromatic != 0`` every colour channel gets its own coc,
            :meth:`ThinLens.channel_coc_px`).
        aperture: bokeh shape (``None`` = disk), or a sequence of ``B`` apertures, one per batch
            item.
        method: ``"layered"`` (default), ``"gather"`` or ``"scatter"``.
        gamma: encoding of ``image``: it is decoded as ``image ** gamma`` to linear light, blurred,
            and encoded back (2.2 for sRGB-like images; 1 = already linear).
        backend: kernel backend for the blur (see :func:`~lensblur.defocus`).
        highlight_boost: >= 0; luminance above ``highlight_threshold`` (linear) is amplified by
            ``1 + highlight_boost`` before blurring, so highlights bloom into bright bokeh shapes.
        highlight_threshold: > 0, linear luminance where the boost starts.
        squeeze: anamorphic squeeze (bokeh ``squeeze`` times taller than wide); overrides the
            aperture's.
        cats_eye: cat's-eye vignetting strength in [0, 1]; overrides the aperture's.
        near_scale, far_scale: >= 0, scale the blur in front of / behind the focus plane.
        num_layers: number of depth layers for ``"layered"`` (default adapts to the coc range).

    Returns:
        ``(B, C, H, W)`` rendered image in ``image``'s encoding and dtype.

    Example:
        >>> img, depth = torch.rand(1, 3, 24, 32), torch.full((1, 1, 24, 32), 4.0)
        >>> lens = ThinLens(50.0, 2.0, 2.0)
        >>> render(img, depth, lens, method="gather").shape
        torch.Size([1, 3, 24, 32])
    """
    check_image(image, "image")
    check_map(depth, "depth", positive=True)
    check_same_geometry(image, depth, "depth")
    if not isinstance(lens, ThinLens):
        raise TypeError(f"`lens` must be a lensblur.ThinLens, got {type(lens).__name__}")
    opts = _check_render_options(method, backend, gamma, highlight_boost, highlight_threshold,
                                 near_scale, far_scale, num_layers)
    apertures = _check_apertures(aperture, image.shape[0], squeeze, cats_eye)

    depth_acc = depth.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
    if lens.has_chromatic:       # one coc per channel: (B, C, H, W)
        signed = lens.channel_coc_px(depth_acc, image.shape[-1], image.shape[1], signed=True)
    else:
        signed = lens.coc_px(depth_acc, image.shape[-1], signed=True)
    return _render_coc(image, signed, apertures, **opts)


#: Most depth layers ``render(method="layered", num_layers=...)`` takes (each costs a blur).
MAX_NUM_LAYERS = 256


def _check_num_layers(num_layers) -> None:
    if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral)
                                   or not 1 <= num_layers <= MAX_NUM_LAYERS):
        raise LensBlurError(f"`num_layers` must be an integer in [1, {MAX_NUM_LAYERS}] or None, "
                            f"got {num_layers!r}")


class LensBlur(nn.Module):
    """Depth-of-field layer: ``LensBlur(...)(image, depth, focal_length_mm, f_number, focus_distance_m)``.

    The module holds configuration only (aperture, method, sensor, rendering controls); the lens
    parameters are passed per call and may be ``(B,)`` tensors that require grad (e.g. a
    predicted focus distance).

    Example:
        >>> layer = LensBlur(method="gather")
        >>> img, depth = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16) + 1.0
        >>> out = layer(img, depth, focal_length_mm=50.0, f_number=2.0,
        ...             focus_distance_m=torch.tensor([1.2, 1.8]))
        >>> out.shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, aperture: Optional[Aperture] = None, method: str = "layered",
                 sensor_width_mm: float = 36.0, gamma: float = 1.0, backend: str = "auto",
                 **controls) -> None:
        super().__init__()
        check_choice(method, "method", RENDER_METHODS)
        check_choice(backend, "backend", BACKENDS)
        if aperture is not None and not isinstance(aperture, Aperture):
            raise TypeError(f"`aperture` must be a lensblur.Aperture or None, got {type(aperture).__name__}")
        self.aperture = aperture
        self.method = method
        self.sensor_width_mm = check_positive_float(sensor_width_mm, "sensor_width_mm")
        self.gamma = check_positive_float(gamma, "gamma")
        self.backend = backend
        allowed = {"highlight_boost", "highlight_threshold", "squeeze", "cats_eye", "near_scale",
                   "far_scale", "num_layers"}
        unknown = set(controls) - allowed
        if unknown:
            raise TypeError(f"unknown LensBlur option(s): {', '.join(sorted(unknown))}")
        _check_num_layers(controls.get("num_layers"))
        self.controls = controls

    def extra_repr(self) -> str:
        return (f"aperture={self.aperture!r}, method={self.method!r}, "
                f"sensor_width_mm={self.sensor_width_mm}, gamma={self.gamma}, backend={self.backend!r}")

    def forward(self, image: torch.Tensor, depth: torch.Tensor, focal_length_mm, f_number,
                focus_distance_m, chromatic=0.0) -> torch.Tensor:
        """Render ``image`` (``(B, C, H, W)``) with ``depth`` (``(B, 1, H, W)``, metres); the lens
        parameters are floats, 0-d or ``(B,)`` tensors (see :class:`~lensblur.ThinLens`)."""
        lens = ThinLens(focal_length_mm=focal_length_mm, f_number=f_number,
                        focus_distance_m=focus_distance_m, sensor_width_mm=self.sensor_width_mm,
                        chromatic=chromatic)
        return render(image, depth, lens, self.aperture, self.method, self.gamma,
                      backend=self.backend, **self.controls)
