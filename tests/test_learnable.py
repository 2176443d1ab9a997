"""Learnable optics: gradients to the aperture shape, chromatic aberration, fitting a lens."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import lensblur
from lensblur import Aperture, LensBlurError, ThinLens
from lensblur.defocus import available_backends
from lensblur.learnable import LearnableAperture, LearnablePolygon, fit_lens

F64 = torch.float64


def _case(h=7, w=8, seed=0, max_coc=5.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 2, h, w, generator=g, dtype=F64)
    coc = torch.rand(1, 1, h, w, generator=g, dtype=F64) * max_coc
    return img.to(device), coc.to(device)


def _corr(a, b):
    """Correlation coefficient of two centred kernels (the smaller one zero-padded)."""
    n = max(a.shape[-1], b.shape[-1])
    a, b = (torch.nn.functional.pad(k, [(n - k.shape[-1]) // 2] * 4) for k in (a.detach(), b.detach()))
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


class TestApertureGradients:
    @pytest.mark.parametrize("method", ["gather", "scatter"])
    def test_gradcheck_image_kernel(self, method, device):
        # image and coc gradients are gradchecked in test_defocus.py; here the table's
        img, coc = _case(h=5, w=6, device=device)
        table = (torch.rand(4, 5, generator=torch.Generator().manual_seed(1), dtype=F64) + 0.1).to(device)
        table.requires_grad_()

        def f(t):
            return lensblur.defocus(img, coc, Aperture.from_image(t), method=method, backend="torch")

        assert torch.autograd.gradcheck(f, (table,), fast_mode=True)

    @pytest.mark.parametrize("method", ["gather", "scatter"])
    def test_gradcheck_polygon_shape_parameters(self, method, device):
        img, coc = _case(h=5, w=6, seed=2, device=device)
        rot = torch.tensor(12.0, dtype=F64, device=device, requires_grad=True)
        rnd = torch.tensor(0.3, dtype=F64, device=device, requires_grad=True)

        def f(r, s):
            ap = Aperture.polygon(5, r, s, squeeze=1.2, cats_eye=0.4)
            return lensblur.defocus(img, coc, ap, method=method, backend="torch")

        assert torch.autograd.gradcheck(f, (rot, rnd), fast_mode=True)

    def test_kernel_is_differentiable_in_the_table(self):
        t = torch.rand(5, 5, dtype=F64, requires_grad=True)
        k = Aperture.from_image(t).kernel(6.0)
        k[3, 4].backward()
        assert t.grad is not None and bool(t.grad.abs().sum() > 0)

    def test_constant_shape_tensors_match_floats(self, device):
        img, coc = _case(seed=3, device=device)
        a = lensblur.defocus(img, coc, Aperture.polygon(6, 17.0, 0.25), backend="torch")
        b = lensblur.defocus(img, coc, Aperture.polygon(6, torch.tensor(17.0, dtype=F64, device=device),
                                                         torch.tensor(0.25, dtype=F64, device=device)),
                             backend="torch")
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

    @pytest.mark.parametrize("method", ["gather", "scatter", "layered"])
    def test_render_passes_gradients_to_the_aperture(self, method, device):
        g = torch.Generator().manual_seed(4)
        img = torch.rand(1, 3, 10, 12, generator=g).to(device)
        depth = (torch.rand(1, 1, 10, 12, generator=g) * 3 + 1).to(device)
        poly = LearnablePolygon(6, 10.0, 0.3).to(device)
        free = LearnableAperture(7).to(device)
        lens = ThinLens(50.0, 1.4, 2.0, sensor_width_mm=3.0)
        for module in (poly, free):
            out = lensblur.render(img, depth, lens, module(), method=method, backend="torch")
            (out * torch.rand(out.shape, generator=g).to(device)).sum().backward()
            for p in module.parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0

    @pytest.mark.parametrize("backend", [b for b in ("native", "triton") if b in available_backends("cpu")])
    def test_every_backend_gives_the_reference_aperture_gradient(self, backend):
        lensblur.defocus.__globals__["_WARNED_APERTURE_FALLBACK"].discard(backend)
        img, coc = _case(seed=5)
        grads = {}
        for b in ("torch", backend):
            t = torch.rand(5, 5, generator=torch.Generator().manual_seed(6), dtype=F64).requires_grad_()
            rot = torch.tensor(8.0, dtype=F64, requires_grad=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = lensblur.defocus(img, coc, Aperture.from_image(t), backend=b)
                out2 = lensblur.defocus(img, coc, Aperture.polygon(7, rot, 0.2), backend=b)
            (out.square().sum() + out2.square().sum()).backward()
            grads[b] = (t.grad, rot.grad)
            fallback = [w for w in caught if "learnable aperture" in str(w.message)]
            assert len(fallback) == (0 if b == "torch" else 1)     # one warning per backend
        torch.testing.assert_close(grads[backend], grads["torch"], rtol=1e-10, atol=1e-12)


class TestParametrisations:
    def test_learnable_aperture_is_always_a_valid_aperture(self):
        learn = LearnableAperture(9)
        with torch.no_grad():
            learn.logits.copy_(torch.randn(9, 9, generator=torch.Generator().manual_seed(0)) * 8 - 4)
        img = learn.kernel_image()
        assert bool((img >= 0).all()) and math.isclose(float(img.detach().max()), 1.0, rel_tol=1e-6)
        k = learn().kernel(11.0)
        assert bool((k >= 0).all()) and math.isclose(float(k.detach().sum()), 1.0, rel_tol=1e-5)

    def test_learnable_aperture_starts_as_its_init(self):
        hexagon = Aperture.polygon(6)
        learn = LearnableAperture(15, init=hexagon)
        ours, true = learn().kernel(13.0), hexagon.kernel(13.0)
        assert _corr(ours, true) > 0.97
        assert _corr(ours, true) > _corr(Aperture.disk().kernel(13.0), true) + 0.02

    def test_learnable_polygon_keeps_roundness_in_range(self):
        poly = LearnablePolygon(5, 30.0, 0.4)
        ap = poly()
        assert math.isclose(ap.rotation_deg.item(), 30.0, rel_tol=1e-5)
        assert math.isclose(ap.roundness.item(), 0.4, rel_tol=1e-5)
        with torch.no_grad():
            poly.roundness_logit.fill_(40.0)
        assert 0.0 < poly().roundness.item() <= 1.0
        with torch.no_grad():
            poly.roundness_logit.fill_(-40.0)
        assert 0.0 <= poly().roundness.item() < 1.0

    @pytest.mark.parametrize("bad", [{"size": 4}, {"size": 2}, {"size": 7, "init": torch.ones(5, 5)},
                                     {"size": 5, "init": -torch.ones(5, 5)}, {"size": 5, "init": "disk"}])
    def test_bad_learnable_aperture_arguments(self, bad):
        with pytest.raises((LensBlurError, TypeError), match="size|init|kernel|non-negative"):
            LearnableAperture(**bad)

    def test_bad_polygon_arguments(self):
        with pytest.raises(LensBlurError, match="blades"):
            LearnablePolygon(2)
        with pytest.raises(LensBlurError, match="roundness"):
            LearnablePolygon(6, roundness=1.5)


class TestChromatic:
    LENS = dict(focal_length_mm=50.0, f_number=2.0, focus_distance_m=2.0, sensor_width_mm=36.0)

    def test_zero_chromatic_is_the_plain_coc(self):
        depth = torch.rand(2, 1, 4, 5, dtype=F64) * 6 + 0.5
        lens = ThinLens(**self.LENS)
        plain = lens.coc_px(depth, 640, signed=True)
        per_channel = lens.channel_coc_px(depth, 640, 3, signed=True)
        for c in range(3):
            torch.testing.assert_close(per_channel[:, c:c + 1], plain, rtol=1e-12, atol=1e-12)
        green = ThinLens(**self.LENS, chromatic=0.01).channel_coc_px(depth, 640, 3, signed=True)[:, 1:2]
        torch.testing.assert_close(green, plain, rtol=1e-12, atol=1e-12)

    @pytest.mark.parametrize("chi", [0.004, -0.004])
    def test_each_channel_is_sharpest_at_its_own_focus(self, chi):
        lens = ThinLens(**self.LENS, chromatic=chi)
        f, s1 = 0.05, 2.0
        v = f * s1 / (s1 - f)
        depths = torch.linspace(1.5, 2.8, 20001, dtype=F64).view(1, 1, 1, -1)
        coc = lens.channel_coc_px(depths, 1000, 3)
        for c, k in enumerate((1.0, 0.0, -1.0)):
            f_c = f * (1 + chi * k)
            expected = f_c * v / (v - f_c)
            sharpest = float(depths.flatten()[coc[0, c, 0].argmin()])
            assert abs(sharpest - expected) < 1e-4
            assert float(lens.channel_coc_px(torch.full((1, 1, 1, 1), expected, dtype=F64), 1000, 3)[0, c]) \
                < 1e-9
        # blue focuses nearer than red for a positive chi, farther for a negative one
        red_s, blue_s = (f * (1 + chi * k) * v / (v - f * (1 + chi * k)) for k in (1.0, -1.0))
        assert (red_s > s1 > blue_s) == (chi > 0)

    def test_render_gives_colour_fringes_at_defocused_edges(self):
        img = torch.zeros(1, 3, 9, 31)
        img[..., 15:] = 1.0                                  # grey step edge
        depth = torch.full((1, 1, 9, 31), 1.5)
        plain = ThinLens(50.0, 1.4, 1.5, sensor_width_mm=2.0)
        ca = ThinLens(50.0, 1.4, 1.5, sensor_width_mm=2.0, chromatic=0.01)
        sharp = lensblur.render(img, depth, plain, method="gather", backend="torch")
        torch.testing.assert_close(sharp, img)                # in focus without aberration
        out = lensblur.render(img, depth, ca, method="gather", backend="torch")
        torch.testing.assert_close(out[:, 1], img[:, 1])     # green stays sharp
        fringe = out[0, 0, 4, 12:15]                          # red and blue bleed into the dark side
        assert bool((fringe > 0.02).all()) and bool((out[0, 2, 4, 12:15] > 0.02).all())
        layered = lensblur.render(img, depth, ca, method="layered", backend="torch")
        assert float(layered[0, 0, 4, 13]) > 0.02 and float(layered[0, 1, 4, 13]) < 1e-4

    def test_chromatic_gradient(self):
        g = torch.Generator().manual_seed(7)
        img = torch.rand(1, 3, 6, 7, generator=g, dtype=F64)
        depth = torch.rand(1, 1, 6, 7, generator=g, dtype=F64) * 2 + 1

        def f(chi):
            lens = ThinLens(50.0, 1.4, 1.6, sensor_width_mm=2.0, chromatic=chi)
            return lensblur.render(img, depth, lens, method="gather", backend="torch")

        assert torch.autograd.gradcheck(f, (torch.tensor(0.01, dtype=F64, requires_grad=True),))

    @pytest.mark.parametrize("bad", [0.3, -0.25, float("nan"), torch.tensor([[0.1]])])
    def test_bad_chromatic(self, bad):
        with pytest.raises(LensBlurError, match="chromatic"):
            ThinLens(chromatic=bad)

    def test_chromatic_needs_rgb(self):
        lens = ThinLens(chromatic=0.01)
        with pytest.raises(LensBlurError, match="channels"):
            lensblur.render(torch.rand(1, 2, 4, 4), torch.ones(1, 1, 4, 4) * 3, lens, method="gather")


def _fit_scene(h=24, w=24):
    """A slanted textured plane (1.2 m to 5 m) with bright point lights on its near and far sides."""
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(h, w),
                                          mode="bicubic", align_corners=True).clamp(0, 1) * 0.5
    img = img + 0.3 * torch.rand(1, 3, h, w, generator=g)
    xs = torch.linspace(0, 1, w)
    depth = (1.2 * (5.0 / 1.2) ** xs).expand(1, 1, h, w).clone()
    for y, x in ((3, w - 4), (9, w - 3), (15, w - 5), (20, w - 3), (4, 3), (12, 4), (19, 2)):
        img[..., y, x] = 25.0
    return img, depth


@pytest.mark.slow   # fits by gradient descent (tens of seconds)
class TestFitLens:
    def test_recovers_f_number_focus_and_a_rotated_7_blade_aperture(self):
        img, depth = _fit_scene()
        true_ap = Aperture.polygon(7, 20.0, 0.0)
        true = ThinLens(50.0, 1.4, 2.0, sensor_width_mm=2.0)
        target = lensblur.render(img, depth, true, true_ap, method="gather", backend="torch")
        poly = LearnablePolygon(7, rotation_deg=0.0, roundness=0.5)
        fit = fit_lens(img, depth, target, focal_length_mm=50.0, sensor_width_mm=2.0,
                       f_number=2.0, focus_distance_m=2.6, aperture=poly, steps=100, lr=0.08,
                       aperture_lr=0.2, method="gather", backend="torch")
        assert fit.losses[-1] < 0.02 * fit.losses[0]
        assert abs(fit.f_number / 1.4 - 1) < 0.05            # within 5 % (started 43 % off)
        assert abs(fit.focus_distance_m / 2.0 - 1) < 0.02    # within 2 % (started 30 % off)
        true_k = true_ap.kernel(15.0)
        ours = _corr(fit.aperture.kernel(15.0), true_k)
        disk = _corr(Aperture.disk().kernel(15.0), true_k)
        assert ours > disk + 0.05, (ours, disk)
        # the rotation is found modulo the 7-fold symmetry (51.4 degrees)
        period = 360.0 / 7
        off = (float(fit.aperture.rotation_deg) - 20.0) % period
        assert min(off, period - off) < 8.0

    def test_free_form_kernel_learns_the_shape(self):
        img, depth = _fit_scene()
        true_ap = Aperture.polygon(5, 0.0, 0.0)
        lens = ThinLens(50.0, 1.4, 2.0, sensor_width_mm=2.0)
        target = lensblur.render(img, depth, lens, true_ap, method="gather", backend="torch")
        learn = LearnableAperture(9)
        fit = fit_lens(img, depth, target, focal_length_mm=50.0, sensor_width_mm=2.0,
                       f_number=1.4, focus_distance_m=2.0, aperture=learn, fit_f_number=False,
                       fit_focus=False, steps=60, lr=0.1, method="gather", backend="torch")
        true_k = true_ap.kernel(15.0)
        ours = _corr(fit.aperture.kernel(15.0), true_k)
        disk = _corr(Aperture.disk().kernel(15.0), true_k)
        assert fit.losses[-1] < 0.5 * fit.losses[0]
        assert ours > disk + 0.03, (ours, disk)
        assert not fit.aperture.requires_grad                 # the result is a plain aperture

    def test_bad_arguments(self):
        img, depth = _fit_scene()
        with pytest.raises(LensBlurError, match="target"):
            fit_lens(img, depth, img[..., :4], focal_length_mm=50.0)
        with pytest.raises(LensBlurError, match="steps"):
            fit_lens(img, depth, img, focal_length_mm=50.0, steps=-1)
        with pytest.raises(TypeError, match="aperture"):
            fit_lens(img, depth, img, focal_length_mm=50.0, aperture="hexagon")
        with pytest.raises(LensBlurError, match="focus_distance_m"):
            fit_lens(img, depth, img, focal_length_mm=50.0, focus_distance_m=0.01)
