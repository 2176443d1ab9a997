"""The PyTorch reference operator: analytic cases, gradients, and the SPEC's error contract."""

import pytest
import torch

import lensblur
from lensblur import Aperture, defocus
from lensblur.ops import reference
from backend_cases import APERTURES, make_case

METHODS = ["gather", "scatter"]


def delta_image(h=41, w=41, c=1, device="cpu"):
    img = torch.zeros(1, c, h, w, dtype=torch.float64, device=device)
    img[..., h // 2, w // 2] = 1.0
    return img


class TestAnalytic:
    @pytest.mark.parametrize("ap", [Aperture.disk(), Aperture.polygon(blades=6)], ids=["disk", "hexagon"])
    def test_scatter_of_delta_is_the_kernel(self, device, ap):
        # Scatter: a point source spreads exactly its aperture kernel.  The constant background
        # makes the normalisation by accumulated weight a no-op, so we blur (delta + 1) and subtract 1.
        d = 15.0
        img = delta_image(device=device) + 1.0
        out = defocus(img, torch.full((1, 1, 41, 41), d, dtype=torch.float64, device=device), ap, "scatter", backend="torch")
        k = ap.kernel(torch.tensor(d, dtype=torch.float64)).to(device)
        r = k.shape[0] // 2
        resp = out[0, 0, 20 - r:21 + r, 20 - r:21 + r] - 1.0
        torch.testing.assert_close(resp, k, atol=1e-12, rtol=0)
        assert float((out - 1.0).sum()) == pytest.approx(1.0, abs=1e-9)  # energy sums to 1

    @pytest.mark.parametrize("ap", [Aperture.disk(), Aperture.polygon(blades=6)], ids=["disk", "hexagon"])
    def test_gather_of_delta_is_the_flipped_kernel(self, device, ap):
        d = 15.0
        img = delta_image(device=device)
        out = defocus(img, torch.full((1, 1, 41, 41), d, dtype=torch.float64, device=device), ap, "gather", backend="torch")
        k = ap.kernel(torch.tensor(d, dtype=torch.float64)).to(device)
        r = k.shape[0] // 2
        resp = out[0, 0, 20 - r:21 + r, 20 - r:21 + r]
        torch.testing.assert_close(resp, k.flip(0, 1), atol=1e-12, rtol=0)
        assert float(out.sum()) == pytest.approx(1.0, abs=1e-9)

    def test_hexagon_response_is_sixfold_not_round(self, device):
        out = defocus(delta_image(device=device) + 1, torch.full((1, 1, 41, 41), 25.0, dtype=torch.float64, device=device),
                      Aperture.polygon(6), "scatter", backend="torch")[0, 0] - 1
        support = out > 1e-9
        # a hexagon with a vertex pointing right: wider horizontally (2R) than vertically (sqrt(3) R)
        width = int(support.any(0).sum())
        height = int(support.any(1).sum())
        assert width > height + 1

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("ap_name", list(APERTURES))
    def test_constant_image_stays_constant(self, device, method, ap_name):
        g = torch.Generator().manual_seed(1)
        coc = torch.rand(2, 1, 13, 17, generator=g, dtype=torch.float64).to(device) * 9
        img = torch.full((2, 3, 13, 17), 0.37, dtype=torch.float64, device=device)
        out = defocus(img, coc, APERTURES[ap_name], method, backend="torch")
        torch.testing.assert_close(out, img, atol=1e-12, rtol=0)

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("ap_name", list(APERTURES))
    def test_zero_coc_is_identity(self, device, method, ap_name):
        img, _ = (t.to(device) for t in make_case((2, 3, 9, 11), "tiny"))
        out = defocus(img, torch.zeros(2, 1, 9, 11, device=device), APERTURES[ap_name], method, backend="torch")
        torch.testing.assert_close(out, img, atol=1e-6, rtol=0)

    @pytest.mark.parametrize("method", METHODS)
    def test_subpixel_coc_in_focus_neighbourhood_unchanged(self, device, method):
        img, coc = (t.to(device) for t in make_case((1, 3, 9, 11), "tiny"))
        out = defocus(img, coc, None, method, backend="torch")
        torch.testing.assert_close(out, img, atol=1e-6, rtol=0)

    @pytest.mark.parametrize("method", METHODS)
    def test_blur_grows_with_coc(self, device, method):
        img = torch.zeros(1, 1, 31, 31, device=device)
        img[..., 15:] = 1.0  # a vertical edge
        widths = []
        for d in (2.0, 6.0, 12.0):
            out = defocus(img, torch.full((1, 1, 31, 31), d, device=device), None, method, backend="torch")
            row = out[0, 0, 15]
            widths.append(int(((row > 0.01) & (row < 0.99)).sum()))
        assert widths[0] < widths[1] < widths[2]

    def test_scatter_spreads_by_source_gather_by_destination(self, device):
        # a bright blurred pixel next to in-focus neighbours: scatter spreads it, gather does not
        img = torch.zeros(1, 1, 21, 21, device=device)
        img[..., 10, 10] = 1.0
        coc = torch.zeros(1, 1, 21, 21, device=device)
        coc[..., 10, 10] = 9.0
        s = defocus(img, coc, None, "scatter", backend="torch")
        g = defocus(img, coc, None, "gather", backend="torch")
        assert float(s[0, 0, 10, 13]) > 0.001 and float(g[0, 0, 10, 13]) == 0.0

    def test_input_not_modified(self, device):
        img, coc = (t.to(device) for t in make_case((1, 3, 8, 9), "large"))
        i0, c0 = img.clone(), coc.clone()
        for m in METHODS:
            defocus(img, coc, APERTURES["rounded5_anamorphic_catseye"], m, backend="torch")
        assert torch.equal(img, i0) and torch.equal(coc, c0)

    @pytest.mark.parametrize("method", METHODS)
    def test_half_precision_runs_and_matches(self, device, method):
        img, coc = (t.to(device) for t in make_case((1, 3, 8, 9), "large"))
        out16 = defocus(img.to(torch.bfloat16), coc, None, method, backend="torch")
        assert out16.dtype == torch.bfloat16
        torch.testing.assert_close(out16.float(), defocus(img, coc, None, method, backend="torch"),
                                   atol=2e-2, rtol=2e-2)

    @pytest.mark.slow
    def test_memory_stays_linear(self):
        # 512x512 RGB, max coc 33: must run in seconds with O(BCHW) memory (no unfold)
        from benchmarks.workload import anchors_workload
        import resource
        img, coc, _ = anchors_workload(256, 256, 33)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = defocus(img, coc, None, "gather", backend="torch")
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert out.shape == img.shape
        assert grown_mb < 200  # an unfold would need 256*256*35*35*3*4 B = 963 MB


class TestGradients:
    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("ap_name", list(APERTURES))
    @pytest.mark.slow   # float64 gradcheck of the reference: 20-50 s each on a loaded 2-core machine
    def test_gradcheck(self, method, ap_name):
        img, coc = make_case((1, 2, 6, 7), "large", seed=3, dtype=torch.float64)
        assert lensblur.testing.gradcheck(
            lambda i, c: defocus(i, c, APERTURES[ap_name], method, backend="torch"), img, coc * 0.6)

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("ap_name", list(APERTURES))
    def test_hand_written_backward_equals_autograd(self, method, ap_name):
        # the reference's explicit backward (O(BCHW) memory) is the exact transpose of its forward
        img, coc = make_case((2, 3, 9, 10), "mixed", seed=5, dtype=torch.float64)
        forward = reference.gather_forward if method == "gather" else reference.scatter_forward
        lensblur.testing.check_gradients(
            lambda i, c: defocus(i, c, APERTURES[ap_name], method, backend="torch"), img, coc,
            reference=lambda i, c: forward(i, c, APERTURES[ap_name])[0], atol=1e-10, rtol=1e-8)

    @pytest.mark.parametrize("method", METHODS)
    def test_border_gradient_is_true_transpose(self, method):
        # <g, A x> == <A^T g, x> for the linear map x -> defocus(x, fixed coc), near the borders too
        img, coc = make_case((1, 1, 8, 9), "large", seed=7, dtype=torch.float64)
        x = img.clone().requires_grad_()
        g = torch.randn(1, 1, 8, 9, dtype=torch.float64)
        y = defocus(x, coc, None, method, backend="torch")
        (at_g,) = torch.autograd.grad(y, x, g)
        # build A column by column
        cols = [defocus(torch.eye(72, dtype=torch.float64)[i].view(1, 1, 8, 9), coc, None, method,
                        backend="torch").flatten() for i in range(72)]
        a = torch.stack(cols, 1)
        torch.testing.assert_close(at_g.flatten(), a.T @ g.flatten())


class TestErrors:
    img = torch.rand(1, 3, 8, 8)
    coc = torch.rand(1, 1, 8, 8)

    def test_image_rank(self):
        with pytest.raises(ValueError, match="image"):
            defocus(torch.rand(3, 8, 8), self.coc)

    def test_coc_shape(self):
        with pytest.raises(ValueError, match="coc"):
            defocus(self.img, torch.rand(1, 2, 8, 8))

    def test_mismatched_spatial(self):
        with pytest.raises(ValueError, match="coc"):
            defocus(self.img, torch.rand(1, 1, 8, 9))

    def test_mismatched_batch(self):
        with pytest.raises(ValueError, match="coc"):
            defocus(self.img, torch.rand(2, 1, 8, 8))

    def test_integer_image(self):
        with pytest.raises(TypeError, match="image"):
            defocus(torch.ones(1, 3, 8, 8, dtype=torch.int32), self.coc)

    def test_integer_coc(self):
        with pytest.raises(TypeError, match="coc"):
            defocus(self.img, torch.ones(1, 1, 8, 8, dtype=torch.int64))

    def test_nan_image(self):
        bad = self.img.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="image"):
            defocus(bad, self.coc)

    def test_inf_coc(self):
        bad = self.coc.clone()
        bad[0, 0, 1, 1] = float("inf")
        with pytest.raises(ValueError, match="coc"):
            defocus(self.img, bad)

    def test_negative_coc(self):
        with pytest.raises(ValueError, match="coc"):
            defocus(self.img, self.coc - 2)

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="method"):
            defocus(self.img, self.coc, method="splat")

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="backend"):
            defocus(self.img, self.coc, backend="cuda")

    def test_bad_aperture_type(self):
        with pytest.raises(TypeError, match="aperture"):
            defocus(self.img, self.coc, aperture="disk")

    def test_not_a_tensor(self):
        with pytest.raises(TypeError, match="image"):
            defocus(self.img.numpy(), self.coc)


@pytest.mark.skipif("native" not in lensblur.available_backends("cpu"),
                    reason="the native backend is not built here")
class TestCompile:
    def test_public_defocus_compiles_without_graph_breaks(self):
        from torch._dynamo.testing import CompileCounter

        torch._dynamo.reset()
        img, coc = torch.rand(1, 3, 12, 13), torch.rand(1, 1, 12, 13) * 5
        ap = Aperture.polygon(6)
        counter = CompileCounter()
        fn = torch.compile(lambda i, c: defocus(i, c, ap, method="scatter", backend="auto"),
                           fullgraph=True, backend=counter)
        out = fn(img, coc)
        assert counter.frame_count == 1
        torch.testing.assert_close(out, defocus(img, coc, ap, method="scatter", backend="torch"),
                                   rtol=1e-5, atol=1e-5)
