"""``render_coc``: the render step from a signed coc map (``render = lens.coc_px + render_coc``)."""

import pytest
import torch

import lensblur
from lensblur import Aperture, LensBlurError, ThinLens, render, render_coc

METHODS = ["layered", "gather", "scatter"]


def scene(b=2, h=10, w=12, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(b, 3, h, w, generator=g, dtype=dtype)
    depth = 1.0 + 6.0 * torch.rand(b, 1, h, w, generator=g, dtype=dtype)
    return img.to(device), depth.to(device)


class TestRenderCoc:
    @pytest.mark.parametrize("method", METHODS)
    def test_render_is_coc_px_plus_render_coc(self, device, method):
        img, depth = scene(device=device)
        lens = ThinLens(50.0, torch.tensor([1.4, 2.8], dtype=torch.float64, device=device), 2.0, sensor_width_mm=2.0)
        kw = dict(backend="torch", gamma=2.2, highlight_boost=1.0, near_scale=0.5)
        ref = render(img, depth, lens, Aperture.polygon(6), method, **kw)
        out = render_coc(img, lens.coc_px(depth, 12, signed=True), Aperture.polygon(6), method, **kw)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)

    def test_chromatic_coc_per_channel(self, device):
        img, depth = scene(b=1, device=device)
        lens = ThinLens(50.0, 1.4, 2.0, sensor_width_mm=2.0, chromatic=0.1)
        signed = lens.channel_coc_px(depth, 12, 3, signed=True)
        torch.testing.assert_close(render_coc(img, signed, method="gather", backend="torch"),
                                   render(img, depth, lens, method="gather", backend="torch"))

    @pytest.mark.parametrize("method", METHODS)
    def test_per_sample_apertures_equal_per_item_renders(self, device, method):
        img, depth = scene(b=3, device=device)
        s = ThinLens(50.0, 2.0, 2.0, sensor_width_mm=2.0).coc_px(depth, 12, signed=True)
        hexa = Aperture.polygon(6, rotation_deg=15.0)
        aps = [hexa, None, hexa]
        out = render_coc(img, s, aps, method, backend="torch")
        for i, a in enumerate(aps):
            ref = render_coc(img[i:i + 1], s[i:i + 1], a, method, backend="torch")
            if method == "layered":  # layers adapt to the batch's coc range: not bitwise
                torch.testing.assert_close(out[i:i + 1], ref, atol=0.05, rtol=0)
            else:
                torch.testing.assert_close(out[i:i + 1], ref, rtol=0, atol=0)
        # a different aperture gives a different picture (the list is really used)
        assert not torch.allclose(out[1], render_coc(img[1:2], s[1:2], hexa, method, backend="torch")[0])

    def test_per_sample_gradients_equal_per_item_gradients(self, device):
        img, _ = scene(b=3, h=6, w=7, device=device)
        s = 2.2 + torch.rand(3, 1, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
        s[..., :3] *= -1
        aps = [Aperture.polygon(5), Aperture.disk(), None]
        w = torch.rand(3, 3, 6, 7, dtype=torch.float64, device=device)
        x1, c1 = img.clone().requires_grad_(), s.clone().requires_grad_()
        (render_coc(x1, c1, aps, "gather", backend="torch") * w).sum().backward()
        x2, c2 = img.clone().requires_grad_(), s.clone().requires_grad_()
        out = torch.cat([render_coc(x2[i:i + 1], c2[i:i + 1], a, "gather", backend="torch")
                         for i, a in enumerate(aps)])
        (out * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(c1.grad, c2.grad)
        assert c1.grad.abs().sum() > 0

    def test_zero_coc_is_identity_and_inputs_untouched(self, device):
        img, _ = scene(device=device)
        before = img.clone()
        out = render_coc(img, torch.zeros(2, 1, 10, 12, dtype=torch.float64, device=device), method="gather", gamma=2.2,
                         backend="torch")
        torch.testing.assert_close(out, img)
        assert torch.equal(img, before)

    def test_bad_input_names_the_argument(self, device):
        img, _ = scene(device=device)
        s = torch.zeros(2, 1, 10, 12, dtype=torch.float64, device=device)
        with pytest.raises(LensBlurError, match="signed_coc"):
            render_coc(img, torch.zeros(2, 2, 10, 12, dtype=torch.float64, device=device))
        with pytest.raises(LensBlurError, match="signed_coc"):
            render_coc(img, s[:1])
        with pytest.raises(LensBlurError, match="signed_coc"):
            render_coc(img, torch.full_like(s, float("nan")))
        with pytest.raises(TypeError, match="signed_coc"):
            render_coc(img, s.long())
        with pytest.raises(LensBlurError, match="aperture"):
            render_coc(img, s, [Aperture.disk()])
        with pytest.raises(TypeError, match=r"aperture\[1\]"):
            render_coc(img, s, [Aperture.disk(), "disk"])
        with pytest.raises(LensBlurError, match="method"):
            render_coc(img, s, method="blur")
        with pytest.raises(LensBlurError, match="gamma"):
            render_coc(img, s, gamma=0.0)

    def test_exported(self):
        assert "render_coc" in lensblur.__all__ and lensblur.render_coc is render_coc


def test_physical_bokeh_is_render_coc_and_keeps_its_formula():
    """PhysicalBokeh = render_coc on the clamped display image; on non-negative images that is
    the plain power law ``(blur(x ** g)) ** (1 / g)`` it always used."""
    from lensblur_models.genrefocus import PhysicalBokeh

    img, _ = scene(b=2, dtype=torch.float32)
    img[0, 0, 0, 0] = -0.5   # out of range: clamped to 0 first
    dmap = torch.rand(2, 1, 10, 12) * 6
    aps = [Aperture.disk(), Aperture.polygon(6)]
    out = PhysicalBokeh(backend="torch")(img, dmap, aps)
    lin = img.clamp_min(0) ** 2.2
    ref = torch.cat([lensblur.defocus(lin[i:i + 1], dmap[i:i + 1], a, backend="torch") for i, a in enumerate(aps)])
    torch.testing.assert_close(out, ref ** (1 / 2.2))


def test_render_signed_coc_is_render_coc():
    from lensblur_models.refocus_dit.simulate import SimulationConfig, render_signed_coc

    img, depth = scene(b=1, dtype=torch.float32)
    s = ThinLens(50.0, 2.0, 2.0, sensor_width_mm=2.0).coc_px(depth, 12, signed=True)
    cfg = SimulationConfig(method="gather", gamma=2.2, aperture=Aperture.polygon(7), backend="torch")
    torch.testing.assert_close(render_signed_coc(img, s, cfg),
                               render_coc(img, s, cfg.aperture, "gather", 2.2, backend="torch"),
                               rtol=0, atol=0)
