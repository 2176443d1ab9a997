"""OpenEXR depth maps and linear images, through the official OpenEXR bindings.

Needs the ``exr`` extra (``pip install "lensblur[exr]"``, the ``openexr`` package of the
Academy Software Foundation).  Every OpenEXR feature the library reads is read: scanline and
tiled, single- and multi-part files, ``HALF``, ``FLOAT`` and ``UINT`` channels, and every
compression (``NO``, ``RLE``, ``ZIPS``, ``ZIP``, ``PIZ``, ``PXR24``, ``B44``, ``B44A``, ``DWAA``,
``DWAB``, ``ZSTD``, ``HTJ2K``).

Untrusted files.  Before any pixel is decoded the header is read alone and the size it claims is
bounded by the size of the file: every chunk (a block of scanlines or a tile) costs at least
16 bytes of the file (its offset-table entry and chunk header), and the decoded pixels cannot
exceed the file's size times the largest ratio the file's compression can reach
(:data:`MAX_COMPRESSION_RATIO`).  A header claiming 100000 x 100000 pixels in a small file is
therefore refused without allocating its pixels, as are files over ``max_pixels``.  Every
malformed or truncated file raises :class:`~lensblur.LensBlurError` naming the file (the CLI exits
with code 2).

Example:
    >>> import numpy as np, tempfile, os
    >>> depth = np.linspace(1.0, 10.0, 12, dtype=np.float32).reshape(3, 4)
    >>> path = os.path.join(tempfile.mkdtemp(), "depth.exr")
    >>> write_exr(path, {"Z": depth}, compression="piz", tile_size=2)
    >>> np.array_equal(read_exr(path)["Z"], depth)
    True
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from .validation import LensBlurError

__all__ = ["read_exr", "write_exr", "COMPRESSIONS", "MAX_COMPRESSION_RATIO", "MissingExtraError",
           "DEFAULT_MAX_PIXELS"]

#: Compression names accepted by :func:`write_exr` (the OpenEXR names, lower case).
COMPRESSIONS = ("none", "rle", "zips", "zip", "piz", "pxr24", "b44", "b44a", "dwaa", "dwab", "zstd",
                "htj2k256", "htj2k32")

#: Upper bound of decoded bytes per stored byte, per compression (lower case OpenEXR name).
#: ``none`` stores pixels as they are; RLE codes at most 128 bytes in 2; ``b44`` packs 16 half
#: values (32 bytes) in 14 and ``b44a`` flat blocks in 3; deflate (ZIP, ZIPS, PXR24 which first
#: packs floats to 24 bits) never exceeds 1032:1.  PIZ, DWA, ZSTD and HTJ2K chain several coders;
#: they get a generous 100000:1 (the best measured, on a constant 2048 x 2048 image, is 6528:1).
MAX_COMPRESSION_RATIO = {"none": 1.0, "rle": 64.0, "zips": 1032.0, "zip": 1032.0,
                         "pxr24": 1032.0 * 4 / 3, "b44": 32 / 14, "b44a": 32 / 3}
_GENEROUS_RATIO = 1e5
#: Default ``max_pixels`` of :func:`read_exr`: 2**28 (16384 x 16384) pixels per channel.
DEFAULT_MAX_PIXELS = 2 ** 28
_LINES_PER_CHUNK = {"none": 1, "rle": 1, "zips": 1, "zip": 16, "piz": 32, "pxr24": 16, "b44": 32,
                    "b44a": 32, "dwaa": 32, "dwab": 256, "zstd": 32, "htj2k256": 256, "htj2k32": 32}


class MissingExtraError(LensBlurError, ImportError):
    """An optional dependency is not installed (both a :class:`LensBlurError` and an
    :class:`ImportError`); the message names the extra to install."""


def _openexr():
    try:
        import OpenEXR
    except ImportError as exc:
        raise MissingExtraError(
            "reading or writing .exr files needs the OpenEXR bindings: "
            "pip install \"lensblur[exr]\" (or pip install openexr)") from exc
    return OpenEXR


def _compression_name(value) -> str:
    name = getattr(value, "name", str(value)).upper()
    return name[:-len("_COMPRESSION")].lower() if name.endswith("_COMPRESSION") else name.lower()


def _check_claimed_size(path: Path, parts, file_size: int, max_pixels: int) -> None:
    """Refuse headers whose pixels cannot fit in a file of ``file_size`` bytes."""
    min_chunks, decoded = 0, 0.0
    for i, part in enumerate(parts):
        h = part.header
        where = f"EXR {path}" + (f" part {i}" if len(parts) > 1 else "")
        try:
            (x0, y0), (x1, y1) = (tuple(int(v) for v in c) for c in h["dataWindow"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LensBlurError(f"{where}: malformed dataWindow") from exc
        width, height = x1 - x0 + 1, y1 - y0 + 1
        if width <= 0 or height <= 0:
            raise LensBlurError(f"{where}: empty or inverted dataWindow ({x0}, {y0}) - ({x1}, {y1})")
        if width * height > max_pixels:
            raise LensBlurError(f"{where}: {width} x {height} pixels exceed max_pixels={max_pixels}")
        comp = _compression_name(h.get("compression", "none"))
        tiles = h.get("tiles")
        if tiles is not None:
            tx, ty = int(tiles.xSize), int(tiles.ySize)
            if tx <= 0 or ty <= 0:
                raise LensBlurError(f"{where}: malformed tile size {tx} x {ty}")
            min_chunks += math.ceil(width / tx) * math.ceil(height / ty)
        else:
            min_chunks += math.ceil(height / _LINES_PER_CHUNK.get(comp, 256))
        for ch in h.get("channels", []):
            xs, ys = max(1, int(ch.xSampling)), max(1, int(ch.ySampling))
            # 2 bytes per sample: the smallest type (HALF), so the bound never refuses a valid file
            decoded += 2.0 * math.ceil(width / xs) * math.ceil(height / ys)
        ratio = MAX_COMPRESSION_RATIO.get(comp, _GENEROUS_RATIO)
        if decoded > ratio * file_size:
            raise LensBlurError(
                f"{where}: the header claims {width} x {height} pixels, more than a {comp!r} "
                f"compressed file of {file_size} bytes can hold (truncated or corrupted?)")
    if 16 * min_chunks > file_size:
        raise LensBlurError(f"EXR {path}: the header claims {min_chunks} chunks, more than a file of "
                            f"{file_size} bytes can hold (truncated or corrupted?)")


def read_exr(path: Union[str, Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> Dict[str, np.ndarray]:
    """Read every channel of an OpenEXR file as 2-D numpy arrays (their stored dtype).

    Channels of a multi-part file are named ``"<part name>.<channel>"`` (``"<part index>."``
    when a part has no name); a single part keeps the plain channel names.

    Args:
        path: the ``.exr`` file.
        max_pixels: refuse parts with more pixels than this (before decoding them).

    Returns:
        ``{channel name: (H, W) array}`` (``float16``, ``float32`` or ``uint32``; subsampled
        channels have their own, smaller shape).

    Raises:
        LensBlurError: the file is missing, not an OpenEXR file, truncated, corrupted, deep, or
            claims more pixels than its size allows (see the module docstring).
        MissingExtraError: the ``openexr`` package is not installed.
    """
    OpenEXR = _openexr()
    p = Path(path)
    if not p.is_file():
        raise LensBlurError(f"EXR file not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"\x76\x2f\x31\x01":
        raise LensBlurError(f"cannot read {p}: not an OpenEXR file (bad magic number)")
    try:
        head = OpenEXR.File(os.fspath(p), header_only=True)
        parts = list(head.parts)
    except Exception as exc:  # noqa: BLE001 - the bindings raise plain RuntimeError/ValueError
        raise LensBlurError(f"cannot read {p}: malformed OpenEXR header ({exc})") from exc
    if not parts:
        raise LensBlurError(f"cannot read {p}: the OpenEXR file has no parts")
    for part in parts:
        kind = getattr(part.header.get("type"), "name", "")
        if kind.startswith("deep"):
            raise LensBlurError(f"cannot read {p}: deep OpenEXR images are not supported")
    _check_claimed_size(p, parts, size, int(max_pixels))
    try:
        f = OpenEXR.File(os.fspath(p), separate_channels=True)
        out = {}
        for i, part in enumerate(f.parts):
            prefix = "" if len(f.parts) == 1 else f"{part.name() or i}."
            for name, ch in part.channels.items():
                pixels = ch.pixels
                if pixels is None:
                    raise LensBlurError(f"channel {name!r} has no pixel data")
                out[prefix + name] = np.ascontiguousarray(pixels)
    except (Exception, MemoryError) as exc:  # noqa: BLE001
        if isinstance(exc, LensBlurError):
            raise LensBlurError(f"cannot read {p}: {exc}") from exc
        raise LensBlurError(f"cannot read {p}: corrupted or truncated OpenEXR data ({exc})") from exc
    if not out:
        raise LensBlurError(f"cannot read {p}: the OpenEXR file has no channels")
    return out


def write_exr(path: Union[str, Path], channels: Dict[str, np.ndarray], compression: str = "zip", *,
              tile_size: Optional[int] = None) -> None:
    """Write 2-D arrays as the channels of a single-part OpenEXR file.

    Args:
        path: output file (its folder must exist).
        channels: ``{name: (H, W) array}``, all of one shape; ``float16``, ``float32`` and
            ``uint32`` are kept, other floats are written as ``float32``.
        compression: one of :data:`COMPRESSIONS` (``"zip"`` default; ``b44``, ``dwaa``, ``dwab``
            and ``pxr24`` are lossy for some types).
        tile_size: write a tiled file with square tiles of this size (default: scanlines).

    Raises:
        OSError: the file cannot be written.
    """
    OpenEXR = _openexr()
    if compression not in COMPRESSIONS:
        raise LensBlurError(f"unknown `compression` {compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    if not isinstance(channels, dict) or not channels:
        raise LensBlurError("`channels` must be a non-empty dict of name -> (H, W) array")
    arrays = {}
    for name, arr in channels.items():
        a = np.asarray(arr)
        if a.ndim != 2 or min(a.shape) == 0:
            raise LensBlurError(f"`channels[{name!r}]` must be a non-empty 2-D array, got shape {a.shape}")
        if a.dtype not in (np.float16, np.float32, np.uint32):
            if not np.issubdtype(a.dtype, np.floating):
                raise LensBlurError(f"`channels[{name!r}]` must be float16, float32 or uint32, got {a.dtype}")
            a = a.astype(np.float32)
        arrays[name] = np.ascontiguousarray(a)
    if len({a.shape for a in arrays.values()}) != 1:
        raise LensBlurError("`channels` must all have the same shape")
    header = {"compression": getattr(OpenEXR, compression.upper().replace("NONE", "NO") + "_COMPRESSION"),
              "type": OpenEXR.scanlineimage}
    if tile_size is not None:
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
            raise LensBlurError(f"`tile_size` must be a positive int or None, got {tile_size!r}")
        tiles = OpenEXR.TileDescription()
        tiles.xSize = tiles.ySize = tile_size
        tiles.mode = OpenEXR.ONE_LEVEL
        header.update(type=OpenEXR.tiledimage, tiles=tiles)
    try:
        OpenEXR.File(header, arrays).write(os.fspath(path))
    except RuntimeError as exc:
        raise OSError(f"cannot write {path}: {exc}") from exc
