import pytest
import torch

import lensblur
from lensblur import Aperture, LensBlur, ThinLens, defocus, render

FLAT = ["gather", "scatter"]


def scene(b=1, h=12, w=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)
    depth = 1.0 + 6.0 * torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    return img.to(device), depth.to(device)


class TestRender:
    @pytest.mark.parametrize("method", FLAT)
    def test_equals_defocus_with_lens_coc(self, device, method):
        img, depth = scene(device=device)
        lens = ThinLens(50.0, 1.4, 2.0)
        coc = lens.coc_px(depth, 16)
        torch.testing.assert_close(render(img, depth, lens, method=method, backend="torch"),
                                   defocus(img, coc, method=method, backend="torch"))

    @pytest.mark.parametrize("method", FLAT)
    def test_all_in_focus_depth_is_identity(self, device, method):
        img, _ = scene(device=device)
        depth = torch.full((1, 1, 12, 16), 2.0, dtype=torch.float64, device=device)
        out = render(img, depth, ThinLens(50.0, 1.4, 2.0), method=method, backend="torch")
        torch.testing.assert_close(out, img)

    @pytest.mark.parametrize("method", FLAT)
    def test_gradients_reach_every_lens_parameter(self, device, method):
        img, depth = scene(h=8, w=9, device=device)
        params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                  for k, v in dict(focal_length_mm=50.0, f_number=1.8, focus_distance_m=2.5).items()}
        depth = depth.requires_grad_()
        img = img.requires_grad_()
        out = render(img, depth, ThinLens(**params, sensor_width_mm=1.0), method=method, backend="torch")
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), [img, depth, *params.values()])
        for g in grads:
            assert torch.isfinite(g).all() and g.abs().sum() > 0

    @pytest.mark.parametrize("method", FLAT)
    def test_gradcheck_lens_parameters(self, device, method):
        img, depth = scene(h=5, w=6, device=device)

        def f(i, d, s1, n):
            return render(i, d, ThinLens(50.0, n, s1, sensor_width_mm=2.0), method=method, backend="torch")

        assert lensblur.testing.gradcheck(f, img, depth, torch.tensor(2.2), torch.tensor(2.0))

    def test_gamma_blurs_in_linear_light(self, device):
        img = torch.zeros(1, 1, 1, 21, dtype=torch.float64, device=device)
        img[..., 10:] = 1.0
        depth = torch.full((1, 1, 1, 21), 6.0, dtype=torch.float64, device=device)
        lens = ThinLens(50.0, 1.4, 2.0, sensor_width_mm=3.0)
        lin = render(img, depth, lens, method="gather", backend="torch")
        enc = render(img, depth, lens, method="gather", gamma=2.2, backend="torch")
        # encoded midtones sit above the linear ones: (x ** 2.2 blurred) ** (1/2.2) >= blur(x)
        mid = (lin > 0.05) & (lin < 0.95)
        assert mid.any() and bool((enc[mid] > lin[mid]).all())

    def test_highlight_boost_brightens_bokeh(self, device):
        img = torch.full((1, 3, 21, 21), 0.2, dtype=torch.float64, device=device)
        img[..., 10, 10] = 3.0
        depth = torch.full((1, 1, 21, 21), 8.0, dtype=torch.float64, device=device)
        lens = ThinLens(50.0, 1.4, 2.0, sensor_width_mm=4.0)
        a = render(img, depth, lens, method="scatter", backend="torch")
        b = render(img, depth, lens, method="scatter", backend="torch", highlight_boost=3.0)
        assert float(b.max()) > 1.5 * float(a.max())

    def test_near_far_scales(self, device):
        img, _ = scene(h=10, w=10, device=device)
        depth = torch.full((1, 1, 10, 10), 1.0, dtype=torch.float64, device=device)   # all in front of focus
        lens = ThinLens(50.0, 1.4, 3.0, sensor_width_mm=3.0)
        base = render(img, depth, lens, method="gather", backend="torch")
        torch.testing.assert_close(render(img, depth, lens, method="gather", backend="torch", far_scale=0.0), base)
        torch.testing.assert_close(render(img, depth, lens, method="gather", backend="torch", near_scale=0.0), img)

    def test_batched_lens(self, device):
        img, depth = scene(b=2, device=device)
        s1 = torch.tensor([1.5, 4.0], dtype=torch.float64, device=device)
        out = render(img, depth, ThinLens(50.0, 2.0, s1), method="gather", backend="torch")
        for b in range(2):
            single = render(img[b:b + 1], depth[b:b + 1], ThinLens(50.0, 2.0, float(s1[b])),
                            method="gather", backend="torch")
            torch.testing.assert_close(out[b:b + 1], single)


class TestModule:
    def test_module_equals_functional(self, device):
        img, depth = scene(b=2, device=device)
        layer = LensBlur(aperture=Aperture.polygon(5), method="scatter", sensor_width_mm=24.0, backend="torch")
        n = torch.tensor([1.4, 4.0], dtype=torch.float64, device=device)
        out = layer(img, depth, focal_length_mm=35.0, f_number=n, focus_distance_m=2.0)
        ref = render(img, depth, ThinLens(35.0, n, 2.0, 24.0), Aperture.polygon(5), "scatter", backend="torch")
        torch.testing.assert_close(out, ref)

    def test_learned_focus_gets_gradient(self, device):
        img, depth = scene(b=2, device=device)
        s1 = torch.tensor([1.5, 3.0], dtype=torch.float64, device=device, requires_grad=True)
        out = LensBlur(method="gather", backend="torch")(img, depth, 50.0, 1.4, s1)
        (g,) = torch.autograd.grad(out.std(), s1)
        assert torch.isfinite(g).all() and bool((g != 0).all())

    def test_unknown_option(self):
        with pytest.raises(TypeError, match="bokeh"):
            LensBlur(bokeh=3)


class TestErrors:
    img, depth = torch.rand(1, 3, 6, 6), torch.rand(1, 1, 6, 6) + 1
    lens = ThinLens()

    def test_nonpositive_depth(self):
        with pytest.raises(ValueError, match="depth"):
            render(self.img, self.depth - 5, self.lens)

    def test_nan_depth(self):
        d = self.depth.clone()
        d[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="depth"):
            render(self.img, d, self.lens)

    def test_depth_shape(self):
        with pytest.raises(ValueError, match="depth"):
            render(self.img, self.depth[:, :, :5], self.lens)

    def test_lens_type(self):
        with pytest.raises(TypeError, match="lens"):
            render(self.img, self.depth, {"f_number": 2})

    def test_method(self):
        with pytest.raises(ValueError, match="method"):
            render(self.img, self.depth, self.lens, method="fast")

    @pytest.mark.parametrize("kw,name", [(dict(f_number=0.0), "f_number"), (dict(f_number=-1.0), "f_number"),
                                         (dict(focal_length_mm=0.0), "focal_length_mm"),
                                         (dict(focus_distance_m=0.04), "focus_distance_m"),
                                         (dict(focus_distance_m=float("nan")), "focus_distance_m"),
                                         (dict(sensor_width_mm=-36.0), "sensor_width_mm"),
                                         (dict(f_number=torch.tensor([2.0, -1.0])), "f_number")])
    def test_lens_parameters(self, kw, name):
        with pytest.raises(ValueError, match=name):
            ThinLens(**kw)

    def test_lens_parameter_type(self):
        with pytest.raises(TypeError, match="f_number"):
            ThinLens(f_number="2.8")

    def test_gamma(self):
        with pytest.raises(ValueError, match="gamma"):
            render(self.img, self.depth, self.lens, method="gather", gamma=0.0)
