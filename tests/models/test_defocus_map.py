"""defocus_map / blur_strength_from_lens / focus_disparity_at (SPEC fixed entry points)."""

import math

import pytest
import torch

import lensblur
from lensblur import LensBlurError, ThinLens
from lensblur_models.defocus_map import blur_strength_from_lens, defocus_map, focus_disparity_at


def _analytic_k(f_mm, n, s1, sensor_mm, width):
    f = f_mm / 1000.0
    return f * f * s1 / (n * (s1 - f)) * width / (sensor_mm / 1000.0)


class TestDefocusMap:
    def test_formula_by_hand(self):
        d = torch.tensor([0.1, 0.25, 0.5, 2.0], dtype=torch.float64).view(1, 1, 2, 2)
        out = defocus_map(d, 0.5, 8.0)
        assert out.shape == d.shape and out.dtype == torch.float64
        assert out.flatten().tolist() == pytest.approx([3.2, 2.0, 0.0, 12.0])

    def test_per_batch_parameters(self):
        d = torch.full((2, 1, 3, 3), 1.0)
        out = defocus_map(d, torch.tensor([0.5, 1.5]), torch.tensor([10.0, 4.0]))
        assert torch.allclose(out[0], torch.full((1, 3, 3), 5.0))
        assert torch.allclose(out[1], torch.full((1, 3, 3), 2.0))

    def test_clamping(self):
        torch.manual_seed(0)
        d = torch.rand(2, 1, 8, 8) + 0.05
        raw = defocus_map(d, 0.3, 50.0)
        clamped = defocus_map(d, 0.3, 50.0, max_px=10.0)
        assert float(raw.max()) > 10.0  # the clamp is active somewhere
        assert float(clamped.max()) == pytest.approx(10.0)
        keep = raw <= 10.0
        assert torch.equal(clamped[keep], raw[keep])
        per_batch = defocus_map(d, 0.3, 50.0, max_px=torch.tensor([4.0, 20.0]))
        assert float(per_batch[0].max()) <= 4.0 and float(per_batch[1].max()) <= 20.0
        assert torch.equal(per_batch[1], torch.minimum(raw[1], torch.tensor(20.0)))

    def test_gradient_zero_where_clamped(self):
        d = torch.tensor([[[[0.2, 1.0]]]], requires_grad=True)
        k = torch.tensor(10.0, requires_grad=True)
        defocus_map(d, 0.1, k, max_px=5.0).sum().backward()
        assert d.grad.flatten().tolist() == pytest.approx([10.0, 0.0])
        assert float(k.grad) == pytest.approx(0.1)

    def test_inputs_not_modified(self):
        d = torch.rand(1, 1, 4, 4) + 0.1
        before = d.clone()
        defocus_map(d, 0.2, 3.0, max_px=1.0)
        assert torch.equal(d, before)

    @pytest.mark.parametrize("kwargs, exc, name", [
        (dict(disparity=-torch.ones(1, 1, 2, 2), focus_disparity=0.1, strength=1.0), ValueError, "disparity"),
        (dict(disparity=torch.ones(1, 2, 2), focus_disparity=0.1, strength=1.0), ValueError, "disparity"),
        (dict(disparity=torch.ones(1, 1, 2, 2, dtype=torch.int32), focus_disparity=0.1, strength=1.0),
         TypeError, "disparity"),
        (dict(disparity=torch.ones(1, 1, 2, 2), focus_disparity=-0.1, strength=1.0), ValueError, "focus_disparity"),
        (dict(disparity=torch.ones(1, 1, 2, 2), focus_disparity=0.1, strength=-1.0), ValueError, "strength"),
        (dict(disparity=torch.ones(1, 1, 2, 2), focus_disparity=0.1, strength=float("nan")), ValueError, "strength"),
        (dict(disparity=torch.ones(1, 1, 2, 2), focus_disparity=0.1, strength=1.0, max_px=0.0), ValueError, "max_px"),
        (dict(disparity=torch.ones(1, 1, 2, 2), focus_disparity=0.1, strength=1.0, max_px="5"), TypeError, "max_px"),
        (dict(disparity=torch.ones(2, 1, 2, 2), focus_disparity=0.1, strength=1.0,
              max_px=torch.ones(3)), ValueError, "max_px"),
    ])
    def test_bad_input(self, kwargs, exc, name):
        with pytest.raises(exc, match=name):
            defocus_map(**kwargs)


