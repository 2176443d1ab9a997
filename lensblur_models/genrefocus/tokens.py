"""Aperture-shape tokens: the bokeh shape as a short sequence of kernel patches.

The aperture's blur kernel (:meth:`lensblur.Aperture.kernel`) is rendered at one fixed diameter,
placed in a ``size x size`` canvas, max-normalised (so the tokens describe the *shape*, not the
scale: the defocus map carries the size) and cut into ``patch x patch`` patches in row-major
order.  A network projects each patch vector to its width and adds a learned position embedding
(see :class:`~lensblur_models.genrefocus.models.ApertureEncoder`).
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from lensblur import Aperture, LensBlurError

__all__ = ["aperture_canvas", "aperture_tokens", "DEFAULT_APERTURE_SIZE", "DEFAULT_APERTURE_PATCH"]

DEFAULT_APERTURE_SIZE = 16
DEFAULT_APERTURE_PATCH = 4

ApertureLike = Union[None, Aperture, Sequence[Optional[Aperture]]]


def _check_geometry(size: int, patch: int) -> None:
    for v, n in ((size, "size"), (patch, "patch")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
            raise LensBlurError(f"`{n}` must be a positive integer, got {v!r}")
    if size % patch:
        raise LensBlurError(f"`size` ({size}) must be a multiple of `patch` ({patch})")


def aperture_canvas(aperture: Optional[Aperture], size: int = DEFAULT_APERTURE_SIZE) -> torch.Tensor:
    """The aperture kernel at diameter ``size - 2`` centred in a ``(size, size)`` canvas, max 1.

    ``None`` means a disk.  Float32.

    Example:
        >>> c = aperture_canvas(None, 8)
        >>> tuple(c.shape), float(c.max()), float(c[0, 0])
        ((8, 8), 1.0, 0.0)
    """
    if aperture is None:
        aperture = Aperture.disk()
    if not isinstance(aperture, Aperture):
        raise TypeError(f"`aperture` must be a lensblur.Aperture or None, got {type(aperture).__name__}")
    _check_geometry(size, 1)
    k = aperture.kernel(float(size - 2)).detach().to(torch.float32)
    k = k[: size, : size]  # image apertures may reach slightly beyond the diameter
    kh, kw = k.shape
    top, left = (size - kh) // 2, (size - kw) // 2
    canvas = F.pad(k, (left, size - kw - left, top, size - kh - top))
    return canvas / canvas.max()


def aperture_tokens(aperture: ApertureLike, batch: Optional[int] = None, *,
                    size: int = DEFAULT_APERTURE_SIZE, patch: int = DEFAULT_APERTURE_PATCH,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """Patchify aperture kernels into tokens.

    Args:
        aperture: one :class:`lensblur.Aperture` (or ``None`` = disk) shared by the batch, or a
            sequence with one per batch item.
        batch: batch size when a single aperture is given (default 1).
        size: canvas side in pixels (the kernel is drawn at diameter ``size - 2``).
        patch: token patch side; ``size`` must be a multiple of it.

    Returns:
        ``(B, (size / patch)^2, patch * patch)`` raw token vectors (values in ``[0, 1]``).

    Example:
        >>> tok = aperture_tokens(Aperture.polygon(6), batch=2, size=8, patch=4)
        >>> tok.shape
        torch.Size([2, 4, 16])
    """
    _check_geometry(size, patch)
    if aperture is None or isinstance(aperture, Aperture):
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1):
            raise LensBlurError(f"`batch` must be a positive integer, got {batch!r}")
        canv = aperture_canvas(aperture, size)[None].expand(batch or 1, -1, -1)
    elif isinstance(aperture, (list, tuple)):
        if len(aperture) == 0:
            raise LensBlurError("`aperture` sequence must not be empty")
        if batch is not None and batch != len(aperture):
            raise LensBlurError(f"`aperture` has {len(aperture)} entries but `batch` is {batch}")
        canv = torch.stack([aperture_canvas(a, size) for a in aperture])
    else:
        raise TypeError(f"`aperture` must be a lensblur.Aperture, None or a sequence of them, "
                        f"got {type(aperture).__name__}")
    b, g = canv.shape[0], size // patch
    tok = canv.reshape(b, g, patch, g, patch).permute(0, 1, 3, 2, 4).reshape(b, g * g, patch * patch)
    return tok.to(device=device, dtype=dtype).contiguous()
