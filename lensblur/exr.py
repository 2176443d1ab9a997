"""A small, dependency-free OpenEXR reader and writer for depth maps and linear images.

Supports single-part scanline files — what renderers and depth estimators write for depth —
with ``NO``, ``RLE``, ``ZIPS`` and ``ZIP`` compression and ``HALF``, ``FLOAT`` and ``UINT``
channels.  Tiled, multi-part, deep and the lossy/wavelet compressions (PIZ, PXR24, B44, DWA)
raise :class:`~lensblur.LensBlurError` naming the feature (convert such files with any EXR tool,
or save the depth as ``.npy``).

Format reference: the OpenEXR file layout (magic number, header attributes, scanline offset
table, chunks of ``y, size, data``; ZIP/RLE data are byte-split into even and odd bytes and
delta-coded before compression).

Example:
    >>> import numpy as np, tempfile, os
    >>> depth = np.linspace(1.0, 10.0, 12, dtype=np.float32).reshape(3, 4)
    >>> path = os.path.join(tempfile.mkdtemp(), "depth.exr")
    >>> write_exr(path, {"Z": depth})
    >>> np.array_equal(read_exr(path)["Z"], depth)
    True
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Dict, Union

import numpy as np

from .validation import LensBlurError

__all__ = ["read_exr", "write_exr", "COMPRESSIONS"]

MAGIC = 20000630
#: The lossless compressions :func:`write_exr` writes (and :func:`read_exr` reads), by name.
COMPRESSIONS = {"none": 0, "rle": 1, "zips": 2, "zip": 3}
_COMPRESSION_NAMES = {0: "NO", 1: "RLE", 2: "ZIPS", 3: "ZIP", 4: "PIZ", 5: "PXR24", 6: "B44",
                      7: "B44A", 8: "DWAA", 9: "DWAB"}
_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16}
_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _cstr(buf: bytes, pos: int):
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("latin-1"), end + 1


def _parse_channels(value: bytes):
    chans, pos = [], 0
    while pos < len(value) and value[pos] != 0:
        name, pos = _cstr(value, pos)
        ptype, _plinear, xs, ys = struct.unpack_from("<iB3xii", value, pos)
        pos += 16
        chans.append((name, ptype, xs, ys))
    return chans


def _undo_predictor_and_split(data: bytes) -> bytes:
    t = np.frombuffer(data, dtype=np.uint8)
    if t.size == 0:
        return b""
    # predictor: t[i] = t[i-1] + t[i] - 128 (mod 256), a running sum
    t = (np.cumsum(t.astype(np.int64) - 128) + 128).astype(np.uint8)
    out = np.empty_like(t)
    half = (t.size + 1) // 2
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()


def _apply_predictor_and_split(raw: bytes) -> bytes:
    r = np.frombuffer(raw, dtype=np.uint8)
    if r.size == 0:
        return b""
    t = np.concatenate([r[0::2], r[1::2]]).astype(np.int64)
    d = t.copy()
    d[1:] = (t[1:] - t[:-1] + 128 + 256) % 256
    return d.astype(np.uint8).tobytes()


def _rle_decode(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(data):
        count = struct.unpack_from("b", data, pos)[0]
        pos += 1
        if count < 0:
            out += data[pos:pos - count]
            pos -= count
        else:
            out += data[pos:pos + 1] * (count + 1)
            pos += 1
    return bytes(out)


def read_exr(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Read a scanline OpenEXR file into ``{channel name: (H, W) array}``.

    ``HALF`` channels come back as float16, ``FLOAT`` as float32, ``UINT`` as uint32, with the
    rows of the file's data window.  Raises :class:`~lensblur.LensBlurError` for files that are
    not EXR or use an unsupported feature.
    """
    p = Path(path)
    buf = p.read_bytes()
    if len(buf) < 8 or struct.unpack_from("<i", buf, 0)[0] != MAGIC:
        raise LensBlurError(f"{p} is not an OpenEXR file")
    flags = struct.unpack_from("<i", buf, 4)[0]
    if flags & 0x200:
        raise LensBlurError(f"{p}: tiled EXR files are not supported; save the depth as scanlines or .npy")
    if flags & 0x1800:
        raise LensBlurError(f"{p}: multi-part or deep EXR files are not supported")
    pos, attrs = 8, {}
    try:
        while buf[pos] != 0:
            name, pos = _cstr(buf, pos)
            _atype, pos = _cstr(buf, pos)
            size = struct.unpack_from("<i", buf, pos)[0]
            pos += 4
            attrs[name] = buf[pos:pos + size]
            pos += size
        pos += 1
        chans = sorted(_parse_channels(attrs["channels"]))
        compression = attrs["compression"][0]
        x0, y0, x1, y1 = struct.unpack("<iiii", attrs["dataWindow"])
    except (IndexError, KeyError, ValueError, struct.error) as exc:
        raise LensBlurError(f"{p}: corrupt EXR header ({exc})") from exc
    if compression not in _LINES_PER_CHUNK:
        raise LensBlurError(f"{p}: EXR compression {_COMPRESSION_NAMES.get(compression, compression)} is "
                            f"not supported (use NONE, RLE, ZIPS or ZIP), or save the depth as .npy")
    for name, ptype, xs, ys in chans:
        if ptype not in _DTYPES or xs != 1 or ys != 1:
            raise LensBlurError(f"{p}: channel {name!r} is subsampled or of unknown type")
    width, height = x1 - x0 + 1, y1 - y0 + 1
    lines = _LINES_PER_CHUNK[compression]
    n_chunks = (height + lines - 1) // lines
    offsets = struct.unpack_from(f"<{n_chunks}Q", buf, pos)
    out = {name: np.zeros((height, width), dtype=_DTYPES[ptype]) for name, ptype, _, _ in chans}
    row_bytes = sum(width * _DTYPES[pt].itemsize for _, pt, _, _ in chans)
    try:
        for off in offsets:
            y, size = struct.unpack_from("<ii", buf, off)
            data = buf[off + 8:off + 8 + size]
            n = min(lines, y1 - y + 1)
            expected = n * row_bytes
            if size < expected:       # compressed (an incompressible chunk is stored raw)
                if compression == 1:
                    data = _undo_predictor_and_split(_rle_decode(data))
                elif compression in (2, 3):
                    data = _undo_predictor_and_split(zlib.decompress(data))
            if len(data) != expected:
                raise LensBlurError(f"{p}: chunk at line {y} has {len(data)} bytes, expected {expected}")
            cur = 0
            for r in range(n):
                for name, ptype, _, _ in chans:
                    nbytes = width * _DTYPES[ptype].itemsize
                    out[name][y - y0 + r] = np.frombuffer(data, dtype=_DTYPES[ptype], count=width,
                                                          offset=cur)
                    cur += nbytes
    except (struct.error, zlib.error, IndexError) as exc:
        raise LensBlurError(f"{p}: corrupt EXR data ({exc})") from exc
    return out


