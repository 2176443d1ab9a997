"""The command line as a user drives it: real files in temporary folders, exit codes, messages.

Subprocess runs cover what only a real process shows (the entry point, exit codes, stdout and
stderr, the benchmark runner); the many bad-input cases call :func:`lensblur.cli.main` in-process
(the same code, without a Python start-up each).  Images are tiny.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lensblur
from lensblur import cli
from lensblur.exr import read_exr, write_exr
from lensblur.io import read_image

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=240, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "lensblur", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def photo(tmp_path):
    """A 16x24 photo whose left half is far (6 m) and right half in focus (1 m)."""
    rng = np.random.default_rng(0)
    img = (rng.random((16, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    depth = np.full((16, 24), 6.0, np.float32)
    depth[:, 12:] = 1.0
    np.save(tmp_path / "depth.npy", depth)
    return tmp_path, img, depth


LENS = ["--focal-length", "50", "--f-number", "1.4", "--focus", "1.0", "--sensor-width", "6"]


# ---------------------------------------------------------------------------------- render
def test_render_writes_linear_npy_and_exr_that_match_the_library(photo):
    tmp, img, depth = photo
    # 16-bit PNG depth in millimetres, the default --depth-scale
    Image.fromarray((depth * 1000).astype(np.uint16)).save(tmp / "depth16.png")
    r = run_cli("render", tmp / "photo.png", tmp / "depth16.png", *LENS, "--method", "gather",
                "--aperture", "disk", "--out", tmp / "out.npy")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "max coc" in r.stdout
    out = np.load(tmp / "out.npy")
    assert out.shape == (16, 24, 3) and out.dtype == np.float32
    # the CLI is the library on the decoded files: same numbers
    lens = lensblur.ThinLens(50.0, 1.4, 1.0, sensor_width_mm=6.0)
    expected = lensblur.render(read_image(tmp / "photo.png"), torch.from_numpy(depth)[None, None], lens,
                               lensblur.Aperture.disk(), method="gather")
    np.testing.assert_allclose(out, expected[0].permute(1, 2, 0).numpy(), atol=1e-5)
    # in-focus half untouched (linear sRGB decode of the input), far half blurred
    lin = read_image(tmp / "photo.png")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out[:, 18:], lin[:, 18:], atol=1e-5)
    assert np.abs(np.diff(out[:, :6], axis=1)).mean() < 0.6 * np.abs(np.diff(lin[:, :6], axis=1)).mean()

    # the same depth as inverse depth in an EXR file, written as float32 EXR radiance (in-process:
    # the same code path without a second interpreter start-up)
    write_exr(tmp / "disp.exr", {"Z": (1.0 / depth).astype(np.float32)})
    code = cli.main([str(a) for a in ("render", tmp / "photo.png", tmp / "disp.exr", "--disparity", *LENS,
                                      "--method", "gather", "--aperture", "disk", "--no-progress",
                                      "--out", tmp / "out.exr")])
    assert code == 0
    chans = read_exr(tmp / "out.exr")
    rgb = np.stack([chans["R"], chans["G"], chans["B"]], -1)
    np.testing.assert_allclose(rgb, out, atol=1e-5)


def test_render_error_is_one_line_with_exit_code_2(photo):
    tmp, _, _ = photo
    np.save(tmp / "nan.npy", np.full((16, 24), np.nan))
    r = run_cli("render", tmp / "photo.png", tmp / "nan.npy", *LENS, "--out", tmp / "o.png")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lensblur render: error:") and "NaN" in lines[0]
    assert not (tmp / "o.png").exists()


def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case, key", [
    ("out_suffix", "unsupported format '.gif'"),
    ("depth_suffix", "unsupported format '.txt'"),
    ("image_missing", "image file not found"),
    ("depth_missing", "depth file not found"),
    ("aperture", "bad --aperture 'triangle'"),
    ("blades", "blades"),
    ("depth_scale", "--depth-scale must be > 0"),
    ("focus_inside_focal_length", "focus_distance_m"),
    ("focal_length", "focal_length_mm"),
    ("not_an_image", "cannot read"),
    ("zero_depth_png", "> 0"),
    ("unwritable_out", "cannot write"),
    ("bad_exr", "not an OpenEXR file"),
])
def test_render_bad_input_exits_2_naming_the_problem(photo, capsys, case, key):
    tmp, _, _ = photo
    image, depth, out = tmp / "photo.png", tmp / "depth.npy", tmp / "o.png"
    lens = list(LENS)
    extra = []
    if case == "out_suffix":
        out = tmp / "o.gif"
    elif case == "depth_suffix":
        depth = tmp / "depth.txt"
        depth.write_text("1 2 3")
    elif case == "image_missing":
        image = tmp / "nope.png"
    elif case == "depth_missing":
        depth = tmp / "nope.npy"
    elif case == "aperture":
        extra = ["--aperture", "triangle"]
    elif case == "blades":
        extra = ["--aperture", "polygon:2"]
    elif case == "depth_scale":
        extra = ["--depth-scale", "-5"]
    elif case == "focus_inside_focal_length":
        lens[lens.index("--focus") + 1] = "0.03"
    elif case == "focal_length":
        lens[lens.index("--focal-length") + 1] = "-50"
    elif case == "not_an_image":
        image = tmp / "fake.png"
        image.write_bytes(b"this is not a png")
    elif case == "zero_depth_png":
        depth = tmp / "zeros.png"
        Image.fromarray(np.zeros((16, 24), np.uint16)).save(depth)
    elif case == "unwritable_out":
        (tmp / "file").write_text("x")
        out = tmp / "file" / "o.png"          # a folder that is a file
    elif case == "bad_exr":
        depth = tmp / "bad.exr"
        depth.write_bytes(b"\x00" * 64)
    code, err = _main(capsys, "render", image, depth, *lens, *extra, "--method", "gather",
                      "--backend", "torch", "--no-progress", "--out", out)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("lensblur render: error:")
    assert key in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["render", "a.png"])             # missing DEPTH and required lens options
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["paint"])
    assert info.value.code == 2


def test_unexpected_errors_exit_1_with_a_hint_and_debug_shows_them(photo, capsys, monkeypatch):
    tmp, _, _ = photo

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(lensblur, "render", broken)
    args = ["render", tmp / "photo.png", tmp / "depth.npy", *LENS, "--no-progress", "--out", tmp / "o.png"]
    code, err = _main(capsys, *args)
    assert code == 1
    assert "unexpected error: RuntimeError: kernel exploded" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="kernel exploded"):
        cli.main(["--debug", *map(str, args)])


def test_help_reads_well_and_lists_exit_codes():
    r = run_cli("--help")
    assert r.returncode == 0
    for word in ("demo", "render", "bench", "exit codes", "lensblur render photo.jpg"):
        assert word in r.stdout
    help_render = cli.build_parser()._subparsers._group_actions[0].choices["render"].format_help()
    for opt in ("--focal-length MM", "--f-number N", "--focus M", "--depth-scale", "--disparity",
                "(default: 36.0)", ".exr", "--highlight-threshold Y"):
        assert opt in help_render


def test_parse_aperture():
    assert cli.parse_aperture("disk").kind == "disk"
    ap = cli.parse_aperture("polygon:7:15:0.25")
    assert (ap.kind, ap.blades, ap.rotation_deg, ap.roundness) == ("polygon", 7, 15.0, 0.25)
    for bad in ("polygon", "polygon:x", "disk:3", "polygon:6:0:2"):
        with pytest.raises(lensblur.LensBlurError, match="--aperture"):
            cli.parse_aperture(bad)


# ---------------------------------------------------------------------------------- EXR
def test_exr_reader_matches_an_independently_written_file():
    """CPython ships the same picture as an OpenEXR-written (half float, uncompressed) EXR and as
    a PNG: our reader must decode the EXR to the PNG's values."""
    test_dir = Path(sysconfig.get_paths()["stdlib"]) / "test" / "imghdrdata"
    if not (test_dir / "python.exr").is_file():
        pytest.skip("CPython's test data is not installed")
    chans = read_exr(test_dir / "python.exr")
    assert sorted(chans) == ["A", "B", "G", "R"] and chans["R"].dtype == np.float16
    png = np.asarray(Image.open(test_dir / "python.png").convert("RGBA")).astype(np.float64) / 255
    rgba = np.stack([chans[c] for c in "RGBA"], -1).astype(np.float64)
    np.testing.assert_allclose(rgba, png, atol=1e-3)


