"""Occlusion-aware layered rendering (``render(method="layered")``, :mod:`lensblur.layered`)."""

import math

import pytest
import torch
from hypothesis import given, strategies as st

import lensblur
from lensblur import Aperture, LensBlur, ThinLens, defocus, render
from lensblur.layered import layer_centres, push_pull, render_layered, tent_weights
from lensblur.testing import apertures, scenes

H, W = 24, 32
FOCUS_M = 2.0
# 50 mm f/1.4 focused at 2 m on a 2 mm wide "sensor" imaged on 32 px: ~11 px of blur at 10 m
LENS = ThinLens(focal_length_mm=50.0, f_number=1.4, focus_distance_m=FOCUS_M, sensor_width_mm=2.0)
FG = (slice(8, 16), slice(10, 20))        # the foreground square (rows, cols)
FG_COLOUR = torch.tensor([0.9, 0.1, 0.1]).view(1, 3, 1, 1)


def textured(h=H, w=W, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (0.2 + 0.6 * torch.rand(1, 3, h, w, generator=g)).to(dtype)


def square_scene(fg_depth, bg_depth, dtype=torch.float32):
    """A red square at ``fg_depth`` in front of a textured background at ``bg_depth`` (metres)."""
    img = textured(dtype=dtype)
    img[(...,) + FG] = FG_COLOUR.to(dtype)
    depth = torch.full((1, 1, H, W), bg_depth, dtype=dtype)
    depth[(...,) + FG] = fg_depth
    return img, depth


def fg_mask(shrink=0):
    m = torch.zeros(1, 1, H, W, dtype=torch.bool)
    r, c = FG
    m[..., r.start + shrink:r.stop - shrink, c.start + shrink:c.stop - shrink] = True
    return m


def ring(inner, outer):
    """Background pixels whose Chebyshev distance to the square is in ``[inner, outer]``."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    r, c = FG
    dy = torch.maximum(r.start - yy, yy - (r.stop - 1)).clamp_min(0)
    dx = torch.maximum(c.start - xx, xx - (c.stop - 1)).clamp_min(0)
    d = torch.maximum(dy, dx)
    return ((d >= inner) & (d <= outer))[None, None]


def rend(img, depth, lens=LENS, **kw):
    kw.setdefault("backend", "torch")
    return render(img, depth, lens, method="layered", **kw)


class TestOcclusion:
    def test_sharp_foreground_keeps_its_colour_at_the_edge(self):
        img, depth = square_scene(FOCUS_M, 10.0)
        assert float(LENS.coc_px(torch.tensor(10.0), W)) > 9.0          # strongly blurred bg
        out = rend(img, depth)
        inside = fg_mask().expand_as(img)
        err = (out - img).abs()[inside]
        assert float(err.max()) < 0.01
        # the scene is a real test: a plain scatter bleeds the background into the square
        naive = defocus(img, LENS.coc_px(depth, W), method="scatter", backend="torch")
        assert float((naive - img).abs()[inside].max()) > 0.1

    def test_demo_scene_in_focus_sphere_is_untouched(self):
        # the demo scene focused on the near red sphere (its coc stays below 1 px) with a strongly
        # blurred background: every pixel of the sphere, up to its silhouette, keeps its value
        img, depth = lensblur.scene.make_scene(60, 90)
        sphere = depth < 1.6
        lens = ThinLens(50.0, 1.4, float(depth[sphere].min()) + 0.05, sensor_width_mm=12.0)
        s = lens.coc_px(depth, 90, signed=True)
        assert float(s[sphere].abs().max()) < 1.0 and float(s.max()) > 8.0
        out = rend(img, depth, lens)
        torch.testing.assert_close(out[sphere.expand_as(img)], img[sphere.expand_as(img)], atol=1e-4, rtol=0)
        naive = render(img, depth, lens, method="scatter", backend="torch")
        assert float((naive - img).abs()[sphere.expand_as(img)].max()) > 0.1

    def test_no_halo_around_sharp_foreground(self):
        img, depth = square_scene(FOCUS_M, 10.0)
        out = rend(img, depth)
        # the same background without the square, blurred everywhere
        bg_only = rend(textured(), torch.full_like(depth, 10.0))
        near = ring(1, 2).expand_as(img)
        diff = (out - bg_only)[near]
        # no red bleeding outwards and no dark/bright halo: the ring matches the plain blurred bg
        assert abs(float(diff.mean())) < 0.015 and float(diff.abs().max()) < 0.05
        red_excess = (out - bg_only)[:, 0:1][ring(1, 2)]
        assert float(red_excess.mean()) < 0.015

    def test_no_dark_halo_on_a_uniform_background(self):
        # a dark in-focus square on a bright uniform far background: next to the square the
        # blurred background must keep exactly its brightness (each layer is normalised by its
        # own coverage), and the square keeps its own value
        img = torch.full((1, 3, H, W), 0.8)
        img[(...,) + FG] = 0.1
        depth = torch.full((1, 1, H, W), 10.0)
        depth[(...,) + FG] = FOCUS_M
        out = rend(img, depth)
        torch.testing.assert_close(out[ring(1, 3).expand_as(out)], img[ring(1, 3).expand_as(img)],
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(out[fg_mask().expand_as(out)], img[fg_mask().expand_as(img)],
                                   atol=1e-4, rtol=0)
        # a plain gather (each pixel averaging its own footprint) darkens that ring
        naive = render(img, depth, LENS, method="gather", backend="torch")
        assert float(naive[ring(1, 3).expand_as(out)].min()) < 0.7

    def test_no_halo_from_a_farther_layer(self):
        # sharp square, a blurred bright middle layer around it and a dark, even more blurred wall
        # below: next to the square the middle layer must stay whole (its hidden part behind the
        # square is filled as far as its own blur reaches), so the dark wall cannot show through
        h, w = 48, 56
        img = torch.full((1, 3, h, w), 0.8)
        s = torch.full((1, 1, h, w), 12.0)
        img[..., 40:, :], s[..., 40:, :] = 0.1, 20.0
        img[..., 12:30, 16:40], s[..., 12:30, 16:40] = 0.5, 0.0
        out = render_layered(img, s, backend="torch")
        around = torch.zeros(h, w, dtype=torch.bool)
        around[10:32, 14:42] = True
        around[12:30, 16:40] = False
        torch.testing.assert_close(out[0, :, around], img[0, :, around], atol=0.01, rtol=0)
        torch.testing.assert_close(out[..., 12:30, 16:40], img[..., 12:30, 16:40], atol=1e-5, rtol=0)

    def test_blurred_foreground_spreads_over_sharp_background(self):
        img, depth = square_scene(1.2, FOCUS_M)
        coc = float(LENS.coc_px(torch.tensor(1.2), W))
        assert coc > 9.0
        out = rend(img, depth)
        # just outside the square: a semi-transparent mix of red and background
        edge = ring(1, 2)
        red = out[:, 0:1][edge] - img[:, 0:1][edge]
        assert float(red.mean()) > 0.1
        frac = ((out - img)[:, 0:1] / (FG_COLOUR[:, 0:1] - img[:, 0:1]))[edge]
        assert 0.05 < float(frac.mean()) < 0.6
        # far from the square (beyond the blur radius) the sharp background is untouched
        far = ring(int(math.ceil(coc / 2)) + 1, 99).expand_as(img)
        torch.testing.assert_close(out[far], img[far], atol=1e-6, rtol=0)

    @staticmethod
    def _square_coverage(coc):
        """The ideal blurred coverage of the square: its indicator blurred by a uniform coc."""
        ind = fg_mask().to(torch.float32)
        return defocus(ind, torch.full((1, 1, H, W), coc), method="scatter", backend="torch")

    def test_blurred_foreground_spreads_with_its_true_coverage(self):
        # outside the square: out = A fg + (1 - A) bg exactly, A = the square's blurred coverage
        # (a layer split that under-spreads, or a gather that over-spreads, breaks this)
        img, depth = square_scene(1.2, FOCUS_M)
        a = self._square_coverage(float(LENS.coc_px(torch.tensor(1.2), W)))
        out = rend(img, depth)
        outside = ring(1, 99).expand_as(img)
        ideal = a * FG_COLOUR + (1 - a) * img
        torch.testing.assert_close(out[outside], ideal[outside], atol=1e-4, rtol=0)
        assert float(a[ring(3, 3)].mean()) > 0.1                # it does reach 3 px out

    def test_blurred_foreground_over_uniform_background_is_ideal(self):
        # with a uniform background the fill behind the square is exactly that background, so
        # everywhere, inside the square's rim too, out = A fg + (1 - A) bg
        bg = torch.tensor([0.0, 0.0, 0.8]).view(1, 3, 1, 1)
        img = bg.expand(1, 3, H, W).clone()
        img[(...,) + FG] = FG_COLOUR
        depth = torch.full((1, 1, H, W), FOCUS_M)
        depth[(...,) + FG] = 1.2
        a = self._square_coverage(float(LENS.coc_px(torch.tensor(1.2), W)))
        torch.testing.assert_close(rend(img, depth), a * FG_COLOUR + (1 - a) * bg, atol=1e-4, rtol=0)

    def test_partial_occlusion_shows_hidden_background(self):
        # inside the blurred square's edge the (hidden) background shows through, with the
        # colours of the background around it (the fill), not black and not the square's red
        img = torch.full((1, 3, H, W), 0.0)
        img[:, 2] = 0.8                                   # blue background
        img[(...,) + FG] = FG_COLOUR
        depth = torch.full((1, 1, H, W), FOCUS_M)
        depth[(...,) + FG] = 1.2
        out = rend(img, depth)
        inner_edge = fg_mask() & ~fg_mask(shrink=1)
        blue = out[:, 2:3][inner_edge]
        assert float(blue.mean()) > 0.2                   # the hidden blue background shows
        lum = out.sum(1, keepdim=True)[inner_edge]
        assert float(lum.min()) > 0.8                     # no dark rim (0.9 + 0.2 = 1.1 pure)

    def test_split_surface_does_not_show_what_is_behind(self):
        # a wide flat surface whose coc lies between two layer centres, over a white background
        img = torch.ones(1, 3, H, W)
        img[..., 4:20, 4:28] = torch.tensor([0.1, 0.5, 0.2]).view(1, 3, 1, 1)
        s = torch.zeros(1, 1, H, W)
        s[..., 4:20, 4:28] = -3.4
        centres = layer_centres(-3.4, 0.0)
        assert min(abs(c + 3.4) for c in centres) > 0.5   # really split between two layers
        out = render_layered(img, s, backend="torch")
        interior = out[..., 10:14, 12:20]
        torch.testing.assert_close(interior, img[..., 10:14, 12:20], atol=1e-5, rtol=0)


class TestBasics:
    def test_all_in_focus_is_identity(self):
        img = textured()
        out = rend(img, torch.full((1, 1, H, W), FOCUS_M))
        torch.testing.assert_close(out, img, atol=0, rtol=0)
        assert out.data_ptr() != img.data_ptr()            # a new tensor, not the input

    def test_constant_image_stays_constant(self):
        img = torch.full((1, 3, H, W), 0.37)
        depth = 0.8 + 8 * torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(rend(img, depth), img, atol=1e-5, rtol=0)

    def test_smooth_depth_matches_plain_scatter(self):
        # without depth edges there is nothing to occlude: layered ~ the plain scatter blur
        img = textured()
        depth = (1.2 + 6.0 * torch.linspace(0, 1, H)).view(1, 1, H, 1).expand(1, 1, H, W).contiguous()
        s = LENS.coc_px(depth, W, signed=True)
        assert float(s.min()) < -8 and float(s.max()) > 8
        plain = defocus(img, s.abs(), method="scatter", backend="torch")
        diff = (rend(img, depth) - plain).abs()
        assert float(diff.mean()) < 0.1 * float((plain - img).abs().mean())
        assert float(diff.mean()) < 0.01

    def test_single_layer_equals_plain_blur(self):
        img, depth = square_scene(1.2, 10.0)
        s = LENS.coc_px(depth, W, signed=True)
        out = render_layered(img, s, backend="torch", num_layers=1)
        torch.testing.assert_close(out, defocus(img, s.abs(), method="scatter", backend="torch"))

    def test_does_not_modify_inputs(self):
        img, depth = square_scene(1.2, 10.0)
        i0, d0 = img.clone(), depth.clone()
        rend(img, depth)
        assert torch.equal(img, i0) and torch.equal(depth, d0)

    def test_batch_with_per_sample_lens_equals_loop(self):
        a, da = square_scene(1.2, 10.0)
        b, db = square_scene(FOCUS_M, 4.0)
        img, depth = torch.cat([a, b]), torch.cat([da, db])
        focus = torch.tensor([FOCUS_M, 3.0])
        lens = ThinLens(50.0, 1.4, focus, sensor_width_mm=2.0)
        out = rend(img, depth, lens)
        for i in range(2):
            single = rend(img[i:i + 1], depth[i:i + 1],
                          ThinLens(50.0, 1.4, float(focus[i]), sensor_width_mm=2.0))
            torch.testing.assert_close(out[i:i + 1], single, atol=1e-5, rtol=1e-5)

    def test_auto_backend_agrees_with_torch(self):
        img, depth = square_scene(1.2, 10.0)
        torch.testing.assert_close(rend(img, depth, backend="auto"), rend(img, depth),
                                   atol=1e-4, rtol=1e-4)

    def test_stacked_layer_blur_equals_one_call_per_layer(self, monkeypatch):
        img, depth = square_scene(1.2, 10.0)
        per_layer = rend(img, depth)
        monkeypatch.setattr(lensblur.layered, "_layers_per_call", lambda backend, device, batch: 3)
        torch.testing.assert_close(rend(img, depth), per_layer, atol=1e-6, rtol=1e-6)

    def test_module_equals_functional(self):
        img, depth = square_scene(1.2, 10.0)
        ap = Aperture.polygon(6)
        layer = LensBlur(aperture=ap, sensor_width_mm=2.0, backend="torch")
        assert layer.method == "layered"
        out = layer(img, depth, focal_length_mm=50.0, f_number=1.4, focus_distance_m=FOCUS_M)
        torch.testing.assert_close(out, rend(img, depth, aperture=ap))

    def test_num_layers_validated(self):
        img, depth = square_scene(1.2, 10.0)
        with pytest.raises(ValueError, match="num_layers"):
            rend(img, depth, num_layers=0)


class TestGradients:
    def test_gradcheck_image_depth_focus_fnumber(self):
        g = torch.Generator().manual_seed(3)
        img = torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64)
        depth = 0.7 + 4.0 * torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64)

        def f(i, d, s1, n):
            return render(i, d, ThinLens(50.0, n, s1, sensor_width_mm=1.5), method="layered",
                          backend="torch")

        assert lensblur.testing.gradcheck(f, img, depth, torch.tensor(1.6, dtype=torch.float64),
                                          torch.tensor(2.0, dtype=torch.float64))

    def test_focal_plane_gradient_matches_central_difference(self):
        # pixels exactly at the focus distance sit on the kink of |coc|: the gradient must be the
        # symmetric one (what a central difference sees), not a one-sided slope
        g = torch.Generator().manual_seed(5)
        img = torch.rand(1, 2, 8, 10, generator=g, dtype=torch.float64)
        depth = torch.full((1, 1, 8, 10), 6.0, dtype=torch.float64)
        depth[..., 2:6, 3:7] = 2.0                                  # exactly in focus
        weights = torch.randn(1, 2, 8, 10, generator=g, dtype=torch.float64)

        def loss(focus):
            lens = ThinLens(50.0, 1.4, focus, sensor_width_mm=1.0)
            return (rend(img, depth, lens) * weights).sum()

        focus = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(loss(focus), focus)
        eps = 1e-6
        with torch.no_grad():
            central = (loss(torch.tensor(2.0 + eps, dtype=torch.float64))
                       - loss(torch.tensor(2.0 - eps, dtype=torch.float64))) / (2 * eps)
        assert float(grad) != 0.0
        assert abs(float(grad) - float(central)) < 1e-4 * max(1.0, abs(float(central)))

    def test_gradients_reach_every_lens_parameter(self):
        img, depth = square_scene(1.2, 10.0, dtype=torch.float64)
        params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
                  for k, v in dict(focal_length_mm=50.0, f_number=1.4, focus_distance_m=FOCUS_M).items()}
        depth.requires_grad_()
        out = rend(img, depth, ThinLens(**params, sensor_width_mm=2.0))
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), [depth, *params.values()])
        for gr in grads:
            assert torch.isfinite(gr).all() and float(gr.abs().sum()) > 0

    def test_focus_recovery_by_gradient_descent(self):
        # the demo scene (with its HDR fairy lights), a target rendered at the true focus, and
        # Adam on log(focus) from a wrong start; the loss compares tone-mapped images x/(1+x)
        img, depth = lensblur.scene.make_scene(24, 32, seed=0)
        true_focus = 2.6
        kw = dict(focal_length_mm=50.0, f_number=1.4, sensor_width_mm=4.0)

        def tone(x):
            return x / (1 + x)

        target = tone(rend(img, depth, ThinLens(focus_distance_m=true_focus, **kw)))
        log_focus = torch.tensor(math.log(4.0), requires_grad=True)
        opt = torch.optim.Adam([log_focus], lr=0.1, betas=(0.5, 0.9))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.88)
        for _ in range(22):
            opt.zero_grad()
            out = rend(img, depth, ThinLens(focus_distance_m=log_focus.exp(), **kw))
            loss = (tone(out) - target).pow(2).mean()
            loss.backward()
            assert torch.isfinite(log_focus.grad)
            opt.step()
            sched.step()
        assert abs(float(log_focus.detach().exp()) / true_focus - 1) < 0.02


def test_recover_focus_example_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "recover_focus.py"
    spec = importlib.util.spec_from_file_location("recover_focus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--height", "16", "--width", "24", "--steps", "2", "--backend", "torch"])
    text = capsys.readouterr().out
    assert rc in (0, 1) and "step   2" in text and "recovered" in text


class TestControls:
    def test_highlight_boost_raises_bokeh_peak(self):
        img = torch.full((1, 3, H, W), 0.2)
        img[..., 12, 16] = 4.0
        depth = torch.full((1, 1, H, W), 10.0)
        a = rend(img, depth)
        b = rend(img, depth, highlight_boost=3.0)
        # the disc's excess over the 0.2 floor grows ~ (1 + boost) (4 - 1) + 1 - 0.2 vs 3.8
        assert float(b.max()) - 0.2 > 2.5 * (float(a.max()) - 0.2)
        # the boost only touches highlights: a scene without them is unchanged
        dim = textured()
        torch.testing.assert_close(rend(dim, depth, highlight_boost=3.0), rend(dim, depth))

    @staticmethod
    def _moments(out):
        y = (out - out.amin(dim=(-2, -1), keepdim=True)).sum(1)[0]
        yy, xx = torch.meshgrid(torch.arange(H, dtype=y.dtype), torch.arange(W, dtype=y.dtype), indexing="ij")
        m = y.sum()
        cy, cx = (yy * y).sum() / m, (xx * y).sum() / m
        return float(((yy - cy) ** 2 * y).sum() / m), float(((xx - cx) ** 2 * y).sum() / m)

    def test_anamorphic_squeeze_makes_discs_taller_than_wide(self):
        img = torch.zeros(1, 3, H, W)
        img[..., 12, 16] = 1.0
        depth = torch.full((1, 1, H, W), 10.0)
        vy, vx = self._moments(rend(img, depth))
        assert abs(vy / vx - 1) < 0.1
        vy, vx = self._moments(rend(img, depth, squeeze=1.8))
        assert vy / vx > 2.0

    def test_cats_eye_changes_corner_bokeh_not_centre(self):
        img = torch.zeros(1, 3, H, W)
        img[..., 12, 16] = 1.0        # a light at the frame centre (11.5, 15.5)
        img[..., 3, 3] = 1.0          # a light near the corner
        depth = torch.full((1, 1, H, W), 10.0)
        a = rend(img, depth)
        b = rend(img, depth, cats_eye=1.0)

        def shape_change(region):     # L1 distance of the two discs' normalised shapes
            pa, pb = a[region][:, 0], b[region][:, 0]
            return float((pa / pa.sum() - pb / pb.sum()).abs().sum())

        centre = (slice(None), slice(None), slice(6, 19), slice(9, 24))
        corner = (slice(None), slice(None), slice(0, 10), slice(0, 10))
        assert shape_change(corner) > 0.3          # the corner disc is cut into a cat's eye
        assert shape_change(centre) < 0.1          # the centre disc keeps its shape

    def test_near_and_far_scale_only_their_side(self):
        img, depth = square_scene(1.2, 10.0)
        base = rend(img, depth)
        bg, sq = ~fg_mask(shrink=0) & ring(8, 99), fg_mask(shrink=3)
        no_far = rend(img, depth, far_scale=0.0)
        # the background (behind focus) becomes sharp, the near square stays blurred
        torch.testing.assert_close(no_far[bg.expand_as(img)], img[bg.expand_as(img)], atol=1e-5, rtol=0)
        torch.testing.assert_close(no_far[sq.expand_as(img)], base[sq.expand_as(img)], atol=0.02, rtol=0)
        no_near = rend(img, depth, near_scale=0.0)
        torch.testing.assert_close(no_near[fg_mask().expand_as(img)], img[fg_mask().expand_as(img)],
                                   atol=0.01, rtol=0)
        # a larger far scale blurs the background more (less texture left)
        more_far = rend(img, depth, far_scale=1.5)
        assert float(more_far[bg.expand_as(img)].std()) < float(base[bg.expand_as(img)].std())

    def test_gamma_blurs_in_linear_light(self):
        img = torch.full((1, 3, H, W), 0.05)
        img[..., :, 16:] = 0.9                              # a bright/dark edge, encoded
        depth = torch.full((1, 1, H, W), 10.0)
        depth[..., :, 24:] = FOCUS_M
        lin = rend(img, depth)
        enc = rend(img, depth, gamma=2.2)
        assert float((enc - lin).abs().max()) > 0.05
        manual = rend(img ** 2.2, depth) ** (1 / 2.2)
        torch.testing.assert_close(enc, manual, atol=1e-5, rtol=1e-5)
        mid = (lin > 0.1) & (lin < 0.85)
        assert mid.any() and bool((enc[mid] > lin[mid]).all())


def small_sensor_lenses():
    """Lenses whose blur is a few pixels on a ~10 px wide image (a 1-3 mm "sensor")."""
    return st.builds(ThinLens, focal_length_mm=st.floats(20.0, 100.0), f_number=st.floats(1.2, 8.0),
                     focus_distance_m=st.floats(0.8, 6.0), sensor_width_mm=st.floats(1.0, 3.0))


class TestProperties:
    @given(scenes(batch=st.integers(1, 2), height=st.integers(4, 9), width=st.integers(4, 10)),
           small_sensor_lenses(), apertures())
    def test_output_is_a_convex_combination_of_the_input(self, scene, lens, ap):
        # every layer is a normalised blur of input pixels (and fills made of them), and the
        # compositing weights are non-negative and normalised: outputs stay in the input's range
        img, depth = scene
        out = rend(img, depth, lens, aperture=ap)
        lo = img.amin((2, 3), keepdim=True) - 1e-9
        hi = img.amax((2, 3), keepdim=True) + 1e-9
        assert bool(((out >= lo) & (out <= hi)).all())

    @given(scenes(batch=1, height=st.integers(4, 9), width=st.integers(4, 10)), small_sensor_lenses(),
           st.floats(-1.0, 3.0))
    def test_constant_images_stay_constant(self, scene, lens, value):
        _, depth = scene
        img = torch.full((1, 2) + depth.shape[-2:], value, dtype=torch.float64)
        torch.testing.assert_close(rend(img, depth, lens), img, atol=1e-9, rtol=1e-9)

    def test_non_contiguous_input(self):
        img, depth = square_scene(1.2, 10.0)
        nc_img = img.transpose(2, 3).contiguous().transpose(2, 3)
        assert not nc_img.is_contiguous()
        torch.testing.assert_close(rend(nc_img, depth), rend(img, depth))


class TestPieces:
    def test_centres_cover_range_and_adapt(self):
        assert layer_centres(0.0, 0.0) == [0.0]
        small, large = layer_centres(-2.0, 3.0), layer_centres(-2.0, 60.0)
        assert small[0] <= -2.0 and small[-1] >= 3.0 and len(large) > len(small)
        assert len(layer_centres(-500.0, 500.0)) <= lensblur.layered.MAX_LAYERS
        assert len(layer_centres(-5.0, 5.0, num_layers=7)) == 7

    def test_tent_weights_partition_unity(self):
        centres = layer_centres(-8.0, 20.0)
        s = torch.linspace(-8.0, 20.0, 301)
        w = torch.stack([tent_weights(s, centres, k) for k in range(len(centres))])
        torch.testing.assert_close(w.sum(0), torch.ones_like(s))
        assert bool((w >= 0).all()) and int((w > 0).sum(0).max()) <= 2

    def test_push_pull_fills_from_own_neighbourhood(self):
        alpha = torch.zeros(1, 1, 16, 16)
        alpha[..., :, :6] = 1.0
        colour = torch.tensor([0.3, 0.6]).view(1, 2, 1, 1) * alpha
        fill, fa = push_pull(colour, alpha, 2)
        assert bool((fa[..., :, :8] > 0.5).all())          # present next to the content
        torch.testing.assert_close(fill[..., :, 6:10] / fa[..., :, 6:10],
                                   torch.tensor([0.3, 0.6]).view(1, 2, 1, 1).expand(1, 2, 16, 4))
        assert float(fa[..., :, 12:].max()) < 0.01         # but only within a few pixels
        # inside the content the fill is the content's own colour
        assert float(fa[..., :, :4].min()) > 0.99 and float(fill[..., :, :4].sub(colour[..., :, :4]).abs().max()) < 1e-6