def _attr(name: str, atype: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + atype.encode() + b"\0" + struct.pack("<i", len(value)) + value


def write_exr(path: Union[str, Path], channels: Dict[str, np.ndarray], compression: str = "zip") -> None:
    """Write ``{name: (H, W) array}`` as a scanline OpenEXR file.

    float16 arrays are stored as ``HALF``, uint32 as ``UINT``, anything else as ``FLOAT``
    (float32).  ``compression``: ``"none"``, ``"rle"``, ``"zips"`` or ``"zip"`` (lossless).
    """
    if compression not in COMPRESSIONS:
        raise LensBlurError(f"`compression` must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if not channels:
        raise LensBlurError("`channels` must not be empty")
    arrays = {}
    for name, a in channels.items():
        a = np.asarray(a)
        if a.ndim != 2:
            raise LensBlurError(f"channel {name!r} must be a 2-D array, got shape {a.shape}")
        ptype = 1 if a.dtype == np.float16 else 0 if a.dtype == np.uint32 else 2
        arrays[name] = (ptype, np.ascontiguousarray(a, dtype=_DTYPES[ptype]))
    shapes = {a.shape for _, a in arrays.values()}
    if len(shapes) != 1:
        raise LensBlurError(f"all channels must have the same shape, got {sorted(shapes)}")
    height, width = shapes.pop()
    names = sorted(arrays)
    comp = COMPRESSIONS[compression]
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", arrays[n][0], 0, 1, 1) for n in names) + b"\0"
    header = struct.pack("<ii", MAGIC, 2)
    header += _attr("channels", "chlist", chlist)
    header += _attr("compression", "compression", bytes([comp]))
    box = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header += _attr("dataWindow", "box2i", box) + _attr("displayWindow", "box2i", box)
    header += _attr("lineOrder", "lineOrder", b"\0")
    header += _attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
    header += _attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
    header += _attr("screenWindowWidth", "float", struct.pack("<f", 1.0))
    header += b"\0"
    lines = _LINES_PER_CHUNK[comp]
    chunks = []
    for y in range(0, height, lines):
        raw = b"".join(arrays[n][1][r].tobytes() for r in range(y, min(y + lines, height)) for n in names)
        data = raw
        if comp in (2, 3):
            packed = zlib.compress(_apply_predictor_and_split(raw))
            data = packed if len(packed) < len(raw) else raw
        elif comp == 1:
            packed = _rle_encode(_apply_predictor_and_split(raw))
            data = packed if len(packed) < len(raw) else raw
        chunks.append(struct.pack("<ii", y, len(data)) + data)
    table_start = len(header)
    pos = table_start + 8 * len(chunks)
    offsets = []
    for c in chunks:
        offsets.append(pos)
        pos += len(c)
    Path(path).write_bytes(header + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(chunks))


def _rle_encode(data: bytes) -> bytes:
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        run = 1
        while i + run < n and run < 128 and data[i + run] == data[i]:
            run += 1
        if run >= 3:
            out += struct.pack("b", run - 1) + data[i:i + 1]
            i += run
            continue
        j = i
        while j < n and j - i < 127 and not (j + 2 < n and data[j] == data[j + 1] == data[j + 2]):
            j += 1
        out += struct.pack("b", -(j - i)) + data[i:j]
        i = j
    return bytes(out)
