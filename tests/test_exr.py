"""``lensblur.exr`` on files written by the official OpenEXR library, and on hostile files."""

import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lensblur import LensBlurError
from lensblur.exr import COMPRESSIONS, read_exr, write_exr

OpenEXR = pytest.importorskip("OpenEXR")

# lossy codecs: (half tolerance, float tolerance) relative to the values (1..10 here); 0 = exact
LOSSY = {"b44": (5e-2, 0), "b44a": (5e-2, 0), "pxr24": (1e-3, 2e-5), "dwaa": (1e-3, 1e-3), "dwab": (1e-3, 1e-3),
         "htj2k256": (1e-3, 0), "htj2k32": (1e-3, 0)}
_Y, _X = np.mgrid[0:37, 0:45]
DEPTH = (1.0 + 4.0 * (_X + _Y) / 80 + 0.5 * np.sin(_X / 3.0) + 4.0 * (_X > 30)).astype(np.float32)  # ramp + edge


def _official_write(path, channels, compression, tiled):
    """Write with the bindings directly (not through lensblur.exr)."""
    header = {"compression": getattr(OpenEXR, compression.upper().replace("NONE", "NO") + "_COMPRESSION"),
              "type": OpenEXR.tiledimage if tiled else OpenEXR.scanlineimage}
    if tiled:
        t = OpenEXR.TileDescription()
        t.xSize, t.ySize, t.mode = 16, 8, OpenEXR.ONE_LEVEL
        header["tiles"] = t
    OpenEXR.File(header, channels).write(str(path))