@pytest.mark.parametrize("compression", ["none", "rle", "zips", "zip"])
def test_exr_round_trip_every_compression_and_type(tmp_path, compression):
    rng = np.random.default_rng(1)
    chans = {"Z": (rng.random((19, 23)) * 50).astype(np.float32),
             "H": rng.random((19, 23)).astype(np.float16),
             "I": rng.integers(0, 2 ** 32, (19, 23), dtype=np.uint32),
             "F": np.full((19, 23), 2.5, np.float32)}       # compressible: exercises the codecs
    write_exr(tmp_path / "x.exr", chans, compression)
    back = read_exr(tmp_path / "x.exr")
    for k, v in chans.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


# ---------------------------------------------------------------------------------- bench
# `lensblur bench` and the full suite (`python -m benchmarks`): tests/test_bench_cli.py


def test_benchmark_baselines_compute_the_same_blur():
    """The baselines the benchmarks compare against must be correct, or the speed-ups lie."""
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.baselines import mpi_conv_blur, naive_gather
        from benchmarks.workload import anchors_workload
    finally:
        sys.path.remove(str(ROOT))
    image, coc, s = anchors_workload(20, 24, 7.0, dtype=torch.float64)
    coc = coc.double()
    ref = lensblur.defocus(image, coc, backend="torch")
    torch.testing.assert_close(naive_gather(image, coc), ref, atol=1e-10, rtol=0)
    hexagon = lensblur.Aperture.polygon(6, rotation_deg=10.0)
    torch.testing.assert_close(naive_gather(image, coc, hexagon),
                               lensblur.defocus(image, coc, hexagon, backend="torch"), atol=1e-10, rtol=0)
    # MPI: energy preserving, and a single in-focus plane is the identity
    flat = torch.full_like(image, 0.3)
    signed = 7.0 * (1 - 2 * s.double())
    torch.testing.assert_close(mpi_conv_blur(flat, signed), flat, atol=1e-9, rtol=0)
    torch.testing.assert_close(mpi_conv_blur(image, torch.zeros_like(signed)), image, atol=1e-12, rtol=0)
    # and it blurs: less high-frequency energy than the input where the coc is large
    out = mpi_conv_blur(image, signed)
    big = coc > 5
    assert (out - out.roll(1, -1)).abs()[big.expand_as(out)].mean() < \
        0.7 * (image - image.roll(1, -1)).abs()[big.expand_as(image)].mean()
