import math

import pytest
import torch

import lensblur
from lensblur import ThinLens, disparity_coc


def coc_by_hand(f_mm, n, s1, s2, sensor_mm, width_px):
    f = f_mm / 1000
    return f * f / (n * (s1 - f)) * abs(s2 - s1) / s2 / (sensor_mm / 1000) * width_px


class TestThinLens:
    def test_spec_worked_value(self):
        lens = ThinLens(focal_length_mm=50.0, f_number=1.8, focus_distance_m=2.0, sensor_width_mm=36.0)
        assert float(lens.coc_px(4.0, 6000)) == pytest.approx(59.35, abs=0.005)

    @pytest.mark.parametrize("f,n,s1,s2,sensor,w", [
        (35.0, 2.8, 1.5, 0.8, 36.0, 4000), (85.0, 1.4, 3.0, 30.0, 36.0, 1024),
        (24.0, 8.0, 10.0, 10.0, 23.5, 512), (200.0, 4.0, 5.0, 5.5, 36.0, 2048)])
    def test_matches_hand_formula(self, f, n, s1, s2, sensor, w):
        lens = ThinLens(f, n, s1, sensor)
        assert float(lens.coc_px(s2, w)) == pytest.approx(coc_by_hand(f, n, s1, s2, sensor, w), rel=1e-6)

    def test_signed_is_negative_in_front(self):
        lens = ThinLens(50.0, 2.0, 3.0)
        depth = torch.tensor([1.0, 3.0, 9.0])
        signed = lens.coc_px(depth, 1000, signed=True)
        assert signed[0] < 0 and signed[1] == 0 and signed[2] > 0
        torch.testing.assert_close(signed.abs(), lens.coc_px(depth, 1000))

    def test_shape_follows_depth_and_batch_params(self):
        depth = torch.rand(3, 1, 5, 6) * 5 + 1
        f_number = torch.tensor([1.4, 2.8, 5.6])
        lens = ThinLens(50.0, f_number, 2.0)
        coc = lens.coc_px(depth, 6)
        assert coc.shape == depth.shape
        for b in range(3):
            single = ThinLens(50.0, float(f_number[b]), 2.0).coc_px(depth[b:b + 1], 6)
            torch.testing.assert_close(coc[b:b + 1], single)

    @pytest.mark.parametrize("name", ["focal_length_mm", "f_number", "focus_distance_m", "sensor_width_mm"])
    def test_gradient_matches_finite_differences(self, name):
        params = dict(focal_length_mm=50.0, f_number=2.0, focus_distance_m=2.0, sensor_width_mm=36.0)
        depth = torch.tensor([[0.7, 1.3], [3.0, 12.0]], dtype=torch.float64).view(1, 1, 2, 2)

        def f(x):
            kw = dict(params)
            kw[name] = x
            return ThinLens(**kw).coc_px(depth, 640)

        x = torch.tensor(params[name], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (x,))
        # and the gradient is not trivially zero
        (g,) = torch.autograd.grad(f(x).sum(), x)
        assert abs(float(g)) > 1e-6

    def test_gradient_wrt_depth(self):
        lens = ThinLens(50.0, 2.0, 2.0)
        depth = (torch.rand(1, 1, 3, 3, dtype=torch.float64) * 4 + 2.5).requires_grad_()
        assert torch.autograd.gradcheck(lambda d: lens.coc_px(d, 100), (depth,))


class TestDisparityCoc:
    def test_formula(self):
        disp = torch.tensor([0.1, 0.5, 0.9]).view(1, 1, 1, 3)
        torch.testing.assert_close(disparity_coc(disp, 0.5, 20.0), 20.0 * (disp - 0.5).abs())

    def test_agrees_with_thin_lens(self):
        # strength = f^2 S1 / (N (S1 - f)) in pixels, disparity = 1/depth
        f, n, s1, w = 50.0, 2.0, 2.5, 800
        lens = ThinLens(f, n, s1)
        depth = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 10 + 0.5
        fm = f / 1000
        k = fm * fm * s1 / (n * (s1 - fm)) / 0.036 * w
        torch.testing.assert_close(disparity_coc(1 / depth, 1 / s1, k), lens.coc_px(depth, w))

    def test_batched_params(self):
        disp = torch.rand(2, 1, 3, 3) + 0.1
        out = disparity_coc(disp, torch.tensor([0.2, 0.4]), torch.tensor([10.0, 30.0]))
        torch.testing.assert_close(out[1], 30.0 * (disp[1] - 0.4).abs())


def test_exports():
    for name in ("ThinLens", "Aperture", "defocus", "render", "LensBlur", "disparity_coc", "LensBlurError"):
        assert hasattr(lensblur, name)
    assert issubclass(lensblur.LensBlurError, ValueError)
    assert math.isfinite(float(ThinLens().coc_px(1.0, 10)))
