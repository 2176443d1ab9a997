"""Hypothesis property tests over lensblur.testing's strategies."""

import torch
from hypothesis import given, strategies as st

import lensblur
from lensblur.testing import apertures, coc_maps, images, lenses, scenes


@given(apertures(), st.sampled_from(["gather", "scatter"]), coc_maps(batch=1, height=7, width=8, max_px=7.0),
       st.floats(-2.0, 5.0))
def test_constant_images_stay_constant(device, ap, method, coc, value):
    img = torch.full((1, 2, 7, 8), value, dtype=torch.float64, device=device)
    out = lensblur.defocus(img, coc.to(device), ap, method, backend="torch")
    torch.testing.assert_close(out, img, atol=1e-9, rtol=1e-9)


@given(apertures(), st.sampled_from(["gather", "scatter"]), images(batch=1, height=6, width=7))
def test_zero_coc_is_identity(device, ap, method, img):
    img = img.to(device)
    out = lensblur.defocus(img, torch.zeros(1, 1, 6, 7, dtype=torch.float64, device=device), ap, method, backend="torch")
    torch.testing.assert_close(out, img)


@given(apertures(), st.sampled_from(["gather", "scatter"]), images(batch=1, height=6, width=7),
       coc_maps(batch=1, height=6, width=7))
def test_output_is_a_convex_combination(device, ap, method, img, coc):
    # normalised non-negative weights: every output lies within the input's range, per channel
    img, coc = img.to(device), coc.to(device)
    out = lensblur.defocus(img, coc, ap, method, backend="torch")
    lo = img.amin((2, 3), keepdim=True) - 1e-9
    hi = img.amax((2, 3), keepdim=True) + 1e-9
    assert bool(((out >= lo) & (out <= hi)).all())


@given(scenes(batch=1, height=6, width=7), lenses())
def test_coc_is_nonnegative_and_zero_at_focus(device, scene, lens):
    depth = scene[1].to(device)
    coc = lens.coc_px(depth, 7)
    assert bool((coc >= 0).all())
    focus = float(lens.focus_distance_m)
    assert float(lens.coc_px(focus, 7)) == 0.0


@given(lenses(), st.floats(0.3, 50.0))
def test_coc_decreases_with_f_number(lens, depth_m):
    wider = lensblur.ThinLens(lens.focal_length_mm, lens.f_number / 2, lens.focus_distance_m, lens.sensor_width_mm)
    a, b = float(lens.coc_px(depth_m, 1000)), float(wider.coc_px(depth_m, 1000))
    assert b >= a and (a == 0 or abs(b / a - 2) < 1e-9)


@given(st.sampled_from(["gather", "scatter"]), apertures(kinds=("disk", "polygon"), extras=False))
def test_gradients_are_finite(device, method, ap):
    img = torch.rand(1, 1, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    coc = (torch.rand(1, 1, 5, 6, dtype=torch.float64, device=device) * 5).requires_grad_()
    out = lensblur.defocus(img, coc, ap, method, backend="torch")
    gi, gc = torch.autograd.grad(out.square().sum(), (img, coc))
    assert torch.isfinite(gi).all() and torch.isfinite(gc).all()
