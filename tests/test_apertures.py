import math

import pytest
import torch

from lensblur import Aperture, LensBlurError
from backend_cases import star_kernel


def rotate90(k):
    return torch.rot90(k, 1, (0, 1))


class TestKernel:
    @pytest.mark.parametrize("ap", [Aperture.disk(), Aperture.polygon(6), Aperture.polygon(5, 10, 0.5),
                                    Aperture.from_image(star_kernel())], ids=str)
    @pytest.mark.parametrize("diameter", [0.0, 0.7, 3.0, 8.4, 17.0])
    def test_normalised_and_sized(self, ap, diameter):
        k = ap.kernel(diameter)
        assert k.dim() == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
        assert bool((k >= 0).all())
        # the support matches the diameter: no mass beyond radius + 1 px (anti-aliased rim)
        r = k.shape[0] // 2
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1.0), torch.arange(-r, r + 1.0), indexing="ij")
        reach = (diameter / 2 + 0.5) * ap.reach()
        assert float(k[(xx.abs() > reach + 1e-6) | (yy.abs() > reach + 1e-6)].sum()) == 0.0

    def test_below_one_pixel_is_identity(self):
        assert Aperture.disk().kernel(0.9).shape == (1, 1)

    def test_disk_area_matches_circle(self):
        d = 21.0
        w, _ = Aperture.disk().weight(*torch.meshgrid(torch.arange(-12.0, 13), torch.arange(-12.0, 13),
                                                     indexing="xy"), torch.tensor(d))
        assert float(w.sum()) == pytest.approx(math.pi * (d / 2) ** 2, rel=0.01)

    def test_hexagon_has_sixfold_symmetry_and_is_not_a_disk(self):
        hexa = Aperture.polygon(blades=6).kernel(31.0).double()
        disk = Aperture.disk().kernel(31.0).double()
        # 60° rotation symmetry, checked by sampling the weight function on rotated offsets
        ang = math.pi / 3
        pts = torch.rand(200, 2, dtype=torch.float64) * 30 - 15
        rot = torch.stack([pts[:, 0] * math.cos(ang) - pts[:, 1] * math.sin(ang),
                           pts[:, 0] * math.sin(ang) + pts[:, 1] * math.cos(ang)], 1)
        ap = Aperture.polygon(blades=6)
        c = torch.tensor(31.0, dtype=torch.float64)
        w0, _ = ap.weight(pts[:, 0], pts[:, 1], c)
        w1, _ = ap.weight(rot[:, 0], rot[:, 1], c)
        torch.testing.assert_close(w0, w1)
        # mirror symmetric, but clearly different from a disk
        torch.testing.assert_close(hexa, hexa.flip(0))
        assert float((hexa - disk).abs().sum()) > 0.05
        # a 90° rotation of a hexagon is a different shape (a disk would not change)
        assert float((hexa - rotate90(hexa)).abs().sum()) > 0.05
        assert float((disk - rotate90(disk)).abs().sum()) < 1e-6

    def test_roundness_interpolates_polygon_to_disk(self):
        disk = Aperture.disk().kernel(25.0)
        diffs = [float((Aperture.polygon(5, 0, r).kernel(25.0) - disk).abs().sum()) for r in (0, 0.5, 1)]
        assert diffs[0] > diffs[1] > diffs[2] and diffs[2] < 1e-6

    def test_rotation_rotates(self):
        a = Aperture.polygon(4, 0.0).kernel(21.0)
        b = Aperture.polygon(4, 45.0).kernel(21.0)
        c = Aperture.polygon(4, 90.0).kernel(21.0)
        assert float((a - b).abs().sum()) > 0.1
        torch.testing.assert_close(a, c, atol=1e-6, rtol=0)

    def test_kernel_varies_smoothly_with_diameter(self):
        ap = Aperture.polygon(6)
        d = torch.tensor(12.3, requires_grad=True)
        k = ap.kernel(d)
        (g,) = torch.autograd.grad((k * torch.arange(k.numel()).view_as(k).float()).sum(), d)
        assert g.abs() > 0
        k1, k2 = ap.kernel(12.3), ap.kernel(12.35)
        assert float((k1 - k2).abs().max()) < 5e-4

    def test_squeeze_makes_it_taller_than_wide(self):
        k = Aperture.disk(squeeze=2.0).kernel(21.0)
        rows = (k.sum(1) > 0).sum()
        cols = (k.sum(0) > 0).sum()
        assert rows > 1.6 * cols

    def test_image_kernel_follows_the_image(self):
        tab = torch.zeros(9, 9)
        tab[:, 4] = 1.0  # a vertical bar
        k = Aperture.from_image(tab).kernel(15.0)
        mid = k.shape[1] // 2
        assert float(k[:, mid - 1:mid + 2].sum()) > 0.99
        assert float(k[:, mid].sum()) > 0.45


class TestWeightDerivative:
    @pytest.mark.parametrize("ap", [Aperture.disk(), Aperture.polygon(7, 11, 0.3, squeeze=1.4, cats_eye=0.7),
                                    Aperture.from_image(star_kernel())], ids=str)
    def test_dw_matches_autograd(self, ap):
        g = torch.Generator().manual_seed(0)
        c = (torch.rand(64, generator=g, dtype=torch.float64) * 12).requires_grad_()
        pos = (torch.rand(64, generator=g, dtype=torch.float64) - 0.5,
               torch.rand(64, generator=g, dtype=torch.float64) - 0.5)
        for dx, dy in [(0, 0), (1, 2), (-3, 1), (4, -4), (0, 5)]:
            w, dw = ap.weight(dx, dy, c, pos)
            (auto,) = torch.autograd.grad(w.sum(), c)
            torch.testing.assert_close(dw, auto)


class TestValidation:
    def test_blades(self):
        with pytest.raises(ValueError, match="blades"):
            Aperture.polygon(blades=2)
        with pytest.raises(TypeError, match="blades"):
            Aperture.polygon(blades=5.5)

    def test_roundness(self):
        with pytest.raises(ValueError, match="roundness"):
            Aperture.polygon(6, roundness=1.5)

    def test_negative_image(self):
        with pytest.raises(ValueError, match="kernel"):
            Aperture.from_image(-torch.ones(3, 3))

    def test_image_rank(self):
        with pytest.raises(ValueError, match="kernel"):
            Aperture.from_image(torch.ones(3, 3, 3))

    def test_zero_image(self):
        with pytest.raises(ValueError, match="kernel"):
            Aperture.from_image(torch.zeros(3, 3))

    def test_nan_image(self):
        with pytest.raises(ValueError, match="kernel"):
            Aperture.from_image(torch.full((3, 3), float("nan")))

    def test_integer_image(self):
        with pytest.raises(TypeError, match="kernel"):
            Aperture.from_image(torch.ones(3, 3, dtype=torch.int64))

    def test_squeeze_and_cats_eye(self):
        with pytest.raises(ValueError, match="squeeze"):
            Aperture.disk(squeeze=0.0)
        with pytest.raises(ValueError, match="cats_eye"):
            Aperture.disk(cats_eye=2.0)

    def test_negative_diameter(self):
        with pytest.raises(ValueError, match="diameter_px"):
            Aperture.disk().kernel(-1.0)

    def test_input_not_modified(self):
        tab = torch.rand(5, 5) * 3
        before = tab.clone()
        Aperture.from_image(tab).kernel(7.0)
        assert torch.equal(tab, before)

    def test_is_lensblur_error(self):
        with pytest.raises(LensBlurError):
            Aperture.polygon(blades=1)
