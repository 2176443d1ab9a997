"""Reliability: no hang, crash or giant allocation on any input (issue 18).

Every test here is small and fast; the ones that could hang or crash the interpreter run in a
subprocess with a timeout.
"""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

import lensblur
from lensblur.apertures import MAX_BLADES, MAX_KERNEL_PX
from lensblur.defocus import coc_limit_px
from lensblur.ops import reference

BACKENDS = [b for b in ("torch", "native", "triton") if b in lensblur.available_backends("cpu")]


# ----------------------------------------------------------------------------- huge blur
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["gather", "scatter"])
def test_huge_coc_costs_what_the_frame_costs(backend, method):
    """A coc of 1e6 px (and 4.3e9: past 32-bit ints; 1e30: NaN under Triton before) on a small
    image finishes quickly with the result of a coc of the frame's size, gradients included."""
    n = 4 if backend == "triton" else 8         # the Triton interpreter is slow
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 2, n, n, generator=g)
    frame = coc_limit_px(lensblur.Aperture.disk(), n, n)
    ref_coc = torch.full((1, 1, n, n), frame, requires_grad=True)
    ref = lensblur.defocus(img, ref_coc, method=method, backend=backend)
    assert not torch.allclose(ref, img, atol=1e-3)     # a real blur
    values = (1e6,) if backend == "triton" else (1e6, 4.3e9, 1e30)
    for value in values:
        coc = torch.full((1, 1, n, n), value, requires_grad=True)
        t0 = time.perf_counter()
        out = lensblur.defocus(img, coc, method=method, backend=backend)
        out.sum().backward()
        assert time.perf_counter() - t0 < 30.0
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        assert torch.isfinite(coc.grad).all()


APERTURES = {
    "disk": lensblur.Aperture.disk(),
    "polygon": lensblur.Aperture.polygon(5, rotation_deg=10.0, roundness=0.3),
    "squeezed": lensblur.Aperture.disk(squeeze=1.5),
    "catseye": lensblur.Aperture.disk(cats_eye=0.5),
}


@pytest.mark.parametrize("name", list(APERTURES))
@pytest.mark.parametrize("method", ["gather", "scatter"])
def test_clamped_blur_matches_the_unclamped_reference(name, method):
    """Cocs beyond the frame limit mixed with small ones: the bounded blur equals the reference
    run on the true cocs (exactly for the gather; the scatter's reweighting to ~1e-3), values
    and gradients.  A plain clamp of the scatter would be off by ~0.15 here."""
    ap = APERTURES[name]
    n = 5
    limit = coc_limit_px(ap, n, n)
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 2, n, n, generator=g, dtype=torch.float64, requires_grad=True)
    coc = 3.0 * torch.rand(1, 1, n, n, generator=g, dtype=torch.float64)
    coc[..., :3, :] = limit * torch.tensor([1.2, 1.5, 2.0], dtype=torch.float64).view(3, 1)
    coc.requires_grad_(True)
    true = reference.defocus(img, coc, ap, method)           # no bound: window of 2x the limit
    got = lensblur.defocus(img, coc, ap, method, backend="torch")
    w = torch.randn(true.shape, generator=g, dtype=torch.float64)
    g_true = torch.autograd.grad(true, (img, coc), w)
    g_got = torch.autograd.grad(got, (img, coc), w)
    tol = 0.0 if method == "gather" else 2e-3
    assert float((true - got).detach().abs().max()) <= tol
    for a, b in zip(g_true, g_got):
        assert float((a - b).abs().max()) <= 2.5 * tol
    if method == "scatter":
        with torch.no_grad():
            naive = reference.defocus(img, coc.clamp(max=limit), ap, method)
        assert float((true - naive).detach().abs().max()) > 0.05     # the reweighting matters


def test_huge_coc_gradcheck_scatter():
    """The reweighted scatter is differentiable through the weights (float64 gradcheck)."""
    n = 4
    limit = coc_limit_px(lensblur.Aperture.disk(), n, n)
    g = torch.Generator().manual_seed(2)
    img = torch.rand(1, 1, n, n, generator=g, dtype=torch.float64, requires_grad=True)
    coc = torch.rand(1, 1, n, n, generator=g, dtype=torch.float64) * 2.0
    coc[..., :2, :] += 1.5 * limit
    coc.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda i, c: lensblur.defocus(i, c, method="scatter", backend="torch"), (img, coc),
        fast_mode=True)