class TestBlurStrength:
    def test_spec_identity_with_thin_lens(self):
        torch.manual_seed(1)
        depth = torch.rand(2, 1, 6, 7, dtype=torch.float64) * 20 + 0.3
        for f_mm, n, s1, sensor, width in [(50.0, 1.8, 2.0, 36.0, 6000), (85.0, 1.4, 1.2, 36.0, 64),
                                            (24.0, 8.0, 10.0, 23.5, 333)]:
            lens = ThinLens(f_mm, n, s1, sensor_width_mm=sensor)
            k = blur_strength_from_lens(lens, width)
            dm = defocus_map(1.0 / depth, 1.0 / s1, k)
            coc = lens.coc_px(depth, width)
            torch.testing.assert_close(dm, coc, rtol=1e-10, atol=1e-9)
            # independent closed form, K = f^2 S1 / (N (S1 - f)) * W / sensor
            assert float(k) == pytest.approx(_analytic_k(f_mm, n, s1, sensor, width), rel=1e-12)

    def test_worked_value(self):
        lens = ThinLens(50.0, 1.8, 2.0)
        k = blur_strength_from_lens(lens, 6000)
        assert float(k) * abs(1 / 4.0 - 1 / 2.0) == pytest.approx(59.35, abs=0.01)

    def test_per_batch_lens_and_gradient(self):
        f = torch.tensor([35.0, 50.0], dtype=torch.float64, requires_grad=True)
        s1 = torch.tensor([1.5, 3.0], dtype=torch.float64, requires_grad=True)
        lens = ThinLens(f, 2.0, s1)
        k = blur_strength_from_lens(lens, 128)
        assert k.shape == (2,)
        depth = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 5 + 0.5
        dm = defocus_map(1.0 / depth, 1.0 / s1, k)
        torch.testing.assert_close(dm, lens.coc_px(depth, 128), rtol=1e-10, atol=1e-9)
        # gradient of K w.r.t. focus distance matches the closed form's derivative
        k.sum().backward()
        fm = f.detach() / 1000
        s = s1.detach()
        dk_ds = (fm ** 2 / 2.0) * (-fm / (s - fm) ** 2) * 128 / 0.036
        torch.testing.assert_close(s1.grad, dk_ds, rtol=1e-8, atol=1e-12)

    def test_broadcast_float_focus_with_batched_focal_length(self):
        lens = ThinLens(torch.tensor([35.0, 50.0]), 2.0, 3.0)
        k = blur_strength_from_lens(lens, 100)
        expected = [_analytic_k(f, 2.0, 3.0, 36.0, 100) for f in (35.0, 50.0)]
        assert k.tolist() == pytest.approx(expected, rel=1e-5)

    def test_bad_input(self):
        with pytest.raises(TypeError, match="lens"):
            blur_strength_from_lens("50mm", 100)
        with pytest.raises(ValueError, match="image_width_px"):
            blur_strength_from_lens(ThinLens(), 0)
        with pytest.raises(ValueError, match="image_width_px"):
            blur_strength_from_lens(ThinLens(), 12.5)


class TestFocusDisparityAt:
    def test_reads_the_clicked_pixel(self):
        d = torch.arange(1.0, 31.0).view(1, 1, 5, 6)
        assert focus_disparity_at(d, (4, 2), window=1).tolist() == [17.0]
        # median of the 3x3 window around (4, 2) is the centre of an arithmetic grid
        assert focus_disparity_at(d, (4, 2), window=3).tolist() == [17.0]

    def test_per_batch_points(self):
        d = torch.stack([torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 2.0)])
        d[1, 0, 3, 0] = 9.0
        out = focus_disparity_at(d, torch.tensor([[0.0, 0.0], [0.0, 3.0]]), window=1)
        assert out.tolist() == [1.0, 9.0]

    def test_bad_input(self):
        d = torch.ones(1, 1, 4, 4)
        with pytest.raises(ValueError, match="focus_xy"):
            focus_disparity_at(d, (4, 0))
        with pytest.raises(TypeError, match="focus_xy"):
            focus_disparity_at(d, 3)
        with pytest.raises(ValueError, match="window"):
            focus_disparity_at(d, (1, 1), window=2)
        with pytest.raises(ValueError, match="disparity"):
            focus_disparity_at(torch.zeros(1, 1, 4, 4), (1, 1))
