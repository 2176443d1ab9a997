"""Tests for lensblur.augment.RandomDefocus (issue 12). Tiny images: the whole file runs in seconds."""

import pytest
import torch
from torch import nn

import kornia.augmentation as K

import lensblur
from lensblur import Aperture, LensBlurError, ThinLens
from lensblur.augment import DEFAULT_METHOD, RandomDefocus


# Ranges that always give a clearly visible blur on a 24-px-wide frame: coc of several pixels.
STRONG = dict(focal_length_mm=(150.0, 200.0), f_number=(1.4, 2.0), focus_distance_m=(1.0, 1.5),
              depth_range_m=(6.0, 10.0))


def images(b=4, c=3, h=16, w=24, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g, dtype=dtype).to(device)


def plane_depth(params, h, w):
    d = params["plane_distance_m"]
    return d.view(-1, 1, 1, 1).expand(-1, 1, h, w)


class TestRandomDefocus:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_shapes_dtypes_devices(self, device, dtype):
        aug = RandomDefocus(**STRONG, p=1.0)
        x = images(dtype=dtype, device=device)
        out, coc, params = aug(x, return_coc=True, return_params=True)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert coc.shape == (4, 1, 16, 24) and coc.device == x.device
        for k in ("focal_length_mm", "f_number", "focus_distance_m", "aperture_index", "blades",
                  "rotation_deg", "applied"):
            assert params[k].shape == (4,) and params[k].device == x.device, k
        assert aug(x).shape == x.shape  # plain call returns the image only

    def test_parameter_ranges_respected(self):
        aug = RandomDefocus(focal_length_mm=(30.0, 60.0), f_number=(2.0, 4.0), focus_distance_m=(1.0, 3.0),
                            aperture=("disk", "polygon", Aperture.polygon(blades=3)), blades=(5, 7),
                            rotation_deg=(-20.0, 10.0), depth_range_m=(2.0, 5.0), focus_point=None)
        torch.manual_seed(0)
        p = aug.forward_parameters((256, 3, 8, 8))
        for key, (lo, hi) in dict(focal_length_mm=(30.0, 60.0), f_number=(2.0, 4.0), focus_distance_m=(1.0, 3.0),
                                  rotation_deg=(-20.0, 10.0), plane_distance_m=(2.0, 5.0)).items():
            v = p[key]
            assert bool((v >= lo).all()) and bool((v <= hi).all()), key
            assert float(v.max() - v.min()) > 0.8 * (hi - lo), key  # the whole range is used
        assert set(p["blades"].tolist()) == {5, 6, 7}
        assert set(p["aperture_index"].tolist()) == {0, 1, 2}
        # and the parameters returned by a real call are the drawn ones
        x = images(b=3, h=8, w=8)
        _, params = aug(x, params=p_slice(p, 3), return_params=True)
        for key in ("focal_length_mm", "f_number", "focus_distance_m"):
            torch.testing.assert_close(params[key], p[key][:3].float())

    def test_p0_returns_input_unchanged(self, device):
        x = images(device=device)
        aug = RandomDefocus(**STRONG, p=0.0)
        out, coc, params = aug(x, return_coc=True, return_params=True)
        assert torch.equal(out, x)
        assert torch.equal(coc, torch.zeros_like(coc))
        assert not params["applied"].any()

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_p1_always_changes(self, device, seed):
        x = images(b=6, seed=seed, device=device)
        torch.manual_seed(seed)
        aug = RandomDefocus(**STRONG, p=1.0)
        out, coc = aug(x, return_coc=True)
        assert bool((coc.amin(dim=(1, 2, 3)) > 2.0).all())
        change = (out - x).abs().amax(dim=(1, 2, 3))
        assert bool((change > 0.05).all()), change

    def test_p_half_mixes_and_skipped_rows_are_untouched(self, device):
        x = images(b=16, h=8, w=8, device=device)
        torch.manual_seed(3)
        aug = RandomDefocus(**STRONG, p=0.5)
        out, coc, params = aug(x, return_coc=True, return_params=True)
        applied = params["applied"]
        assert 0 < int(applied.sum()) < 16
        assert torch.equal(out[~applied], x[~applied])
        assert bool((coc[~applied] == 0).all()) and bool((coc[applied] > 0).all())
        assert bool(((out[applied] - x[applied]).abs().amax(dim=(1, 2, 3)) > 0.02).all())

    def test_seeded_determinism(self, device):
        x = images(device=device)
        aug = RandomDefocus(**STRONG, p=0.7)
        runs = []
        for seed in (5, 5, 6):
            torch.manual_seed(seed)
            runs.append(aug(x, return_params=True))
        assert torch.equal(runs[0][0], runs[1][0])
        assert torch.equal(runs[0][1]["f_number"], runs[1][1]["f_number"])
        assert not torch.equal(runs[0][1]["f_number"], runs[2][1]["f_number"])

    def test_generator_seeding_ignores_global_state(self, device):
        x = images(device=device)
        outs = []
        for global_seed in (0, 1):
            torch.manual_seed(global_seed)
            aug = RandomDefocus(**STRONG, p=0.5, generator=torch.Generator().manual_seed(7))
            outs.append(aug(x, return_params=True))
        assert torch.equal(outs[0][0], outs[1][0])
        assert torch.equal(outs[0][1]["applied"], outs[1][1]["applied"])
        assert torch.equal(outs[0][1]["focus_distance_m"], outs[1][1]["focus_distance_m"])

    def test_replay_params(self, device):
        x = images(device=device)
        aug = RandomDefocus(**STRONG, p=0.5)
        torch.manual_seed(0)
        out = aug(x)
        assert torch.equal(aug(x, params=aug._params), out)

    @pytest.mark.parametrize("signed", [False, True])
    def test_coc_matches_thin_lens(self, signed):
        x = images(b=5)
        aug = RandomDefocus(focal_length_mm=(35.0, 200.0), f_number=(1.4, 8.0), focus_distance_m=(1.0, 10.0),
                            depth_range_m=(0.5, 20.0), signed_coc=signed, sensor_width_mm=24.0, p=1.0)
        torch.manual_seed(1)
        _, coc, p = aug(x, return_coc=True, return_params=True)
        lens = ThinLens(p["focal_length_mm"], p["f_number"], p["focus_distance_m"], sensor_width_mm=24.0)
        expected = lens.coc_px(plane_depth(p, 16, 24).float(), 24, signed=signed)
        torch.testing.assert_close(coc, expected)
        # and by hand for image 0, thin-lens formula in metres
        f, n, s1, s2 = (float(p[k][0]) for k in ("focal_length_mm", "f_number", "focus_distance_m",
                                                   "plane_distance_m"))
        f /= 1000.0
        c = f * f / (n * (s1 - f)) * (s2 - s1) / s2 / 0.024 * 24
        assert float(coc[0, 0, 0, 0]) == pytest.approx(c if signed else abs(c), rel=1e-4)

    def test_output_is_the_render_of_returned_params(self):
        x = images(b=4)
        torch.manual_seed(2)
        depth = 0.8 + 9.0 * torch.rand(4, 1, 16, 24)
        aug = RandomDefocus(**STRONG, aperture=("disk", "polygon"), blades=(5, 6), rotation_deg=(0.0, 30.0), p=1.0)
        out, coc, p = aug(x, depth, return_coc=True, return_params=True)
        assert len(set(p["aperture_index"].tolist())) == 2
        for i in range(4):
            lens = ThinLens(p["focal_length_mm"][i:i + 1], p["f_number"][i:i + 1], p["focus_distance_m"][i:i + 1])
            ref = lensblur.render(x[i:i + 1], depth[i:i + 1], lens, aug.aperture_for(p, i), method=DEFAULT_METHOD)
            torch.testing.assert_close(out[i:i + 1], ref)
            torch.testing.assert_close(coc[i:i + 1], lens.coc_px(depth[i:i + 1], 24))

    def test_passed_depth_is_used_and_not_modified(self):
        x = images(b=2)
        depth = torch.linspace(1.0, 8.0, 24).expand(2, 1, 16, 24).contiguous()
        x0, d0 = x.clone(), depth.clone()
        aug = RandomDefocus(**STRONG, p=1.0)
        _, coc, p = aug(x, depth, return_coc=True, return_params=True)
        torch.testing.assert_close(coc, aug.lens(p).coc_px(depth, 24))
        assert torch.equal(x, x0) and torch.equal(depth, d0)

    def test_focus_point_puts_that_pixel_in_focus(self):
        x = images(b=4, h=16, w=16)
        depth = torch.linspace(1.0, 6.0, 16).view(1, 1, 16, 1).expand(4, 1, 16, 16).contiguous()
        aug = RandomDefocus(focal_length_mm=200.0, f_number=1.4, focus_distance_m=(0.5, 50.0),
                            focus_point=((0.0, 1.0), (0.2, 0.8)), p=1.0)
        torch.manual_seed(4)
        _, coc, p = aug(x, depth, return_coc=True, return_params=True)
        fp = p["focus_point"]
        assert bool((fp[:, 1] >= 0.2).all()) and bool((fp[:, 1] <= 0.8).all())
        for i in range(4):
            xs, ys = int(round(float(fp[i, 0]) * 15)), int(round(float(fp[i, 1]) * 15))
            assert float(p["focus_distance_m"][i]) == pytest.approx(float(depth[i, 0, ys, xs]))
            assert float(coc[i, 0, ys, xs]) == pytest.approx(0.0, abs=1e-4)
            assert float(coc[i].max()) > 1.0

    def test_focus_point_is_clamped_to_focus_range(self):
        x = images(b=2, h=8, w=8)
        depth = torch.full((2, 1, 8, 8), 30.0)
        aug = RandomDefocus(focal_length_mm=50.0, f_number=2.0, focus_distance_m=(1.0, 5.0), focus_point=True, p=1.0)
        _, p = aug(x, depth, return_params=True)
        assert torch.equal(p["focus_distance_m"], torch.full((2,), 5.0))

    def test_ramp_prior(self):
        x = images(b=1, h=9, w=12)
        aug = RandomDefocus(focal_length_mm=100.0, f_number=2.0, focus_distance_m=3.0, depth_prior="ramp",
                            depth_range_m=(1.0, 25.0), p=1.0)
        _, coc, p = aug(x, return_coc=True, return_params=True)
        # inverse depth linear from 1/25 (top row) to 1/1 (bottom row)
        depth = 1.0 / torch.linspace(1 / 25.0, 1.0, 9).view(1, 1, 9, 1).expand(1, 1, 9, 12)
        torch.testing.assert_close(coc, aug.lens(p).coc_px(depth, 12))
        assert torch.equal(coc[..., :1, :], coc[..., :1, :1].expand(1, 1, 1, 12))  # rows are constant

    def test_callable_prior(self):
        seen = []

        def prior(img):
            seen.append(img.shape)
            return 1.0 + img[:, :1] * 10.0

        x = images(b=2, h=8, w=8)
        aug = RandomDefocus(**{**STRONG, "depth_range_m": 1.0}, depth_prior=prior, p=1.0)
        _, coc, p = aug(x, return_coc=True, return_params=True)
        assert seen == [(2, 3, 8, 8)]
        torch.testing.assert_close(coc, aug.lens(p).coc_px(1.0 + x[:, :1] * 10.0, 8))
        bad = RandomDefocus(depth_prior=lambda img: -torch.ones_like(img[:, :1]), p=1.0)
        with pytest.raises(LensBlurError, match="depth_prior"):
            bad(x)

    def test_same_on_batch(self):
        x = images(b=1).expand(5, -1, -1, -1).contiguous()
        aug = RandomDefocus(**STRONG, same_on_batch=True, p=0.5, rotation_deg=(0.0, 45.0))
        for seed in range(4):
            torch.manual_seed(seed)
            out, p = aug(x, return_params=True)
            for k, v in p.items():
                assert bool((v == v[:1]).all()), k
            assert bool((out == out[:1]).all())

    def test_keepdim_3d_input(self):
        x = images(b=1)[0]
        depth = torch.full((16, 24), 8.0)
        kept = RandomDefocus(**STRONG, p=1.0, keepdim=True)
        out, coc = kept(x, depth, return_coc=True)
        assert out.shape == (3, 16, 24) and coc.shape == (1, 16, 24)
        batched = RandomDefocus(**STRONG, p=1.0, keepdim=False)
        out, coc = batched(x, depth, return_coc=True)
        assert out.shape == (1, 3, 16, 24) and coc.shape == (1, 1, 16, 24)

    def test_inside_augmentation_sequential_with_flip(self):
        x = images(b=3)
        mask = (torch.rand(3, 1, 16, 24) > 0.5).float()
        defocus = RandomDefocus(**STRONG, aperture="disk", depth_prior="ramp", p=1.0)
        seq = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), defocus, data_keys=["input", "mask"])
        torch.manual_seed(0)
        out, mask_out = seq(x, mask)
        assert torch.equal(mask_out, mask.flip(-1))  # the mask is flipped, never blurred
        flipped = x.flip(-1)
        assert torch.equal(out, defocus(flipped, params=defocus._params))
        assert not torch.allclose(out, flipped, atol=1e-2)
        # a disk on a vertical ramp is mirror symmetric: blurring commutes with the flip
        torch.testing.assert_close(out, defocus(x, params=defocus._params).flip(-1), atol=1e-5, rtol=1e-5)

    def test_depth_recipe_with_sequential_geometry(self):
        # geometric augmentations move image and depth together; then the defocus uses that depth
        x = images(b=2)
        depth = torch.linspace(1.0, 9.0, 24).expand(2, 1, 16, 24).contiguous()
        geo = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), data_keys=["input", "mask"])
        img2, depth2 = geo(x, depth)
        aug = RandomDefocus(**STRONG, p=1.0)
        _, coc, p = aug(img2, depth2, return_coc=True, return_params=True)
        torch.testing.assert_close(coc, aug.lens(p).coc_px(depth.flip(-1), 24))

    def test_plain_compose_and_no_grad(self):
        class Compose:  # torchvision-style
            def __init__(self, transforms):
                self.transforms = transforms

            def __call__(self, x):
                for t in self.transforms:
                    x = t(x)
                return x

        aug = RandomDefocus(**STRONG, p=1.0, keepdim=True)
        x = images(b=1)[0]
        torch.manual_seed(0)
        with torch.no_grad():
            a = Compose([lambda t: t * 0.5, aug])(x)
        torch.manual_seed(0)
        b = nn.Sequential(nn.Identity(), aug)(x * 0.5)
        assert a.shape == (3, 16, 24) and not a.requires_grad
        assert torch.equal(a, b)

    def test_differentiable_wrt_image(self):
        x = images(b=2, h=8, w=8, dtype=torch.float64).requires_grad_()
        out = RandomDefocus(**STRONG, p=1.0)(x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0

    @pytest.mark.parametrize("kwargs, name, exc", [
        (dict(focal_length_mm=(85.0, 24.0)), "focal_length_mm", LensBlurError),
        (dict(focal_length_mm=(0.0, 24.0)), "focal_length_mm", LensBlurError),
        (dict(f_number=(-1.0, 2.0)), "f_number", LensBlurError),
        (dict(f_number="wide"), "f_number", TypeError),
        (dict(focus_distance_m=(0.05, 2.0)), "focus_distance_m", LensBlurError),
        (dict(focus_distance_m=(3.0, 1.0)), "focus_distance_m", LensBlurError),
        (dict(blades=(2, 6)), "blades", LensBlurError),
        (dict(blades=(5.5, 6)), "blades", TypeError),
        (dict(aperture="star"), "aperture", LensBlurError),
        (dict(aperture=[]), "aperture", TypeError),
        (dict(depth_prior="sky"), "depth_prior", LensBlurError),
        (dict(depth_range_m=(-1.0, 2.0)), "depth_range_m", LensBlurError),
        (dict(depth_range_m=(float("nan"), 2.0)), "depth_range_m", LensBlurError),
        (dict(focus_point=((0.0, 1.5), (0.0, 1.0))), "focus_point", LensBlurError),
        (dict(p=1.5), "p", LensBlurError),
        (dict(method="blur"), "method", LensBlurError),
        (dict(backend="cuda"), "backend", LensBlurError),
        (dict(sensor_width_mm=0.0), "sensor_width_mm", LensBlurError),
        (dict(gamma=0.0), "gamma", LensBlurError),
        (dict(generator=0), "generator", TypeError),
    ])
    def test_invalid_arguments(self, kwargs, name, exc):
        with pytest.raises(exc, match=f"`{name}`"):
            RandomDefocus(**kwargs)

    def test_invalid_depth(self):
        aug = RandomDefocus(p=1.0)
        x = images(b=2, h=8, w=8)
        with pytest.raises(LensBlurError, match="`depth`"):
            aug(x, torch.full((2, 1, 8, 8), -1.0))
        with pytest.raises(LensBlurError, match="`depth`"):
            aug(x, torch.full((3, 1, 8, 8), 2.0))
        with pytest.raises(LensBlurError, match="`depth`"):
            aug(x, torch.full((2, 2, 8, 8), 2.0))
        with pytest.raises(TypeError, match="`depth`"):
            aug(x, [[1.0]])


def p_slice(params, n):
    return {k: v[:n] for k, v in params.items() if k not in ("forward_input_shape",)}


class TestDatasetExample:
    def test_builds_defocused_sharp_coc_triplets(self, tmp_path):
        import importlib.util
        import json
        from pathlib import Path

        import numpy as np
        from PIL import Image

        path = Path(__file__).resolve().parents[1] / "examples" / "make_defocus_dataset.py"
        spec = importlib.util.spec_from_file_location("make_defocus_dataset", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)

        src, dep, out = tmp_path / "img", tmp_path / "depth", tmp_path / "out"
        src.mkdir(), dep.mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(src / "a.png")
        Image.fromarray(rng.integers(0, 255, (26, 16, 3), dtype=np.uint8)).save(src / "b.jpg")
        np.save(dep / "a.npy", np.linspace(1.0, 9.0, 600, dtype=np.float32).reshape(20, 30))
        args = ["--images", str(src), "--out", str(out), "--depth", str(dep), "--size", "12", "--samples", "2",
                "--focal-length", "150", "200", "--f-number", "1.4", "2", "--focus", "1", "1.5", "--seed", "3"]
        assert mod.main(args) == 0
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and {r["depth"] for r in rows} == {"map", "ramp"}
        for r in rows:
            sharp = np.asarray(Image.open(out / r["sharp"]))
            blurred = np.asarray(Image.open(out / r["defocused"]))
            coc = np.load(out / r["coc"])
            assert sharp.shape == blurred.shape == (12, 12, 3) and coc.shape == (12, 12)
            assert np.abs(sharp.astype(int) - blurred.astype(int)).max() > 10   # visibly blurred
            assert 150 <= r["focal_length_mm"] <= 200 and 1.4 <= r["f_number"] <= 2
            if r["depth"] == "map":   # the coc is the thin lens's for the (resized) depth map
                depth = mod.resize_crop(lensblur.io.read_depth(dep / "a.npy"), 12, "nearest")
                lens = ThinLens(r["focal_length_mm"], r["f_number"], r["focus_distance_m"])
                np.testing.assert_allclose(coc, lens.coc_px(depth, 12)[0, 0].numpy(), rtol=1e-4)
        # the same seed gives the same data set
        assert mod.main(args[:3] + [str(tmp_path / "again")] + args[4:]) == 0
        assert (tmp_path / "again" / "metadata.jsonl").read_text() == (out / "metadata.jsonl").read_text()
