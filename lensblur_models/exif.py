"""Camera EXIF for lens-blur conditioning: read, validate and embed.

A photo's defocus depends on three numbers a camera writes into its EXIF block:

* ``FocalLength`` (tag ``0x920A``): the real focal length in millimetres;
* ``FNumber`` (tag ``0x829D``): the f-number :math:`N`;
* the sensor size, from ``FocalLengthIn35mmFilm`` (tag ``0xA405``) or, failing that, from
  ``FocalPlaneXResolution`` / ``FocalPlaneResolutionUnit`` and the image width.

The 35 mm-equivalent focal length fixes the crop factor :math:`k = f_{35} / f` through the
sensor *diagonal* (the 35 mm film diagonal is :math:`\\sqrt{36^2 + 24^2} = 43.27` mm), so with
the image aspect ratio :math:`W : H` the sensor width is

.. math::

    w_\\text{sensor} = \\frac{43.27\\,\\text{mm}}{k} \\, \\frac{W}{\\sqrt{W^2 + H^2}}

(exactly 36 mm for a 3:2 full-frame image).  :class:`ExifData` holds the validated values;
:class:`ExifEmbedder` turns a batch of them into a conditioning vector from Fourier features of
their normalised logarithms.

Example:
    >>> exif = validate_exif(focal_length_mm=50.0, f_number=1.8, sensor_width_mm=36.0)
    >>> exif.as_tensor()
    tensor([50.0000,  1.8000, 36.0000])
    >>> ExifEmbedder(dim=16)(exif_batch([exif, exif])).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from lensblur import LensBlurError

from .nn import ScalarEmbedder

__all__ = ["ExifError", "ExifData", "read_exif", "validate_exif", "exif_batch",
           "normalize_exif", "ExifEmbedder", "EXIF_FIELDS", "EXIF_RANGES"]

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)

#: Columns of an EXIF batch tensor, in order.
EXIF_FIELDS = ("focal_length_mm", "f_number", "sensor_width_mm")

#: Accepted ranges (inclusive) of every field; values outside are rejected as corrupt EXIF.
EXIF_RANGES = {
    "focal_length_mm": (1.0, 2000.0),
    "f_number": (0.7, 128.0),
    "sensor_width_mm": (1.0, 100.0),
    "focal_length_35mm": (1.0, 5000.0),
}

# Typical ranges whose log maps to [-1, 1] in :func:`normalize_exif`.
_LOG_SPANS = {
    "focal_length_mm": (8.0, 800.0),
    "f_number": (1.0, 32.0),
    "sensor_width_mm": (4.0, 60.0),
}

_TAG_EXIF_IFD = 0x8769
_TAG_FNUMBER = 0x829D
_TAG_FOCAL_LENGTH = 0x920A
_TAG_FOCAL_35MM = 0xA405
_TAG_FP_XRES = 0xA20E
_TAG_FP_UNIT = 0xA210
_TAG_PIXEL_X = 0xA002
_TAG_PIXEL_Y = 0xA003
_FP_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # inch, cm, mm, micrometre


class ExifError(LensBlurError):
    """Missing or invalid EXIF field; the message names the field (a ``ValueError``)."""


@dataclass(frozen=True)
class ExifData:
    """Validated camera settings of one photo.

    Attributes:
        focal_length_mm: real focal length, millimetres.
        f_number: f-number (focal length / aperture diameter).
        sensor_width_mm: sensor width, millimetres (the image spans it).
        focal_length_35mm: 35 mm-equivalent focal length when known, millimetres.
    """

    focal_length_mm: float
    f_number: float
    sensor_width_mm: float
    focal_length_35mm: Optional[float] = None

    def as_tensor(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """``(3,)`` tensor ``[focal_length_mm, f_number, sensor_width_mm]``."""
        return torch.tensor([self.focal_length_mm, self.f_number, self.sensor_width_mm],
                            dtype=dtype, device=device)


def _check_field(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"EXIF field `{field}` must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ExifError(f"EXIF field `{field}` is not finite ({value!r})")
    lo, hi = EXIF_RANGES[field]
    if not lo <= v <= hi:
        raise ExifError(f"EXIF field `{field}` = {v:g} is outside the plausible range [{lo:g}, {hi:g}]")
    return v


def validate_exif(focal_length_mm, f_number, sensor_width_mm=None, focal_length_35mm=None,
                  image_size: Optional[Sequence[int]] = None) -> ExifData:
    """Check camera settings and fill in the sensor width from the 35 mm equivalent if needed.

    Args:
        focal_length_mm: focal length in mm, in ``EXIF_RANGES["focal_length_mm"]``.
        f_number: f-number, in ``EXIF_RANGES["f_number"]``.
        sensor_width_mm: sensor width in mm; if None it is derived from ``focal_length_35mm``
            and ``image_size``.
        focal_length_35mm: 35 mm-equivalent focal length in mm (smaller than
            ``focal_length_mm`` for sensors larger than full frame).
        image_size: ``(width, height)`` in pixels, for the aspect ratio (default 3:2).

    Raises:
        ExifError: a value is missing, not finite or implausible (the message names the field).
        TypeError: a value is not a number.

    Example:
        >>> round(validate_exif(25.0, 2.0, focal_length_35mm=50.0).sensor_width_mm, 3)
        18.0
    """
    if focal_length_mm is None:
        raise ExifError("EXIF field `focal_length_mm` (FocalLength) is missing")
    if f_number is None:
        raise ExifError("EXIF field `f_number` (FNumber) is missing")
    f = _check_field(focal_length_mm, "focal_length_mm")
    n = _check_field(f_number, "f_number")
    f35 = None if focal_length_35mm is None else _check_field(focal_length_35mm, "focal_length_35mm")
    if sensor_width_mm is None:
        if f35 is None:
            raise ExifError("EXIF field `sensor_width_mm` is missing: need FocalLengthIn35mmFilm or "
                            "FocalPlaneXResolution, or pass a default sensor width")
        w, h = (3, 2) if image_size is None else image_size
        if not (w > 0 and h > 0):
            raise ExifError(f"`image_size` must be positive (width, height), got {image_size!r}")
        sensor_width_mm = FULL_FRAME_DIAGONAL_MM * f / f35 * w / math.hypot(w, h)
    s = _check_field(sensor_width_mm, "sensor_width_mm")
    return ExifData(f, n, s, f35)


def _rational(value, field: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:  # (num, den) from old Pillow / raw IFDs
        num, den = value
        value = float("nan") if den == 0 else num / den
    try:
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ExifError(f"EXIF field `{field}` holds {value!r}, not a number") from None


def read_exif(source: Union[str, os.PathLike, "PIL.Image.Image"],  # noqa: F821
              default_sensor_width_mm: Optional[float] = None) -> ExifData:
    """Read focal length, f-number and sensor width from an image file's EXIF (Pillow).

    The sensor width comes from ``FocalLengthIn35mmFilm`` (through the crop factor, see the
    module docstring), else from ``FocalPlaneXResolution`` (sensor width = image width /
    resolution), else ``default_sensor_width_mm``.

    Args:
        source: path of a JPEG/TIFF/... file, or an open ``PIL.Image.Image``.
        default_sensor_width_mm: used when the file has no sensor-size information; ``None``
            makes that case an error.

    Returns:
        :class:`ExifData`.

    Raises:
        ExifError: no EXIF, or a field is missing or invalid (the message names it).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> img, exif = Image.new("RGB", (30, 20)), Image.Exif()
        >>> exif.get_ifd(0x8769).update({0x920A: 85.0, 0x829D: 1.4, 0xA405: 85})
        >>> buf = io.BytesIO(); img.save(buf, "JPEG", exif=exif); _ = buf.seek(0)
        >>> read_exif(buf).f_number
        1.4
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        return _from_image(source, default_sensor_width_mm)
    try:
        with Image.open(source) as img:
            return _from_image(img, default_sensor_width_mm)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ExifError(f"`source` {source!r} cannot be opened: {e}") from None