def test_layered_render_with_a_huge_coc_is_bounded():
    """``render(method="layered")`` blurs through ``defocus``: a lens a hair beyond its focal
    length (coc ~1e8 px) renders a 12x12 image in seconds, finite."""
    img = torch.rand(1, 3, 12, 12)
    depth = torch.linspace(1.0, 5.0, 12).view(1, 1, 1, 12).expand(1, 1, 12, 12).contiguous()
    lens = lensblur.ThinLens(focal_length_mm=50.0, f_number=1e-3, focus_distance_m=0.0500001)
    assert float(lens.coc_px(depth, 12).max()) > 1e6
    t0 = time.perf_counter()
    out = lensblur.render(img, depth, lens, backend="torch")
    assert time.perf_counter() - t0 < 30.0
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------- polygon blades
@pytest.mark.parametrize("blades", [MAX_BLADES + 1, 1_000_000, 2 ** 31 + 3])
def test_blade_count_is_bounded(blades):
    with pytest.raises(lensblur.LensBlurError, match="blades"):
        lensblur.Aperture.polygon(blades=blades)
    with pytest.raises(lensblur.LensBlurError, match="blades"):
        lensblur.Aperture.polygon(blades=6).replace(blades=blades)
    with pytest.raises(lensblur.LensBlurError, match="blades"):
        lensblur.Aperture(kind="polygon", blades=blades)
    assert lensblur.Aperture.polygon(blades=MAX_BLADES).blades == MAX_BLADES


@pytest.mark.skipif("native" not in BACKENDS, reason="native kernels unavailable")
def test_native_entry_refuses_what_it_cannot_index():
    """Called directly (past ``defocus``), the native op refuses a blade count that would overflow
    its int index (it segfaulted) and cocs past 2**24 px (they overflowed to an unchanged image)."""
    from lensblur.ops import native
    img, tab = torch.rand(1, 1, 4, 4), torch.zeros(1, 1)
    ok = torch.full((1, 1, 4, 4), 2.0)
    with pytest.raises(lensblur.LensBlurError, match="blades"):
        native.forward_impl(img, ok, tab, [1.0, float(2 ** 31 + 3), 0.0, 0.0, 1.0, 0.0], "gather")
    with pytest.raises(lensblur.LensBlurError, match="coc"):
        native.forward_impl(img, torch.full((1, 1, 4, 4), 4.3e9), tab,
                            [0.0, 0.0, 0.0, 1.0, 1.0, 0.0], "gather")
    out, _ = native.forward_impl(img, ok, tab, [1.0, 6.0, 0.0, 0.0, 1.0, 0.0], "gather")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("diameter", [MAX_KERNEL_PX * 1.5, 1e5, 1e30])
def test_kernel_size_is_bounded(diameter):
    with pytest.raises(lensblur.LensBlurError, match="diameter_px"):
        lensblur.Aperture.disk().kernel(diameter)


def test_learnable_aperture_size_is_bounded():
    from lensblur.learnable import MAX_APERTURE_SIZE, LearnableAperture
    with pytest.raises(lensblur.LensBlurError, match="size"):
        LearnableAperture(size=100001)
    with pytest.raises(lensblur.LensBlurError, match="size"):
        LearnableAperture(size=MAX_APERTURE_SIZE + 2)


# ----------------------------------------------------------------------------- Triton on a CPU machine
_TRITON_CHILD = """
import sys
if sys.argv[1] == "triton-first":
    import triton.language          # before lensblur could set TRITON_INTERPRET
import torch, lensblur
offered = "triton" in lensblur.available_backends("cpu")
img, coc = torch.rand(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0)
try:
    out = lensblur.defocus(img, coc, backend="triton")
    diff = float((out - lensblur.defocus(img, coc, backend="torch")).abs().max())
    print("RESULT ran", offered, diff)
except lensblur.LensBlurError as exc:
    print("RESULT refused", offered, str(exc).replace(" ", "_"))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only interpreter path")
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton missing")
def test_triton_backend_on_cpu_without_the_variable():
    """Fresh processes WITHOUT ``TRITON_INTERPRET``: ``import lensblur`` activates the
    interpreter before anything imports triton, so the offered backend runs and matches the
    reference; if triton was imported first the backend is not offered and says why."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    results = {}
    for mode in ("plain", "triton-first"):
        proc = subprocess.run([sys.executable, "-c", _TRITON_CHILD, mode], env=env,
                              capture_output=True, text=True, timeout=120)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
        assert line, proc.stdout + proc.stderr[-3000:]
        results[mode] = line[0].split()[1:]
    kind, offered, diff = results["plain"]
    assert (kind, offered) == ("ran", "True") and float(diff) < 1e-5
    kind, offered, why = results["triton-first"]
    assert (kind, offered) == ("refused", "False") and "TRITON_INTERPRET" in why


