"""The native C++ CPU backend against the PyTorch reference (forward and exact backward).

The kernels are compiled once per test session (the ``native`` fixture; the first build takes
some ten seconds and is cached by source hash).  Where no C++ toolchain exists the parity tests
skip with the build error as reason, and the fallback tests still run.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lensblur
from backend_cases import APERTURES, COC_KINDS, SHAPES, assert_close, make_case, reference, run_native, \
    star_kernel
from lensblur.defocus import resolve_backend
from lensblur.ops import native as nat

METHODS = ("gather", "scatter")


@pytest.fixture(scope="session")
def native():
    """Build (or load the cached build of) the kernels once per session."""
    if not nat.is_available("cpu"):
        pytest.skip(f"native kernels unavailable: {nat.unavailable_reason()}")
    return nat


def check_parity(image, coc, aperture, method, dtype=torch.float32, what=""):
    ref_out, ref_di, ref_dc, grad = reference(image, coc, aperture, method)
    out, d_img, d_coc = run_native(image.to(dtype), coc.to(dtype), aperture, method, grad)
    assert out.dtype == dtype and d_img.dtype == dtype and d_coc.dtype == dtype
    assert_close(out, ref_out, dtype, f"{what} out")
    assert_close(d_img, ref_di, dtype, f"{what} d_image")
    assert_close(d_coc, ref_dc, dtype, f"{what} d_coc")


class TestParity:
    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("coc_kind", COC_KINDS)
    @pytest.mark.parametrize("ap_name", list(APERTURES))
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
    def test_grid_fp32(self, native, shape, ap_name, coc_kind, method):
        image, coc = make_case(shape, coc_kind, seed=sum(shape))
        check_parity(image, coc, APERTURES[ap_name], method,
                     what=f"{shape} {ap_name} {coc_kind} {method}")

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("ap_name", list(APERTURES))
    def test_fp64(self, native, ap_name, method):
        image, coc = make_case((2, 3, 9, 11), "mixed", seed=3, dtype=torch.float64)
        check_parity(image, coc, APERTURES[ap_name], method, dtype=torch.float64,
                     what=f"fp64 {ap_name} {method}")

    @pytest.mark.parametrize("method", METHODS)
    def test_tiles_and_plane_groups(self, native, method):
        """A large-coc spot among in-focus pixels must reach blocks far away (gather backward,
        scatter forward use the neighbour bound); C = 5 needs two groups of planes."""
        g = torch.Generator().manual_seed(7)
        image = torch.rand(2, 5, 19, 37, generator=g, dtype=torch.float64)
        coc = 0.6 * torch.rand(2, 1, 19, 37, generator=g, dtype=torch.float64)
        coc[0, 0, 9, 14] = 17.0                         # a 17 px disk in the middle
        coc[1, 0, 2:5, 30:33] = 11.0                    # a block near the corner
        for ap in (APERTURES["disk"], APERTURES["rounded5_anamorphic_catseye"]):
            check_parity(image, coc, ap, method, what=f"tiles {ap} {method}")

    def test_coc_larger_than_the_frame_and_odd_table(self, native):
        # the window is wider than the image; a 3x5 table with a strong squeeze
        ap = lensblur.Aperture.from_image(star_kernel(5)[1:4], squeeze=0.6)
        image, coc = make_case((1, 2, 6, 5), "large", seed=11)
        for method in METHODS:
            check_parity(image, coc * 3.0, APERTURES["hexagon"], method, what=f"huge {method}")
            check_parity(image, coc, ap, method, what=f"3x5 table {method}")

    @pytest.mark.parametrize("method", METHODS)
    def test_fast_path_asymmetric_shapes(self, native, method):
        """The fast path (disk / polygon without cat's eye) with shapes that are not
        point-symmetric or not round: a rotated rounded pentagon, a squeezed disk."""
        image, coc = make_case((2, 3, 13, 17), "mixed", seed=21)
        for ap in (lensblur.Aperture.polygon(5, rotation_deg=10.0, roundness=0.3, squeeze=1.4),
                   lensblur.Aperture.disk(squeeze=0.7)):
            check_parity(image, coc * 1.5, ap, method, what=f"{ap} {method}")

    def test_zero_coc_is_identity(self, native):
        image = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
        coc = torch.zeros(1, 1, 5, 7)
        for method in METHODS:
            out = lensblur.defocus(image, coc, method=method, backend="native")
            torch.testing.assert_close(out, image, atol=0, rtol=0)


class TestGradcheck:
    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("ap_name", ["disk", "rounded5_anamorphic_catseye", "image_star"])
    def test_gradcheck_fp64(self, native, ap_name, method):
        image, coc = make_case((1, 2, 5, 6), "large", seed=5, dtype=torch.float64)
        ap = APERTURES[ap_name]
        assert lensblur.testing.gradcheck(
            lambda i, c: lensblur.defocus(i, c, ap, method=method, backend="native"), image, coc)


class TestProperties:
    # the backend-agnostic ones are in test_backend_properties.py (shared with the other backends)
    @pytest.mark.parametrize("method", METHODS)
    def test_thread_count_independent(self, native, method, monkeypatch):
        """Every value is computed by one thread in a fixed order: bitwise equal results."""
        monkeypatch.setattr(native, "SERIAL_BELOW", 0)   # use the threads even for tiny images
        image, coc = make_case((2, 3, 37, 45), "mixed", seed=9)
        grad = torch.randn(2, 3, 37, 45, generator=torch.Generator().manual_seed(1))
        before = torch.get_num_threads()
        res = []
        try:
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                for ap in (APERTURES["hexagon"], APERTURES["image_star"]):
                    res.append((n, run_native(image, coc * 2, ap, method, grad)))
        finally:
            torch.set_num_threads(before)
        k = len(res) // 3
        for i in range(k, len(res)):
            for a, b in zip(res[i % k][1], res[i][1]):
                assert torch.equal(a, b), f"{res[i][0]} threads differ from 1 thread"


    def test_half_input_keeps_its_dtype(self, native):
        image, coc = make_case((1, 3, 6, 7), "large", seed=2)
        out = lensblur.defocus(image.to(torch.bfloat16), coc, backend="native")
        assert out.dtype == torch.bfloat16
        ref = lensblur.defocus(image.to(torch.bfloat16).float(), coc, backend="torch")
        torch.testing.assert_close(out.float(), ref, atol=1.6e-2, rtol=1.6e-2)


class TestOperator:
    def _args(self, method, ap=APERTURES["disk"], requires_grad=True):
        image, coc = make_case((1, 2, 5, 6), "large", seed=1)
        return (image.requires_grad_(requires_grad), coc.requires_grad_(requires_grad),
                ap.table_padded(), ap.kernel_params(), method)

    @pytest.mark.parametrize("method", METHODS)
    def test_opcheck(self, native, method):
        torch.library.opcheck(nat._OP, self._args(method, APERTURES["hexagon"]))

    def test_opcheck_backward_op(self, native):
        image, coc, table, params, _ = self._args("scatter", APERTURES["image_star"], False)
        out, den = nat._OP(image, coc, table, params, "scatter")
        bwd = torch.ops.lensblur.native_defocus_backward.default
        torch.library.opcheck(bwd, (torch.randn_like(out), image, coc, table, params, "scatter",
                                    out, den), test_utils=("test_schema", "test_faketensor"))

    def test_auto_picks_native_on_cpu(self, native):
        assert resolve_backend("auto", torch.device("cpu")) == "native"
        assert "native" in lensblur.available_backends("cpu")
        image, coc = make_case((1, 3, 6, 7), "large", seed=4)
        a = lensblur.defocus(image, coc)
        b = nat.defocus(image, coc, lensblur.Aperture.disk(), "gather")
        assert torch.equal(a, b)

    def test_bad_arguments_raise(self, native):
        image, coc, table, params, _ = self._args("gather", requires_grad=False)
        with pytest.raises(ValueError, match="method"):
            nat.forward_impl(image, coc, table, params, "splat")
        with pytest.raises(ValueError, match="coc"):
            nat.forward_impl(image, coc[:, :, :3], table, params, "gather")
        with pytest.raises(ValueError, match="params"):
            nat.forward_impl(image, coc, table, params[:3], "gather")


class TestBuild:
    def test_fallback_when_the_extension_cannot_be_built(self, monkeypatch):
        """No compiler: auto falls back to the reference with exactly one warning; an explicit
        ``backend="native"`` raises a LensBlurError naming the reason."""
        def broken_build():
            raise RuntimeError("Error building extension: g++: command not found")

        monkeypatch.setattr(nat, "_build", broken_build)
        monkeypatch.setattr(nat, "_LIB", None)
        monkeypatch.setattr(nat, "_ERROR", None)
        monkeypatch.setattr(nat, "_WARNED", False)
        image, coc = make_case((1, 3, 6, 7), "large", seed=4)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outs = [lensblur.defocus(image, coc, method=m) for m in METHODS for _ in range(2)]
            assert resolve_backend("auto", torch.device("cpu")) == "torch"
        ours = [w for w in caught if "native C++" in str(w.message)]
        assert len(ours) == 1 and issubclass(ours[0].category, RuntimeWarning)
        assert "g++: command not found" in str(ours[0].message)
        for out, m in zip(outs, [m for m in METHODS for _ in range(2)]):
            assert torch.equal(out, lensblur.defocus(image, coc, method=m, backend="torch"))
        assert "native" not in lensblur.available_backends("cpu")
        with pytest.raises(lensblur.LensBlurError, match="native"):
            lensblur.defocus(image, coc, backend="native")
        with pytest.raises(lensblur.LensBlurError, match="g\\+\\+: command not found"):
            nat.defocus(image, coc, lensblur.Aperture.disk(), "gather")

    def test_build_key_follows_the_sources(self, tmp_path):
        a, b = tmp_path / "a.cpp", tmp_path / "b.cpp"
        a.write_text("int f() { return 1; }")
        b.write_text("int f() { return 2; }")
        assert nat._build_key([a]) != nat._build_key([b])
        assert nat._build_key([a]) == nat._build_key([a])
        assert all(p.is_file() for p in nat.source_paths())