def _from_image(img, default_sensor_width_mm) -> ExifData:
    exif = img.getexif()
    sub = dict(exif.get_ifd(_TAG_EXIF_IFD)) if exif else {}
    merged = {**dict(exif), **sub}  # some writers put the tags in IFD0
    if not merged:
        raise ExifError("the image has no EXIF data (`focal_length_mm` and `f_number` are missing)")
    f = _rational(merged.get(_TAG_FOCAL_LENGTH), "focal_length_mm")
    n = _rational(merged.get(_TAG_FNUMBER), "f_number")
    f35 = _rational(merged.get(_TAG_FOCAL_35MM), "focal_length_35mm")
    if f35 == 0:  # EXIF: 0 means "unknown"
        f35 = None
    width, height = img.size
    sensor = None
    if f35 is None:
        xres = _rational(merged.get(_TAG_FP_XRES), "sensor_width_mm")
        unit = merged.get(_TAG_FP_UNIT, 2)
        if xres is not None and xres > 0 and unit in _FP_UNIT_MM:
            px_w = merged.get(_TAG_PIXEL_X) or width
            sensor = float(px_w) / xres * _FP_UNIT_MM[unit]
        elif default_sensor_width_mm is not None:
            sensor = default_sensor_width_mm
    return validate_exif(f, n, sensor, f35, image_size=(width, height))


