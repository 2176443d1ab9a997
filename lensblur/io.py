"""Reading and writing images and depth maps for the CLI and examples.

Colour images are 8/16-bit sRGB on disk and linear radiance in memory (kornia's sRGB transfer
functions); depth maps are ``.npy`` (metres), 16-bit PNG (metres times ``depth_scale``), or
``.exr`` (metres; :mod:`lensblur.exr`, the ``exr`` extra: ``pip install "lensblur[exr]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from kornia.color import linear_rgb_to_rgb, rgb_to_linear_rgb

from .validation import LensBlurError

__all__ = ["read_image", "read_depth", "read_npy", "write_image", "to_srgb_uint8", "MAX_PIXELS"]

PathLike = Union[str, Path]

#: Most pixels of an image or depth map read from a file (a 16384 x 16384 frame): a header
#: claiming more is refused before anything is allocated.
MAX_PIXELS = 16384 * 16384


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise LensBlurError(f"{what} file not found: {p}")
    return p


def read_image(path: PathLike) -> torch.Tensor:
    """Read an sRGB PNG/JPEG as a ``(1, 3, H, W)`` float32 tensor of linear radiance in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    p = _existing(path, "image")
    try:
        with Image.open(p) as im:
            _check_pixels(im.size[0], im.size[1], p)
            arr = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise LensBlurError(f"cannot read image {p}: not a PNG/JPEG image") from exc
    except LensBlurError:
        raise
    except Exception as exc:  # truncated or corrupt data: Pillow raises many kinds of errors
        raise LensBlurError(f"cannot read image {p}: corrupt or truncated ({type(exc).__name__}: "
                            f"{exc})") from exc
    srgb = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return rgb_to_linear_rgb(srgb).contiguous()


def read_depth(path: PathLike, depth_scale: float = 1.0) -> torch.Tensor:
    """Read a metric depth map as ``(1, 1, H, W)`` float32 metres.

    ``.npy``: values in metres (a 2-D array, or 3-D with one channel).  PNG (8/16-bit
    greyscale): metres = value / ``depth_scale``.  ``.exr`` (any OpenEXR file, see :mod:`lensblur.exr`):
    metres, from the ``Z`` channel (else ``Y``, ``R``, ``depth`` or the first one).  Values must
    be finite and > 0.
    """
    p = _existing(path, "depth")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = read_npy(p, "depth")
        if arr.dtype.kind not in "fiu":
            raise LensBlurError(f"depth {p} must hold real numbers (float or integer), got dtype "
                                f"{arr.dtype}")
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        elif arr.ndim != 2:
            raise LensBlurError(f"depth {p} must be a 2-D map (or 3-D with one channel), got "
                                f"shape {arr.shape}")
    elif suffix in (".png", ".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(p) as im:
                _check_pixels(im.size[0], im.size[1], p)
                arr = np.asarray(im)
        except LensBlurError:
            raise
        except Exception as exc:  # not an image, truncated, corrupt
            raise LensBlurError(f"cannot read depth {p}: not a readable {suffix} image "
                                f"({type(exc).__name__}: {exc})") from exc
        if arr.dtype.kind not in "fiu":
            raise LensBlurError(f"depth {p} must be a greyscale image, got pixels of {arr.dtype}")
        arr = arr.astype(np.float64) / float(depth_scale)
    elif suffix == ".exr":
        from .exr import read_exr

        chans = read_exr(p)   # metres: the Z (or Y, R, depth) channel, else the first one
        key = next((k for k in ("Z", "Y", "R", "depth", "D") if k in chans), None)
        if key is None:
            key = next((k for k in sorted(chans) if k.split(".")[-1] in ("Z", "depth")), sorted(chans)[0])
        arr = chans[key]
    else:
        raise LensBlurError(f"unsupported depth format {suffix!r} for {p}; use .npy, .png or .exr")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise LensBlurError(f"depth {p} must be a 2-D map, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise LensBlurError(f"depth {p} contains NaN or infinite values")
    if (arr <= 0).any():
        raise LensBlurError(f"depth {p} must be > 0 everywhere (min {arr.min():.4g}); "
                            "is it a disparity or does it need --depth-scale?")
    return torch.from_numpy(arr.astype(np.float32))[None, None].contiguous()


def _check_pixels(width: int, height: int, p: Path) -> None:
    if width * height > MAX_PIXELS:
        raise LensBlurError(f"{p} is {width}x{height}: more than the {MAX_PIXELS} pixels lensblur "
                            "reads")


def read_npy(path: PathLike, what: str = "array") -> np.ndarray:
    """Read a ``.npy`` file safely: the header is parsed and its shape and dtype checked against
    the file's size *before* anything is allocated (no pickles, no object arrays, at most
    :data:`MAX_PIXELS` elements); every malformed file raises :class:`LensBlurError`."""
    from numpy.lib import format as npf

    p = _existing(path, what)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            version = npf.read_magic(f)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            reader = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
            shape, fortran, dtype = reader(f, max_header_size=10000)
            offset = f.tell()
            if dtype.hasobject or dtype.kind not in "biufcSUV":
                raise LensBlurError(f"cannot read {what} {p}: dtype {dtype} is not plain data")
            count = 1
            for n in shape:
                count *= int(n)
            if count > MAX_PIXELS * 4:
                raise LensBlurError(f"cannot read {what} {p}: its header claims shape {shape}, "
                                    f"more than lensblur reads")
            if count * dtype.itemsize != size - offset:
                raise LensBlurError(f"cannot read {what} {p}: its header claims shape {shape} of "
                                    f"{dtype} ({count * dtype.itemsize} bytes) but the file holds "
                                    f"{size - offset} bytes of data (truncated or corrupt)")
            data = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype, count=count)
        return data.reshape(shape, order="F" if fortran else "C")
    except LensBlurError:
        raise
    except Exception as exc:  # bad magic, unparsable header, unknown dtype...
        raise LensBlurError(f"cannot read {what} {p}: not a valid .npy file "
                            f"({type(exc).__name__}: {exc})") from exc


def to_srgb_uint8(linear: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` or ``(3, H, W)`` linear radiance -> ``(H, W, 3)`` uint8 sRGB (clipped)."""
    x = linear.detach().float().cpu()
    if x.dim() == 4:
        x = x[0]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    srgb = linear_rgb_to_rgb(x.clamp(0, 1)[None])[0]
    return (srgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def write_image(path: PathLike, linear: torch.Tensor) -> Path:
    """Write linear radiance as an 8-bit sRGB PNG/JPEG (by suffix); returns the path."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_srgb_uint8(linear)).save(p)
    return p
