"""The layered renderer's partial-occlusion fill adds no light, its gradients at the focus plane,
and (later sections) the fused layered operator.  Kept fast: small images, the default backend."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lensblur import defocus
from lensblur.layered import render_layered

# ----------------------------------------------------------------------------------------------
# Energy: the fill reveals what plausibly lies behind an occluder, it never invents light
# ----------------------------------------------------------------------------------------------


def strip_scene(strip_coc, light_coc, bg=1.0, h=64, w=64):
    """A 3x3 light of radiance 40 three pixels beside a 20-px strip, on a diffuse background
    (radiance ``bg``) at +20 px of coc; the light at ``light_coc``, the strip at ``strip_coc``."""
    img = torch.full((1, 3, h, w), bg)
    s = torch.full((1, 1, h, w), 20.0)
    img[..., 30:33, 20:23] = 40.0
    s[..., 30:33, 20:23] = light_coc
    s[..., :, 26:46] = strip_coc
    return img, s


def energy_ratio(out, img):
    return float(out.sum() / img.sum())


@pytest.mark.parametrize("strip_coc", [-30.0, 0.0])
@pytest.mark.parametrize("light_coc", [20.0, 12.0])
def test_light_beside_an_occluder_keeps_the_energy(strip_coc, light_coc):
    # the reproduction: the light alone in its layer (12 px) made the fill behind the
    # strip an emitter (5.6x the input energy with the strip blurred, 1.4x with it in focus)
    img, s = strip_scene(strip_coc, light_coc)
    for method in ("gather", "scatter"):          # the scene really conserves energy
        assert abs(energy_ratio(defocus(img, s.abs(), method=method), img) - 1) < 0.025
    assert abs(energy_ratio(render_layered(img, s), img) - 1) < 0.025


@st.composite
def lit_scenes(draw, size=32):
    """A diffuse scene of one radiance ``b`` with a few rectangles at other depths (signed coc up
    to +-12 px) and one to four small lights (1-3 px squares of radiance 20-60) at least a blur
    radius from the frame's border (where normalising by the covered part of a disc moves
    energy whatever the fill does)."""
    b = draw(st.floats(0.3, 1.5))
    img = torch.full((1, 3, size, size), b, dtype=torch.float64)
    s = torch.full((1, 1, size, size), draw(st.floats(-12.0, 12.0)), dtype=torch.float64)
    for _ in range(draw(st.integers(1, 3))):
        y, x = draw(st.integers(0, size - 6)), draw(st.integers(0, size - 6))
        hh, ww = draw(st.integers(4, 20)), draw(st.integers(4, 20))
        s[..., y:y + hh, x:x + ww] = draw(st.floats(-12.0, 12.0))
    for _ in range(draw(st.integers(1, 4))):
        y, x, n = draw(st.integers(6, size - 9)), draw(st.integers(6, size - 9)), draw(st.integers(1, 3))
        img[..., y:y + n, x:x + n] = draw(st.floats(20.0, 60.0))
        if draw(st.booleans()):                   # a light at a depth of its own
            s[..., y:y + n, x:x + n] = draw(st.floats(-12.0, 12.0))
    return img, s, b


@settings(max_examples=25, deadline=None)
@given(lit_scenes())
def test_fill_adds_no_light(scene):
    # everything but the lights has one radiance, so whatever the fill reveals behind an
    # occluder has (at most) that radiance: the render may not hold more energy than the input
    # or a plain scatter blur (6 %: the fill may be up to FILL_CAP = 1.25 times the robust
    # level of its surroundings, so a light next to an occluder can brighten the revealed band
    # by that much; the fill that copied the light's own colour gave up to 5x), and it loses
    # at most what the occluders can hide of the lights
    img, s, b = scene
    e_in = float(img.sum())
    e_lights = float((img - b).clamp_min(0).sum())
    e_scatter = float(defocus(img, s.abs(), method="scatter").sum())
    e_out = float(render_layered(img, s).sum())
    assert e_out <= 1.06 * max(e_in, e_scatter)
    assert e_out >= e_in - e_lights - 0.06 * e_in


# ----------------------------------------------------------------------------------------------
# Gradients w.r.t. the lens where pixels sit exactly at the focus distance
# ----------------------------------------------------------------------------------------------

from lensblur import ThinLens, render, available_backends  # noqa: E402
from lensblur.testing import gradcheck  # noqa: E402

BACKENDS = [b for b in ("torch", "native") if b in available_backends("cpu")]


def _focus_scene(seed=3, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(1, 2, h, w, generator=g, dtype=torch.float64)
    depth = 0.7 + 4.0 * torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    return img, depth


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_lens_with_half_the_depth_exactly_in_focus(backend):
    img, depth = _focus_scene()
    focus = 1.6
    depth[..., :, :3] = focus                      # more than half of the pixels: coc exactly 0

    def f(s1, n, fl):
        lens = ThinLens(fl, n, s1, sensor_width_mm=1.5)
        return render(img, depth, lens, method="layered", backend=backend)

    assert gradcheck(f, torch.tensor(focus, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64),
                     torch.tensor(50.0, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_in_focus_lens_parameters_get_a_gradient(backend):
    img, _ = _focus_scene()
    depth = torch.full((1, 1, 4, 5), 2.0, dtype=torch.float64)
    focus = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    n = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    out = render(img, depth, ThinLens(50.0, n, focus, sensor_width_mm=1.5), method="layered",
                 backend=backend)
    torch.testing.assert_close(out, img, atol=0, rtol=0)       # still unchanged
    g_focus, g_n = torch.autograd.grad(out.sum(), [focus, n], allow_unused=True)
    assert g_focus is not None and g_n is not None             # the graph reaches the lens
    # and it is the right one: a central difference (every pixel a hair off focus either way
    # is blurred by far less than a pixel, so the image does not change)
    eps = 1e-5
    with torch.no_grad():
        hi = render(img, depth, ThinLens(50.0, 2.0, 2.0 + eps, sensor_width_mm=1.5), method="layered",
                    backend=backend)
        lo = render(img, depth, ThinLens(50.0, 2.0, 2.0 - eps, sensor_width_mm=1.5), method="layered",
                    backend=backend)
    central = float((hi - lo).sum()) / (2 * eps)
    assert abs(float(g_focus) - central) < 1e-6 and float(g_n) == 0.0