def exif_batch(items: Sequence[ExifData], dtype=torch.float32, device=None) -> torch.Tensor:
    """Stack :class:`ExifData` into a ``(B, 3)`` tensor with columns :data:`EXIF_FIELDS`."""
    if isinstance(items, ExifData):
        items = [items]
    if len(items) == 0 or not all(isinstance(e, ExifData) for e in items):
        raise TypeError("`items` must be a non-empty sequence of ExifData")
    return torch.stack([e.as_tensor(dtype, device) for e in items])


def check_exif_tensor(exif: torch.Tensor, name: str = "exif", batch: Optional[int] = None) -> torch.Tensor:
    """Validate a ``(B, 3)`` EXIF tensor (columns :data:`EXIF_FIELDS`), naming the bad column."""
    if not isinstance(exif, torch.Tensor):
        raise TypeError(f"`{name}` must be a (B, 3) tensor, got {type(exif).__name__}")
    if not exif.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {exif.dtype}")
    if exif.dim() != 2 or exif.shape[1] != 3:
        raise ExifError(f"`{name}` must have shape (B, 3) with columns {EXIF_FIELDS}, got {tuple(exif.shape)}")
    if batch is not None and exif.shape[0] != batch:
        raise ExifError(f"`{name}` has batch size {exif.shape[0]}, expected {batch}")
    values = exif.detach()
    for j, field in enumerate(EXIF_FIELDS):
        col = values[:, j]
        lo, hi = EXIF_RANGES[field]
        if not bool(torch.isfinite(col).all()):
            raise ExifError(f"`{name}` column `{field}` contains NaN or infinite values")
        if not bool(((col >= lo) & (col <= hi)).all()):
            raise ExifError(f"`{name}` column `{field}` must lie in [{lo:g}, {hi:g}], got "
                            f"min {float(col.min()):g}, max {float(col.max()):g}")
    return exif


def normalize_exif(exif: torch.Tensor) -> torch.Tensor:
    """Map a ``(B, 3)`` EXIF tensor to log space, typical values in ``[-1, 1]``.

    Column ``j`` becomes ``2 (log v - log lo_j) / (log hi_j - log lo_j) - 1`` with the typical
    ranges 8-800 mm (focal length), f/1-f/32 and 4-60 mm (sensor width); blur scales with
    ratios of these numbers, so their logarithms are the natural coordinates.

    Example:
        >>> normalize_exif(torch.tensor([[8.0, 32.0, 60.0]]))
        tensor([[-1.,  1.,  1.]])
    """
    check_exif_tensor(exif)
    lo = torch.tensor([math.log(_LOG_SPANS[k][0]) for k in EXIF_FIELDS], dtype=exif.dtype, device=exif.device)
    hi = torch.tensor([math.log(_LOG_SPANS[k][1]) for k in EXIF_FIELDS], dtype=exif.dtype, device=exif.device)
    return 2.0 * (exif.log() - lo) / (hi - lo) - 1.0


class ExifEmbedder(nn.Module):
    """EXIF conditioning vector: Fourier features of the normalised log values, then an MLP.

    Args:
        dim: output width.
        num_freqs: Fourier frequencies per value (see :func:`lensblur_models.nn.fourier_features`).

    Shapes: ``exif`` ``(B, 3)`` (columns :data:`EXIF_FIELDS`) -> ``(B, dim)``.

    Example:
        >>> ExifEmbedder(8)(torch.tensor([[50.0, 2.8, 36.0]])).shape
        torch.Size([1, 8])
    """

    def __init__(self, dim: int, num_freqs: int = 6):
        super().__init__()
        self.embed = ScalarEmbedder(len(EXIF_FIELDS), dim, num_freqs=num_freqs, max_freq=16.0)

    def forward(self, exif: torch.Tensor) -> torch.Tensor:
        return self.embed(normalize_exif(exif))
