"""Blur Monotonicity (SPEC: lensblur_models.blur_monotonicity) and its sharpness measure."""

import pytest
import torch

import lensblur
from lensblur.scene import make_scene
from lensblur_models import blur_monotonicity
from lensblur_models.metrics import laplacian_sharpness

SWEEP = (1.8, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, 22.0)  # f/1.8 ... f/22, full stops


@pytest.fixture(scope="module")
def scene():
    torch.manual_seed(0)
    img, depth = make_scene(24, 32, seed=0)
    background = (depth > 6.0).float()
    return img, depth, background


def physical_sweep(img, depth, f_numbers, ignore_f_number=False, backend="torch"):
    # a 200 mm lens focused on the nearest sphere: the background (>= 6 m) stays > 1 px blurred
    # even at f/22 (about 1.1 px at 32 px width), so every stop changes it
    out = []
    for n in f_numbers:
        lens = lensblur.ThinLens(200.0, f_numbers[0] if ignore_f_number else n, 1.4)
        out.append(lensblur.render(img, depth, lens, method="gather", backend=backend))
    return torch.stack(out)


class TestBlurMonotonicity:
    def test_physical_renderer_scores_100(self, scene):
        img, depth, bg = scene
        coc22 = lensblur.ThinLens(200.0, 22.0, 1.4).coc_px(depth, 32)
        assert float(coc22[bg > 0].min()) > 1.0  # the premise of the test
        renders = physical_sweep(img, depth, SWEEP)
        assert blur_monotonicity(renders, SWEEP, region=bg) == 100.0
        # order of the sweep does not matter: the metric sorts by f-number
        perm = [3, 0, 7, 5, 1, 6, 2, 4]
        assert blur_monotonicity(renders[perm], [SWEEP[i] for i in perm], region=bg) == 100.0
        # a sweep listed with the f-numbers reversed is physically backwards: 0
        assert blur_monotonicity(renders, SWEEP[::-1], region=bg) == 0.0

    def test_renderer_ignoring_f_number_scores_low(self, scene):
        img, depth, bg = scene
        renders = physical_sweep(img, depth, SWEEP, ignore_f_number=True)
        assert blur_monotonicity(renders, SWEEP, region=bg) <= 10.0

    def test_counts_steps_over_batch(self):
        # two scenes, three f-numbers; scene 0 sharpens at both steps, scene 1 only at the first
        base = torch.zeros(1, 1, 8, 8)
        base[..., ::2, :] = 1.0
        contrast = torch.tensor([[0.2, 0.2], [0.5, 0.6], [0.9, 0.4]])  # (S, B)
        renders = torch.stack([torch.cat([base * c for c in row]) for row in contrast])
        assert blur_monotonicity(renders, [2.0, 4.0, 8.0]) == pytest.approx(75.0)

    def test_region_selects_the_area(self):
        # left half sharpens with N, right half blurs: region decides the score
        torch.manual_seed(1)
        tex = torch.rand(1, 1, 8, 16)
        gains = [(0.2, 1.0), (0.6, 0.6), (1.0, 0.2)]
        renders = torch.stack([torch.cat([tex[..., :8] * a, tex[..., 8:] * b], dim=-1) for a, b in gains])
        left = torch.zeros(1, 1, 8, 16)
        left[..., :7] = 1.0
        right = torch.zeros(1, 1, 8, 16)
        right[..., 9:] = 1.0
        assert blur_monotonicity(renders, [1.8, 4.0, 11.0], region=left) == 100.0
        assert blur_monotonicity(renders, [1.8, 4.0, 11.0], region=right) == 0.0

    def test_bad_input(self):
        r = torch.rand(3, 1, 1, 8, 8)
        with pytest.raises(ValueError, match="renders"):
            blur_monotonicity(torch.rand(3, 1, 8, 8), [1, 2, 3])
        with pytest.raises(ValueError, match="S >= 2"):
            blur_monotonicity(r[:1], [1.0])
        with pytest.raises(TypeError, match="renders"):
            blur_monotonicity(r.long(), [1, 2, 3])
        with pytest.raises(ValueError, match="B >= 1"):
            blur_monotonicity(r[:, :0], [1, 2, 3])
        with pytest.raises(ValueError, match="f_numbers"):
            blur_monotonicity(r, [1.0, 2.0])
        with pytest.raises(ValueError, match="distinct"):
            blur_monotonicity(r, [1.0, 2.0, 2.0])
        with pytest.raises(ValueError, match="f_numbers"):
            blur_monotonicity(r, [1.0, -2.0, 3.0])
        with pytest.raises(ValueError, match="region"):
            blur_monotonicity(r, [1, 2, 3], region=torch.ones(1, 1, 4, 4))
        with pytest.raises(ValueError, match="region"):
            blur_monotonicity(r, [1, 2, 3], region=torch.zeros(1, 1, 8, 8))
        bad = r.clone()
        bad[0, 0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            blur_monotonicity(bad, [1, 2, 3])


def test_laplacian_sharpness_falls_with_blur():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 16, 16)
    coc = torch.full((1, 1, 16, 16), 1.0)
    values = [float(laplacian_sharpness(lensblur.defocus(img, coc * c, backend="torch"))) for c in (0, 2, 4, 6)]
    assert all(a > b for a, b in zip(values, values[1:]))
    region = torch.zeros(1, 1, 16, 16)
    region[..., 4:8, 4:8] = 1
    x = img.clone()
    x[..., 4:8, 4:8] = 0.5  # flat patch (away from its border the Laplacian is zero)
    inner = torch.zeros(1, 1, 16, 16)
    inner[..., 5:7, 5:7] = 1
    assert float(laplacian_sharpness(x, inner)) == 0.0