# ----------------------------------------------------------------------------- CLI file inputs
def _npy_bytes(arr) -> bytes:
    import io as _io

    import numpy as np
    buf = _io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _png_bytes(h=6, w=7) -> bytes:
    import io as _io

    import numpy as np
    from PIL import Image
    buf = _io.BytesIO()
    Image.fromarray((np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_npy_header_claiming_a_huge_array_is_refused_before_allocating(tmp_path):
    from lensblur.io import read_depth
    header = _npy_bytes(__import__("numpy").zeros((2, 2), "<f4"))
    huge = header.replace(b"(2, 2)", b"(100000, 100000)")
    (tmp_path / "d.npy").write_bytes(huge)
    t0 = time.perf_counter()
    with pytest.raises(lensblur.LensBlurError, match="header claims"):
        read_depth(tmp_path / "d.npy")
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("bad, match", [
    ("bool", "real numbers"), ("complex", "real numbers"), ("rgb", "2-D map"),
    ("strings", "real numbers"), ("object", "plain data"),
])
def test_depth_npy_of_the_wrong_kind_is_rejected(tmp_path, bad, match):
    import numpy as np

    from lensblur.io import read_depth
    arrays = {"bool": np.ones((4, 4), bool), "complex": np.ones((4, 4), np.complex64),
              "rgb": np.stack([np.ones((4, 4)), -np.ones((4, 4)), np.ones((4, 4))], -1),
              "strings": np.array([["a", "b"], ["c", "d"]])}
    path = tmp_path / "d.npy"
    if bad == "object":
        np.save(path, np.array([[1, None]], dtype=object), allow_pickle=True)
    else:
        np.save(path, arrays[bad])
    with pytest.raises(lensblur.LensBlurError, match=match):
        read_depth(path)


def test_depth_npy_with_one_channel_is_read(tmp_path):
    import numpy as np

    from lensblur.io import read_depth
    for shape in ((5, 6, 1), (1, 5, 6)):
        np.save(tmp_path / "d.npy", np.full(shape, 2.0, np.float32))
        assert read_depth(tmp_path / "d.npy").shape == (1, 1, 5, 6)


def _cli(argv):
    from lensblur.cli import main
    return main([str(a) for a in argv])


LENS_ARGS = ["--focal-length", "50", "--f-number", "2", "--focus", "2", "--backend", "torch",
             "--method", "gather", "--no-progress"]


@pytest.fixture
def small_inputs(tmp_path):
    import numpy as np
    (tmp_path / "photo.png").write_bytes(_png_bytes(8, 8))
    np.save(tmp_path / "depth.npy", np.linspace(1, 4, 64, dtype=np.float32).reshape(8, 8))
    return tmp_path


def test_cli_refuses_to_overwrite_an_input_or_an_existing_file(small_inputs, capsys):
    t = small_inputs
    before = (t / "photo.png").read_bytes()
    assert _cli(["render", t / "photo.png", t / "depth.npy", *LENS_ARGS, "--out", t / "photo.png"]) == 2
    assert _cli(["render", t / "photo.png", t / "depth.npy", *LENS_ARGS, "--out",
                 t / "." / "photo.png", "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err
    assert (t / "photo.png").read_bytes() == before
    (t / "o.png").write_bytes(b"keep me")
    assert _cli(["render", t / "photo.png", t / "depth.npy", *LENS_ARGS, "--out", t / "o.png"]) == 2
    assert "--overwrite" in capsys.readouterr().err and (t / "o.png").read_bytes() == b"keep me"
    assert _cli(["render", t / "photo.png", t / "depth.npy", *LENS_ARGS, "--out", t / "o.png",
                 "--overwrite"]) == 0
    assert (t / "o.png").read_bytes() != b"keep me"


def test_cli_malformed_npy_and_bad_devices_exit_2(small_inputs, capsys):
    t = small_inputs
    (t / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert _cli(["render", t / "photo.png", t / "bad.npy", *LENS_ARGS, "--out", t / "o.png"]) == 2
    assert "bad.npy" in capsys.readouterr().err
    assert _cli(["render", t / "photo.png", t / "depth.npy", *LENS_ARGS, "--device", "meta",
                 "--out", t / "o.png"]) == 2
    assert "--device" in capsys.readouterr().err
    t0 = time.perf_counter()
    assert _cli(["demo", "--height", "100000", "--width", "100000", "--out", t / "demo",
                 "--no-progress"]) == 2
    assert "--height" in capsys.readouterr().err and time.perf_counter() - t0 < 5.0


def _fuzz_settings():
    from hypothesis import HealthCheck, settings
    return settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _mutations(st, seed: bytes):
    """Random bytes, or ``seed`` with a few bytes overwritten / the tail cut / bytes inserted."""
    flips = st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=6)

    def mutate(args):
        edits, cut, insert = args
        b = bytearray(seed)
        for i, v in edits:
            b[i] = v
        b = b[:cut] if cut else b
        return bytes(b) + insert
    return st.one_of(st.binary(max_size=300),
                     st.tuples(flips, st.integers(0, len(seed)), st.binary(max_size=8)).map(mutate))


def test_fuzz_file_readers(tmp_path):
    """Random and mutated ``.npy`` and PNG bytes: the readers return a valid map or raise
    LensBlurError (never another exception, never a long wait)."""
    import numpy as np
    from hypothesis import given
    from hypothesis import strategies as st

    from lensblur.io import read_depth, read_image
    npy_seed = _npy_bytes(np.linspace(1, 2, 12, dtype="<f4").reshape(3, 4))
    png_seed = _png_bytes()

    @_fuzz_settings()
    @given(npy=_mutations(st, npy_seed), png=_mutations(st, png_seed))
    def run(npy, png):
        for data, name, read in ((npy, "d.npy", read_depth), (png, "d.png", read_depth),
                                 (png, "i.png", read_image)):
            path = tmp_path / name
            path.write_bytes(data)
            t0 = time.perf_counter()
            try:
                out = read(path)
            except lensblur.LensBlurError:
                continue
            finally:
                assert time.perf_counter() - t0 < 2.0
            assert out.dim() == 4 and out.dtype == torch.float32 and torch.isfinite(out).all()

    run()


# ----------------------------------------------------------------------------- contract gaps
def test_focus_equal_to_the_focal_length_is_an_error():
    with pytest.raises(lensblur.LensBlurError, match="focus_distance_m"):
        lensblur.ThinLens(focus_distance_m=0.05, focal_length_mm=50)
    lensblur.ThinLens(focus_distance_m=0.0500001, focal_length_mm=50)     # a hair beyond: fine


def test_lens_tensor_shapes_are_checked_by_name():
    with pytest.raises(lensblur.LensBlurError, match="`f_number` must not be empty"):
        lensblur.ThinLens(f_number=torch.tensor([]))
    with pytest.raises(lensblur.LensBlurError, match="`f_number` of length 2.*`focus_distance_m` of length 3"):
        lensblur.ThinLens(f_number=torch.tensor([1.0, 2.0]), focus_distance_m=torch.tensor([2.0, 3.0, 4.0]))
    with pytest.raises(lensblur.LensBlurError, match="sensor_width_mm"):
        lensblur.ThinLens(f_number=torch.tensor([1.0, 2.0]), sensor_width_mm=torch.tensor([2.0, 3.0, 4.0]))
    lens = lensblur.ThinLens(f_number=torch.tensor([1.0, 2.0]), focus_distance_m=torch.tensor([3.0]))
    assert lens.coc_px(torch.full((2, 1, 2, 2), 4.0), 100).shape == (2, 1, 2, 2)
    with pytest.raises(lensblur.LensBlurError, match="`f_number` of shape \\(2,\\).*`depth_m`"):
        lens.coc_px(torch.full((3, 1, 2, 2), 4.0), 100)
    with pytest.raises(lensblur.LensBlurError, match="num_channels"):
        lensblur.ThinLens().channel_coc_px(torch.full((1, 1, 2, 2), 3.0), 100, -1)


def test_fp16_depth_gives_a_float32_coc_without_overflow():
    lens = lensblur.ThinLens(50.0, 1.0, 0.06)
    depth = torch.full((1, 1, 2, 2), 60000.0, dtype=torch.float16)
    coc = lens.coc_px(depth, 60000)
    assert coc.dtype == torch.float32 and torch.isfinite(coc).all() and float(coc.min()) > 65504
    expected = lens.coc_px(depth.double(), 60000)
    torch.testing.assert_close(coc.double(), expected, rtol=1e-5, atol=0)


def test_image_magnitude_is_bounded_with_a_clear_error():
    coc = torch.full((1, 1, 4, 4), 3.0)
    with pytest.raises(lensblur.LensBlurError, match="image"):
        lensblur.defocus(torch.full((1, 1, 4, 4), 3e38), coc)
    big = torch.zeros(1, 1, 4, 4)
    big[..., 0, 0] = 9e29          # near the largest value taken: sums stay finite
    for method in ("gather", "scatter"):
        assert torch.isfinite(lensblur.defocus(big, coc, method=method, backend="torch")).all()


def test_render_and_module_bound_num_layers():
    img, depth = torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4) + 1.0
    for n in (0, 10 ** 6):
        with pytest.raises(lensblur.LensBlurError, match="num_layers"):
            lensblur.LensBlur(num_layers=n)
        with pytest.raises(lensblur.LensBlurError, match="num_layers"):
            lensblur.render(img, depth, lensblur.ThinLens(), num_layers=n)


def test_fit_lens_checks_its_arguments_even_without_steps():
    from lensblur.learnable import fit_lens
    img, depth = torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4) + 1.0
    kw = dict(focal_length_mm=50.0, f_number=2.0, focus_distance_m=1.5, steps=0)
    with pytest.raises(lensblur.LensBlurError, match="method"):
        fit_lens(img, depth, img, method="foo", **kw)
    with pytest.raises(lensblur.LensBlurError, match="backend"):
        fit_lens(img, depth, img, backend="foo", **kw)
    with pytest.raises(TypeError, match="callback"):
        fit_lens(img, depth, img, callback=3, **kw)


def test_models_helpers_name_their_arguments():
    import lensblur_models as m
    with pytest.raises(lensblur.LensBlurError, match="`strength`"):
        m.defocus_map(torch.rand(2, 1, 4, 4) + 0.1, 0.5, torch.tensor([1.0, 2.0, 3.0]))
    for shape in ((2, 1, 0, 4, 4), (2, 1, 3, 0, 4)):
        with pytest.raises(lensblur.LensBlurError, match="renders"):
            m.blur_monotonicity(torch.rand(shape), [1.4, 2.8])


@pytest.mark.parametrize("bad", ["int", "complex", "5d"])
def test_random_defocus_rejects_bad_input_by_name(bad):
    from lensblur.augment import RandomDefocus
    x = {"int": torch.ones(1, 3, 8, 8, dtype=torch.int64),
         "complex": torch.ones(1, 3, 8, 8, dtype=torch.complex64),
         "5d": torch.ones(1, 1, 3, 8, 8)}[bad]
    with pytest.raises((TypeError, lensblur.LensBlurError), match="`input`"):
        RandomDefocus(p=1.0)(x)


def test_meta_tensors_are_rejected_by_name():
    m = dict(device="meta")
    with pytest.raises(lensblur.LensBlurError, match="`image` is on the meta device"):
        lensblur.defocus(torch.rand(1, 1, 4, 4, **m), torch.rand(1, 1, 4, 4, **m))
    with pytest.raises(lensblur.LensBlurError, match="meta device"):
        lensblur.render(torch.rand(1, 3, 4, 4, **m), torch.rand(1, 1, 4, 4, **m), lensblur.ThinLens())
    with pytest.raises(lensblur.LensBlurError, match="`f_number` is on the meta device"):
        lensblur.ThinLens(f_number=torch.tensor(2.0, **m))
    with pytest.raises(lensblur.LensBlurError, match="`depth_m` is on the meta device"):
        lensblur.ThinLens().coc_px(torch.rand(1, 1, 4, 4, **m), 100)
