"""Properties every correct occlusion-aware renderer has, on structured scenes.

The scenes come from :func:`lensblur.testing.layered_scenes`: piecewise-planar depth with sharp
occlusion edges, one fronto-parallel in-focus layer (anywhere in the stack) and sparse
highlights 5-50 times brighter than the rest.  Nothing here depends on how
``render(method="layered")`` works inside, only on what the SPEC asks of it.
"""

import math

import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import lensblur
from lensblur import ThinLens
from lensblur.testing import highlights, layered_depths, layered_scenes

SENSOR_MM = 2.0


def lens_for(scene, max_coc_px: float) -> ThinLens:
    """A 50 mm lens focused on the scene's in-focus layer, its f-number set so that the largest
    coc in the frame is ``max_coc_px``."""
    w = scene.depth.shape[-1]
    wide = ThinLens(50.0, 1.0, scene.focus_distance_m, sensor_width_mm=SENSOR_MM)
    c = float(wide.coc_px(scene.depth, w).max())
    return ThinLens(50.0, max(c / max_coc_px, 1e-3), scene.focus_distance_m, sensor_width_mm=SENSOR_MM)


def within(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels whose Chebyshev distance to ``mask`` is at most ``radius``."""
    return F.max_pool2d(mask.double(), 2 * radius + 1, stride=1, padding=radius) > 0


def render(scene, lens, device):
    return lensblur.render(scene.image.to(device), scene.depth.to(device), lens, method="layered").cpu()


@settings(max_examples=12)
@given(layered_scenes(), st.floats(1.5, 7.0))
def test_the_in_focus_layer_stays_sharp_unless_something_nearer_is_close(device, scene, max_coc):
    """No colour from behind reaches a sharp in-focus surface, and nothing changes it far from
    nearer (blurred, semi-transparent) occluders: those pixels keep their exact input value."""
    lens = lens_for(scene, max_coc)
    out = render(scene, lens, device)
    radius = math.ceil(max_coc / 2) + 1                # the widest footprint's reach, plus one px
    sharp_label = int(scene.labels[scene.in_focus][0])
    nearer = scene.labels > sharp_label
    safe = scene.in_focus & ~within(nearer, radius)
    scale = float(scene.image.abs().max())
    diff = (out - scene.image).abs().amax(1, keepdim=True)
    worst = float(torch.where(safe, diff, torch.zeros_like(diff)).max())
    assert worst <= 1e-5 * scale, f"an in-focus pixel changed by {worst:.3g}"


@settings(max_examples=12)
@given(layered_scenes(), st.floats(1.5, 7.0))
def test_output_is_finite_within_the_input_range_and_keeps_its_energy(device, scene, max_coc):
    """Every output pixel is a normalised, non-negative mix of input colours, so it lies in the
    input's range per channel; and the render moves light around but neither creates nor
    destroys much of it (the frame's total stays within 25 %; exact conservation does not hold
    where occluders hide and reveal different amounts of the background)."""
    out = render(scene, lens_for(scene, max_coc), device)
    img = scene.image
    assert bool(torch.isfinite(out).all())
    lo = img.amin((2, 3), keepdim=True)
    hi = img.amax((2, 3), keepdim=True)
    tol = 1e-6 * float(hi.max())
    assert bool(((out >= lo - tol) & (out <= hi + tol)).all()), "output outside the input's range"
    ratio = float(out.sum() / img.sum())
    assert 0.75 <= ratio <= 1.25, ratio


@settings(max_examples=10)
@given(layered_depths(height=st.integers(14, 20), width=st.integers(14, 20), planes=st.just(1)), st.data())
def test_an_out_of_focus_highlight_spreads_and_keeps_its_light(device, depth_labels, data):
    """A highlight on a (tilted) surface behind the focus plane becomes a disc: its peak drops
    at least 4x, and away from the border (where the normalisation counts only in-frame
    pixels) the light it carried stays within 10 % (the coc varies across a tilted plane, so
    the normalised weights do not sum exactly to one)."""
    depth, _ = depth_labels
    h, w = depth.shape[-2:]
    focus = float(depth.min()) * 0.5                                   # everything behind focus
    wide = ThinLens(50.0, 1.0, focus, sensor_width_mm=SENSOR_MM)
    lens = ThinLens(50.0, max(float(wide.coc_px(depth, w).min()) / 4.0, 1e-3), focus,
                    sensor_width_mm=SENSOR_MM)                         # every coc >= 4 px
    radius = math.ceil(float(lens.coc_px(depth, w).max()) / 2) + 1
    assume(2 * radius < min(h, w))
    img = data.draw(highlights(h, w, count=st.just(0), background=(0.0, 0.0)))
    y, x = data.draw(st.integers(radius, h - 1 - radius)), data.draw(st.integers(radius, w - 1 - radius))
    img[0, :, y, x] = data.draw(st.floats(5.0, 50.0))
    out = lensblur.render(img.to(device), depth.to(device), lens, method="layered").cpu()
    assert bool(torch.isfinite(out).all())
    assert float(out.max()) <= 0.25 * float(img.max())
    ratio = float(out.sum() / img.sum())
    assert 0.9 <= ratio <= 1.1, ratio
