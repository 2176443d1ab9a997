"""Inference: refocus an image to a new focus point and bokeh level.

The sampler integrates the rectified-flow ODE ``dx/dt = v(x, t)`` with Euler steps from pure noise
at ``t = 1`` to the target latent at ``t = 0``, conditioned on the reference image, its depth (or
none) and ``(x, y, b)``, then decodes the latent.

Example:
    >>> import torch
    >>> from lensblur_models.refocus_dit import RefocusDiT, RefocusDiTConfig
    >>> model = RefocusDiT.from_config(RefocusDiTConfig.tiny())
    >>> img = torch.rand(1, 3, 16, 16)
    >>> out = refocus(model, img, focus_xy=(0.25, 0.5), bokeh_level=0.8, steps=2,
    ...               generator=torch.Generator().manual_seed(0))
    >>> out.shape, out.dtype
    (torch.Size([1, 3, 16, 16]), torch.float32)
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import torch

from lensblur import LensBlurError

from ..common.pipeline import PIPELINE_CONFIG, PipelineMixin
from .codec import IdentityCodec, LatentCodec

__all__ = ["refocus", "RefocusDiTPipeline", "RefocusDiTOutput"]


def _condition(focus_xy, bokeh_level, b: int, device) -> torch.Tensor:
    xy = torch.as_tensor(focus_xy, dtype=torch.float32)
    if xy.dim() == 1:
        xy = xy.expand(b, 2) if xy.shape == (2,) else xy
    if xy.shape != (b, 2):
        raise LensBlurError(f"`focus_xy` must be (x, y) or a ({b}, 2) tensor, got shape {tuple(xy.shape)}")
    bok = torch.as_tensor(bokeh_level, dtype=torch.float32)
    bok = bok.expand(b) if bok.dim() == 0 else bok
    if bok.shape != (b,):
        raise LensBlurError(f"`bokeh_level` must be a float or a ({b},) tensor, got shape {tuple(bok.shape)}")
    cond = torch.cat([xy, bok[:, None]], dim=1)
    if not bool(((cond >= 0) & (cond <= 1)).all()):
        raise LensBlurError("`focus_xy` and `bokeh_level` must lie in [0, 1]")
    return cond.to(device)


@torch.no_grad()
def refocus(model, image: torch.Tensor, depth: Optional[torch.Tensor] = None,
            focus_xy: Union[Sequence[float], torch.Tensor] = (0.5, 0.5),
            bokeh_level: Union[float, torch.Tensor] = 0.5, *, codec: Optional[LatentCodec] = None,
            steps: int = 16, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Refocus ``image`` at ``focus_xy`` with bokeh level ``bokeh_level``.

    Args:
        model: a velocity model (:class:`~.model.RefocusDiT`, :class:`~lensblur_models.refocus_dit.flux.FluxRefocusDiT`).
        image: ``(B, C, H, W)`` the image to refocus (the reference).
        depth: optional ``(B, 1, H, W)`` positive depth (any monotone scale); ``None`` uses the
            model's no-depth mode (trained by depth dropout).
        focus_xy: ``(x, y)`` in ``[0, 1]`` (``x`` along the width) or a ``(B, 2)`` tensor.
        bokeh_level: float in ``[0, 1]`` or ``(B,)`` tensor (0 = all sharp).
        codec: latent codec (default pixel space).
        steps: Euler steps (>= 1).
        generator: CPU generator for the initial noise (same seed -> same output).

    Returns:
        ``(B, C, H, W)`` refocused image in ``image``'s dtype.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`image` must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4:
        raise LensBlurError(f"`image` must have shape (B, C, H, W), got {tuple(image.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LensBlurError(f"`steps` must be a positive int, got {steps!r}")
    if depth is not None:
        if not isinstance(depth, torch.Tensor) or depth.dim() != 4 or depth.shape[0] != image.shape[0] \
                or depth.shape[1] != 1:
            raise LensBlurError(f"`depth` must have shape ({image.shape[0]}, 1, H, W)")
        if not bool((depth > 0).all()):
            raise LensBlurError("`depth` must be > 0 everywhere")
    codec = codec or IdentityCodec(image.shape[1])
    b = image.shape[0]
    cond = _condition(focus_xy, bokeh_level, b, image.device)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else image.dtype
    z_ref = codec.encode(image).to(dtype)
    mask = torch.full((b,), depth is not None, dtype=torch.bool, device=image.device)
    x = torch.randn(z_ref.shape, generator=generator, dtype=torch.float32).to(image.device, dtype)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t = torch.full((b,), float(ts[i]), device=image.device, dtype=dtype)
        v = model(x, t, z_ref, cond.to(dtype), depth, mask)
        x = x + float(ts[i + 1] - ts[i]) * v
    return codec.decode(x).to(image.dtype)


@dataclasses.dataclass
class RefocusDiTOutput:
    """Result of :class:`RefocusDiTPipeline`: ``image`` ``(B, C, H, W)``, the refocused image."""

    image: torch.Tensor


class RefocusDiTPipeline(PipelineMixin):
    """A velocity model and its codec: ``pipe(image, depth, focus_xy, bokeh_level).image``.

    Components: ``model`` (:class:`~.model.RefocusDiT`, or a FLUX adapter in memory) and
    ``codec`` (``None`` = pixel space, :class:`~.codec.IdentityCodec` or
    :class:`~.codec.AutoencoderKLCodec`).  ``pipe(...)`` runs :func:`refocus` under
    ``torch.no_grad()`` and returns a :class:`RefocusDiTOutput`; ``pipe.refocus(...)`` returns
    the tensor.  ``save_pretrained(dir)`` / ``from_pretrained(dir)`` use one folder
    (``pipeline.json``, ``model/``, ``codec/``); ``from_pretrained`` also accepts a bare
    ``RefocusDiT.save_pretrained`` folder (then ``codec`` may be passed).
    """

    def __init__(self, model, codec: Optional[LatentCodec] = None):
        self.register_components(model=model, codec=codec)

    @classmethod
    def from_pretrained(cls, path, codec: Optional[LatentCodec] = None, **overrides) -> "RefocusDiTPipeline":
        from pathlib import Path

        from .model import RefocusDiT

        if not (Path(path) / PIPELINE_CONFIG).is_file():  # a bare model folder
            return cls(RefocusDiT.from_pretrained(path).eval(), codec)
        if codec is not None:
            overrides["codec"] = codec
        pipe = super().from_pretrained(path, **overrides)
        pipe.model.eval()
        return pipe

    def run(self, image, depth=None, focus_xy=(0.5, 0.5), bokeh_level=0.5, *, steps: int = 16,
            generator: Optional[torch.Generator] = None) -> RefocusDiTOutput:
        """See :func:`refocus`."""
        return RefocusDiTOutput(refocus(self.model, image, depth, focus_xy, bokeh_level, codec=self.codec,
                                        steps=steps, generator=generator))

    def refocus(self, image, depth=None, focus_xy=(0.5, 0.5), bokeh_level=0.5, *, steps: int = 16,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``pipe(...).image``: see :func:`refocus`."""
        return self(image, depth, focus_xy, bokeh_level, steps=steps, generator=generator).image
