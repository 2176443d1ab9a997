"""Refocusing pipeline: deblur -> depth -> defocus map for a chosen focus point -> bokeh.

::

    aif       = deblur(image)                        # DeblurNet, or None when image is sharp
    disparity = depth_estimator(aif)                 # any callable (B,3,H,W) -> (B,1,H,W) > 0
    d_focus   = focus_disparity_at(disparity, focus_xy)
    D         = defocus_map(disparity, d_focus, K, max_px)
    out       = bokeh(aif, D, aperture)              # BokehNet, or PhysicalBokeh (lensblur)

``K`` is the blur strength in pixels per unit of the estimator's disparity: with metric
disparity (``1 / depth_m``) use :func:`lensblur_models.blur_strength_from_lens` of the lens
whose look you want; with a relative-disparity estimator, pick ``K`` by eye (it plays the role
of the aperture size).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

import torch

import lensblur
from lensblur import Aperture, LensBlurError

from ..defocus_map import defocus_map, focus_disparity_at
from ..common.checks import check_pair, check_tensor4
from ..common.pipeline import PipelineMixin

__all__ = ["PhysicalBokeh", "refocus", "RefocusOutput", "RefocusPipeline"]

ApertureArg = Union[None, Aperture, Sequence[Optional[Aperture]]]


class PhysicalBokeh:
    """The physical renderer with BokehNet's signature: ``(aif, defocus_map, aperture) -> image``.

    :func:`lensblur.render_coc` of ``aif`` with ``coc = defocus_map`` (gamma decoding, blur in
    linear light, encoding back; ``aperture`` may be one per batch item).  Gamma: the library's
    one formula, the odd power ``sign(x) |x|^gamma``; ``aif`` is a display-encoded photo, so it
    is first clamped to ``>= 0`` (the BokehNet training data is clamped the same way), and on
    non-negative values that formula is the plain power ``x ** gamma`` this class always used.

    Args:
        method: ``"gather"`` or ``"scatter"`` (see :func:`lensblur.defocus`).
        gamma: display encoding of ``aif`` (blur happens in linear light).
        backend: lensblur backend.

    Example:
        >>> aif = torch.rand(1, 3, 8, 8)
        >>> out = PhysicalBokeh()(aif, torch.zeros(1, 1, 8, 8))   # zero blur: unchanged
        >>> bool(torch.allclose(out, aif, atol=1e-5))
        True
    """

    def __init__(self, method: str = "gather", gamma: float = 2.2, backend: str = "auto") -> None:
        if method not in ("gather", "scatter"):
            raise LensBlurError(f"unknown `method` {method!r}; expected 'gather' or 'scatter'")
        if not (isinstance(gamma, (int, float)) and gamma > 0):
            raise LensBlurError(f"`gamma` must be > 0, got {gamma!r}")
        self.method, self.gamma, self.backend = method, float(gamma), backend

    def __repr__(self) -> str:
        return f"PhysicalBokeh(method={self.method!r}, gamma={self.gamma}, backend={self.backend!r})"

    def __call__(self, aif: torch.Tensor, defocus_map: torch.Tensor, aperture: ApertureArg = None) -> torch.Tensor:
        check_tensor4(aif, "aif")
        check_tensor4(defocus_map, "defocus_map", 1, nonnegative=True)
        check_pair(aif, defocus_map, "aif", "defocus_map")
        return lensblur.render_coc(aif.clamp_min(0), defocus_map, aperture, self.method, self.gamma,
                                   backend=self.backend)


@dataclasses.dataclass
class RefocusOutput:
    """Everything :func:`refocus` computed (all ``(B, ., H, W)`` except ``focus_disparity`` ``(B,)``)."""

    image: torch.Tensor
    all_in_focus: torch.Tensor
    disparity: torch.Tensor
    defocus_map: torch.Tensor
    focus_disparity: torch.Tensor


def refocus(image: torch.Tensor, focus_xy, K, aperture: ApertureArg = None, *,
            depth_estimator: Callable[[torch.Tensor], torch.Tensor],
            deblur: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
            bokeh: Optional[Callable] = None, max_px=None, focus_window: int = 3,
            return_intermediates: bool = False):
    """Refocus ``image`` on the pixel ``focus_xy`` with blur strength ``K``.

    Args:
        image: ``(B, C, H, W)`` photo (display-encoded, like the networks' training data).
        focus_xy: ``(x, y)`` pixel to bring into focus (or a ``(B, 2)`` tensor).
        K: float, 0-d or ``(B,)`` tensor, >= 0: pixels of blur diameter per unit of disparity.
        aperture: bokeh shape (``None`` = disk) or one per batch item.
        depth_estimator: callable ``aif -> disparity`` ``(B, 1, H, W)``, > 0 (e.g. a monocular
            depth network returning inverse depth, or ``lambda aif: 1 / true_depth`` in tests).
        deblur: callable ``image -> all-in-focus image`` (e.g. a trained :class:`DeblurNet`);
            ``None`` treats ``image`` as already sharp.
        bokeh: callable ``(aif, defocus_map, aperture) -> image`` (a trained :class:`BokehNet`);
            ``None`` uses :class:`PhysicalBokeh`.
        max_px: optional clamp of the defocus map (pixels).
        focus_window: odd window whose median disparity defines the focus plane.
        return_intermediates: return a :class:`RefocusOutput` instead of the image.

    Returns:
        ``(B, C, H, W)`` refocused image, or a :class:`RefocusOutput`.

    Example:
        >>> img = torch.rand(1, 3, 16, 16)
        >>> disp = torch.ones(1, 1, 16, 16); disp[..., 8:, :] = 0.25  # lower half far
        >>> out = refocus(img, (4, 4), 8.0, depth_estimator=lambda aif: disp,
        ...               return_intermediates=True)
        >>> out.defocus_map[0, 0, 4, 4].item(), out.defocus_map[0, 0, 12, 4].item()
        (0.0, 6.0)
    """
    check_tensor4(image, "image")
    if not callable(depth_estimator):
        raise TypeError(f"`depth_estimator` must be callable, got {type(depth_estimator).__name__}")
    for fn, name in ((deblur, "deblur"), (bokeh, "bokeh")):
        if fn is not None and not callable(fn):
            raise TypeError(f"`{name}` must be callable or None, got {type(fn).__name__}")
    if aperture is not None and not isinstance(aperture, (Aperture, list, tuple)):
        raise TypeError(f"`aperture` must be a lensblur.Aperture, None or a list, got {type(aperture).__name__}")
    aif = image if deblur is None else deblur(image)
    check_tensor4(aif, "deblur(image)", image.shape[1])
    disparity = depth_estimator(aif)
    check_tensor4(disparity, "depth_estimator(aif)", 1, positive=True)
    check_pair(aif, disparity, "image", "depth_estimator(aif)")
    fd = focus_disparity_at(disparity, focus_xy, focus_window)
    dmap = defocus_map(disparity, fd, K, max_px)
    out = (bokeh or PhysicalBokeh())(aif, dmap, aperture)
    if return_intermediates:
        return RefocusOutput(out, aif, disparity, dmap, fd)
    return out


class RefocusPipeline(PipelineMixin):
    """The components of :func:`refocus` held together: ``pipe(image, focus_xy, K, aperture)``.

    Components: ``depth_estimator`` (e.g. :class:`~lensblur_models.common.DepthEstimator` with
    ``output="disparity"``, or any callable), ``deblur`` (:class:`DeblurNet` or ``None``),
    ``bokeh`` (:class:`BokehNet` or ``None`` = :class:`PhysicalBokeh`); settings ``max_px`` and
    ``focus_window``.  ``pipe(...)`` runs under ``torch.no_grad()`` and returns a
    :class:`RefocusOutput`.  ``save_pretrained(dir)`` writes one folder (``pipeline.json``,
    ``deblur/``, ``bokeh/``, ``depth_estimator/``); a plain callable depth estimator is passed
    again to ``from_pretrained(dir, depth_estimator=...)``.

    Example:
        >>> pipe = RefocusPipeline(depth_estimator=lambda aif: torch.ones_like(aif[:, :1]))
        >>> pipe(torch.rand(1, 3, 8, 8), (2, 2), 4.0).image.shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, depth_estimator: Callable, deblur: Optional[Callable] = None,
                 bokeh: Optional[Callable] = None, max_px=None, focus_window: int = 3) -> None:
        if not callable(depth_estimator):
            raise TypeError(f"`depth_estimator` must be callable, got {type(depth_estimator).__name__}")
        self.register_components(depth_estimator=depth_estimator, deblur=deblur, bokeh=bokeh)
        self.max_px, self.focus_window = max_px, focus_window
        self._settings = {"max_px": max_px if not isinstance(max_px, torch.Tensor) else float(max_px),
                          "focus_window": focus_window}

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "RefocusPipeline":
        """Load a pipeline folder written by :meth:`save_pretrained` (networks in eval mode)."""
        pipe = super().from_pretrained(path, **overrides)
        for comp in (pipe.deblur, pipe.bokeh):
            if isinstance(comp, torch.nn.Module):
                comp.eval()
        return pipe

    def run(self, image: torch.Tensor, focus_xy, K, aperture: ApertureArg = None) -> RefocusOutput:
        """See :func:`refocus` (always returns the :class:`RefocusOutput`)."""
        return refocus(image, focus_xy, K, aperture, depth_estimator=self.depth_estimator,
                       deblur=self.deblur, bokeh=self.bokeh, max_px=self.max_px,
                       focus_window=self.focus_window, return_intermediates=True)