@pytest.mark.parametrize("tiled", [False, True], ids=["scanline", "tiled"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["half", "float"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_reads_every_compression_type_and_layout(tmp_path, compression, dtype, tiled):
    z = DEPTH.astype(dtype)
    _official_write(tmp_path / "d.exr", {"Z": z, "Y": np.full_like(z, 2.5)}, compression, tiled)
    back = read_exr(tmp_path / "d.exr")
    assert sorted(back) == ["Y", "Z"] and back["Z"].dtype == dtype and back["Z"].shape == (37, 45)
    tol = LOSSY.get(compression, (0, 0))[dtype == np.float32]
    np.testing.assert_allclose(back["Z"].astype(np.float64), z.astype(np.float64), rtol=tol, atol=0)
    np.testing.assert_allclose(back["Y"].astype(np.float64), 2.5, rtol=tol)


def test_uint_channels_multi_part_and_our_writer(tmp_path):
    ids = np.random.default_rng(1).integers(0, 2 ** 32, (5, 7), dtype=np.uint32)
    write_exr(tmp_path / "u.exr", {"id": ids, "Z": DEPTH[:5, :7].astype(np.float64)}, "piz", tile_size=4)
    back = read_exr(tmp_path / "u.exr")
    assert back["id"].dtype == np.uint32 and np.array_equal(back["id"], ids)
    assert back["Z"].dtype == np.float32 and np.array_equal(back["Z"], DEPTH[:5, :7])
    parts = [OpenEXR.Part({"name": "beauty"}, {"R": np.ones((3, 4), "f")}),
             OpenEXR.Part({"name": "depth"}, {"Z": np.full((3, 4), 7.0, "f")})]
    OpenEXR.File(parts).write(str(tmp_path / "mp.exr"))
    back = read_exr(tmp_path / "mp.exr")
    assert sorted(back) == ["beauty.R", "depth.Z"] and float(back["depth.Z"][0, 0]) == 7.0


def _with_data_window(src: Path, dst: Path, x1: int, y1: int) -> Path:
    b = bytearray(src.read_bytes())
    key = b"dataWindow\0box2i\0"
    i = b.index(key) + len(key) + 4
    struct.pack_into("<iiii", b, i, 0, 0, x1, y1)
    dst.write_bytes(bytes(b))
    return dst


@pytest.mark.parametrize("compression", ["none", "zip", "piz", "dwab"])
def test_a_header_claiming_a_giant_image_is_refused_before_decoding(tmp_path, compression):
    write_exr(tmp_path / "ok.exr", {"Z": DEPTH}, compression)
    bad = _with_data_window(tmp_path / "ok.exr", tmp_path / "huge.exr", 99999, 99999)
    with pytest.raises(LensBlurError, match="claims"):
        read_exr(bad, max_pixels=10 ** 11)    # the file's size refuses it, not the pixel cap
    with pytest.raises(LensBlurError, match="max_pixels"):
        read_exr(bad)
    with pytest.raises(LensBlurError, match="max_pixels"):
        read_exr(tmp_path / "ok.exr", max_pixels=100)
    assert read_exr(tmp_path / "ok.exr")["Z"].shape == DEPTH.shape


@pytest.mark.slow  # a fresh interpreter imports torch (~15 s on a loaded machine)
def test_a_giant_header_allocates_nothing_large(tmp_path):
    """In a fresh process with a 1 GiB address-space increase allowed, the 37 GiB claim fails
    with our error (a MemoryError or a kill would mean the pixels were allocated first)."""
    write_exr(tmp_path / "ok.exr", {"Z": DEPTH}, "zip")
    bad = _with_data_window(tmp_path / "ok.exr", tmp_path / "huge.exr", 99999, 99999)
    code = (
        "import resource, sys\n"
        "from lensblur.exr import read_exr\n"
        "from lensblur import LensBlurError\n"
        "import OpenEXR\n"
        "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))\n"
        "try:\n    read_exr(sys.argv[1], max_pixels=10 ** 11)\nexcept LensBlurError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and "refused:" in r.stdout and "claims" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("data, key", [(b"", "not an OpenEXR"), (b"\0" * 64, "not an OpenEXR"),
                                       (b"v/1\x01\x02\0\0\0" + b"\0" * 30, "malformed")])
def test_garbage_is_a_clear_error(tmp_path, data, key):
    (tmp_path / "bad.exr").write_bytes(data)
    with pytest.raises(LensBlurError, match=key):
        read_exr(tmp_path / "bad.exr")


@pytest.mark.slow
def test_missing_bindings_name_the_extra(tmp_path):
    code = ("import sys; sys.modules['OpenEXR'] = None\n"
            "from lensblur.exr import read_exr, MissingExtraError\n"
            "try:\n    read_exr(sys.argv[1])\nexcept MissingExtraError as e:\n"
            "    assert isinstance(e, ImportError) and isinstance(e, ValueError); print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.exr")], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and "lensblur[exr]" in r.stdout, r.stderr[-2000:]


def _seed_files():
    seeds = []
    d = Path(tempfile.mkdtemp(prefix="lensblur_exr_seed_"))
    for comp, tiled, dtype in (("zip", False, np.float32), ("piz", True, np.float16), ("none", False, np.float16),
                               ("rle", True, np.float32), ("dwaa", False, np.float16), ("b44a", False, np.float16)):
        _official_write(d / "s.exr", {"Z": DEPTH[:9, :11].astype(dtype)}, comp, tiled)
        seeds.append((d / "s.exr").read_bytes())
    return seeds


SEEDS = _seed_files()


def _read_or_clear_error(data: bytes) -> None:
    fd, name = tempfile.mkstemp(suffix=".exr")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            chans = read_exr(name, max_pixels=10 ** 6)
        except LensBlurError as exc:
            assert str(exc)
            return
        assert chans and all(a.ndim == 2 for a in chans.values())
    finally:
        os.unlink(name)


@settings(max_examples=60)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _read_or_clear_error(data)
    _read_or_clear_error(b"v/1\x01" + data)        # past the magic number


@settings(max_examples=150)
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                     min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_fuzz_mutated_valid_files(seed, edits, cut):
    b = bytearray(SEEDS[seed])
    for pos, val in edits:
        b[pos % len(b)] = val
    if cut is not None:
        b = b[:cut % len(b)]
    _read_or_clear_error(bytes(b))


def test_cli_exits_2_on_a_corrupted_depth_exr(tmp_path):
    from PIL import Image

    from lensblur import cli

    Image.fromarray(np.zeros((37, 45, 3), np.uint8)).save(tmp_path / "p.png")
    write_exr(tmp_path / "ok.exr", {"Z": DEPTH}, "zip")
    bad = _with_data_window(tmp_path / "ok.exr", tmp_path / "bad.exr", 99999, 99999)
    code = cli.main(["render", str(tmp_path / "p.png"), str(bad), "--focal-length", "50", "--f-number", "2",
                     "--focus", "3", "--out", str(tmp_path / "o.png"), "--no-progress"])
    assert code == 2
