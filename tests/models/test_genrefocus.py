"""Generative refocusing (issue 10): DeblurNet, BokehNet, data, refocus pipeline, FLUX adapter."""

import pytest
import torch
import torch.nn.functional as F

import lensblur
from lensblur import Aperture, ThinLens
from lensblur_models import blur_strength_from_lens
from lensblur_models.genrefocus import (BokehNet, BokehNetConfig, DeblurNet, DeblurNetConfig, PhysicalBokeh,
                                        RefocusData, RefocusPipeline, aperture_tokens, eval_loss,
                                        evaluate_refocus, image_metrics, make_refocus_set, refocus, train)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny networks: thread start-up dominates; one thread is several times faster on a shared CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _wake(net, seed=0):
    """Give the zero-initialised (adaLN-zero, head) layers small random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def _lap_energy(img):
    gray = img.mean(1, keepdim=True)
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(gray, k) ** 2  # valid region: (H-2, W-2)


# ---------------------------------------------------------------------------------- tokens
class TestApertureTokens:
    def test_shape_and_range(self):
        tok = aperture_tokens([Aperture.disk(), Aperture.polygon(5)], size=16, patch=4)
        assert tok.shape == (2, 16, 16)
        assert float(tok.min()) >= 0 and float(tok.amax(dim=(1, 2)).min()) == pytest.approx(1.0)

    def test_disk_vs_hexagon(self):
        disk = aperture_tokens(Aperture.disk())
        hexa = aperture_tokens(Aperture.polygon(6))
        assert (disk - hexa).abs().sum() > 1.0
        # a hexagon turned by 60 degrees is the same hexagon; by 30 degrees it is not
        hexa60 = aperture_tokens(Aperture.polygon(6, rotation_deg=60.0))
        hexa30 = aperture_tokens(Aperture.polygon(6, rotation_deg=30.0))
        torch.testing.assert_close(hexa60, hexa, atol=1e-4, rtol=0)
        assert (hexa30 - hexa).abs().sum() > 1.0
        # None means a disk
        torch.testing.assert_close(aperture_tokens(None), disk)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="patch"):
            aperture_tokens(Aperture.disk(), size=16, patch=5)
        with pytest.raises(TypeError, match="aperture"):
            aperture_tokens("hexagon")
        with pytest.raises(ValueError, match="batch"):
            aperture_tokens([Aperture.disk()], batch=2)


# ---------------------------------------------------------------------------------- networks
class TestNetworks:
    @pytest.mark.parametrize("head_channels", [16, 0])
    def test_identity_at_init_any_size(self, head_channels):
        img = torch.rand(2, 3, 10, 14)
        net = DeblurNet.from_config(DeblurNetConfig(dim=32, heads=2, depth=1, head_channels=head_channels))
        torch.testing.assert_close(net(img), img, rtol=0, atol=0)
        bnet = BokehNet.from_config(BokehNetConfig.tiny())
        assert bnet(img, torch.rand(2, 1, 10, 14), None).shape == img.shape

    def test_aperture_tokens_change_bokeh_output(self):
        torch.manual_seed(0)
        net = _wake(BokehNet.from_config(BokehNetConfig.tiny()))
        aif, dmap = torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16) * 6
        with torch.no_grad():
            disk = net(aif, dmap, Aperture.disk())
            disk2 = net(aif, dmap, None)
            hexa = net(aif, dmap, Aperture.polygon(6))
            per_item = net(aif.expand(2, -1, -1, -1), dmap.expand(2, -1, -1, -1),
                           [Aperture.disk(), Aperture.polygon(6)])
        torch.testing.assert_close(disk, disk2)
        assert (disk - hexa).abs().max() > 1e-4
        torch.testing.assert_close(per_item, torch.cat([disk, hexa]), atol=1e-5, rtol=1e-5)

    def test_bad_input(self):
        net, bnet = DeblurNet.from_config(DeblurNetConfig.tiny()), BokehNet.from_config(BokehNetConfig.tiny())
        with pytest.raises(ValueError, match="image"):
            net(torch.rand(1, 1, 8, 8))
        with pytest.raises(TypeError, match="image"):
            net(torch.ones(1, 3, 8, 8, dtype=torch.int64))
        with pytest.raises(ValueError, match="defocus_map"):
            bnet(torch.rand(1, 3, 8, 8), -torch.ones(1, 1, 8, 8))
        with pytest.raises(ValueError, match="defocus_map"):
            bnet(torch.rand(1, 3, 8, 8), torch.ones(1, 1, 8, 6))
        with pytest.raises(ValueError, match="aperture"):
            bnet(torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8), [Aperture.disk()])
        with pytest.raises(ValueError, match="steps"):
            net(torch.rand(1, 3, 8, 8), steps=0)
        with pytest.raises(TypeError, match="config"):
            BokehNet.from_config(DeblurNetConfig.tiny())
        with pytest.raises(ValueError, match="dim"):
            DeblurNet.from_config(DeblurNetConfig(dim=30, heads=2))
        with pytest.raises(ValueError, match="head_channels"):
            DeblurNet.from_config(DeblurNetConfig(head_channels=-1))

    def test_inputs_not_modified(self):
        bnet = _wake(BokehNet.from_config(BokehNetConfig.tiny()))
        aif, dmap = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
        a0, d0 = aif.clone(), dmap.clone()
        bnet(aif, dmap, Aperture.polygon(5), steps=2)
        assert torch.equal(aif, a0) and torch.equal(dmap, d0)

    @pytest.mark.parametrize("cls, cfg", [(DeblurNet, DeblurNetConfig.tiny()), (BokehNet, BokehNetConfig.tiny())])
    def test_save_load_round_trip(self, tmp_path, cls, cfg):
        net = _wake(cls.from_config(cfg), seed=3)
        net.save_pretrained(tmp_path / "net")
        back = cls.from_pretrained(tmp_path / "net")
        assert back.architecture() == net.architecture()
        x, d = torch.rand(1, 3, 8, 12), torch.rand(1, 1, 8, 12) * 3
        args = (x,) if cls is DeblurNet else (x, d, Aperture.polygon(7))
        sd = net.state_dict()
        assert all(torch.equal(v, sd[k]) for k, v in back.state_dict().items()) and back.state_dict().keys() == sd.keys()
        with torch.no_grad():  # same weights; loaded tensors may take another conv path (1 ulp)
            torch.testing.assert_close(back(*args), net(*args), rtol=0, atol=1e-6)
        other = BokehNet if cls is DeblurNet else DeblurNet
        with pytest.raises(ValueError, match="path"):
            other.from_pretrained(tmp_path / "net")

    def test_base_configs_build(self):
        for cfg in (DeblurNetConfig.base(), BokehNetConfig.base()):
            assert cfg.dim > DeblurNetConfig.tiny().dim and cfg.depth >= 8


# ---------------------------------------------------------------------------------- data
class TestData:
    def test_batch_is_consistent_with_the_lens(self):
        data = RefocusData(16, 20, batch_size=3, max_coc_px=5.0, seed=7)
        b = data.batch()
        assert b["aif"].shape == (3, 3, 16, 20) and b["defocus_map"].shape == (3, 1, 16, 20)
        assert len(b["aperture"]) == 3 and b["defocused"] is b["target"]
        expected = b["strength"].view(-1, 1, 1, 1) * (b["disparity"] - b["focus_disparity"].view(-1, 1, 1, 1)).abs()
        torch.testing.assert_close(b["defocus_map"], expected.clamp_max(5.0), rtol=1e-5, atol=1e-5)
        assert float(b["defocus_map"].max()) <= 5.0 + 1e-4
        assert float(b["defocus_map"].amax(dim=(1, 2, 3)).min()) >= 0.25 * 5.0 - 1e-3  # real blur in every sample
        # the target is blurred where the defocus is large and untouched where the whole
        # neighbourhood (wider than the largest blur) is in focus
        blurred = b["defocus_map"] > 3
        in_focus = F.max_pool2d(b["defocus_map"], 7, stride=1, padding=3) < 1.0
        assert blurred.any() and in_focus.any()
        diff = (b["target"] - b["aif"]).abs().mean(1, keepdim=True)
        assert float(diff[in_focus].mean()) < 0.1 * float(diff[blurred].mean())
        # deterministic for a seed
        again = RefocusData(16, 20, batch_size=3, max_coc_px=5.0, seed=7).batch()
        assert torch.equal(again["target"], b["target"])

    def test_random_apertures_vary(self):
        data = RefocusData(8, 8, batch_size=12, max_coc_px=2.0, seed=0)
        kinds = {a.kind for a in data.batch()["aperture"]}
        assert len(kinds) >= 2

    def test_bad_input(self):
        with pytest.raises(ValueError, match="scene"):
            RefocusData(scene="beach")
        with pytest.raises(ValueError, match="max_coc_px"):
            RefocusData(max_coc_px=0)


# ---------------------------------------------------------------------------------- training
@pytest.mark.slow  # model training
class TestOverfit:
    """A tiny network fits a handful of fixed pairs: the deterministic loss drops at least 4x."""

    FACTOR = 4.0

    @pytest.mark.parametrize("cls, cfg", [(DeblurNet, DeblurNetConfig.tiny()), (BokehNet, BokehNetConfig.tiny())])
    def test_overfit(self, cls, cfg):
        pairs = RefocusData(16, 16, batch_size=4, max_coc_px=4.0, seed=3).fixed(1)
        torch.manual_seed(0)
        net = cls.from_config(cfg)
        before = eval_loss(net, pairs)
        losses = train(net, pairs, steps=100, lr=3e-3)
        after = eval_loss(net, pairs)
        assert len(losses) == 100
        assert after * self.FACTOR < before, (before, after)


# ---------------------------------------------------------------------------------- pipeline
def _two_plane_scene(h=24, w=32):
    """Left half at 1 m, right half at 4 m, both covered with a fine checkerboard."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy // 2 + xx // 2) % 2).float()
    aif = torch.stack([0.2 + 0.6 * checker, 0.3 + 0.4 * checker, 0.5 - 0.3 * checker])[None]
    depth = torch.where(xx < w // 2, 1.0, 4.0).float()[None, None]
    return aif, depth


class TestRefocus:
    def test_moves_the_sharp_region_to_the_focus_point(self):
        aif, depth = _two_plane_scene()
        w = aif.shape[-1]
        lens = ThinLens(50.0, 0.35, 1.0)  # focused on the left plane; coc of the other plane ~5 px
        k = blur_strength_from_lens(lens, w).float()
        photo = lensblur.render(aif, depth, lens, method="gather", gamma=2.2)
        disparity = 1.0 / depth
        for focus_xy, sharp_side in (((24, 12), "right"), ((6, 12), "left")):
            out = refocus(photo, focus_xy, k, depth_estimator=lambda a: disparity,
                          deblur=lambda img: aif, bokeh=PhysicalBokeh(), return_intermediates=True)
            e = _lap_energy(out.image)[..., 2:-2, :]  # away from the top/bottom border
            left = float(e[..., : w // 2 - 6].mean())
            right = float(e[..., w // 2 + 4:].mean())
            sharp, blurred = (right, left) if sharp_side == "right" else (left, right)
            assert sharp > 20 * blurred, (focus_xy, left, right)
            # the physical path is exactly lensblur.render with a lens focused there that has the
            # same blur strength K (K depends on S1, so the f-number is adjusted: K ~ 1 / N)
            s1 = float(depth[0, 0, focus_xy[1], focus_xy[0]])
            n1 = 0.35 * float(blur_strength_from_lens(ThinLens(50.0, 0.35, s1), w)) / float(k)
            ref = lensblur.render(aif, depth, ThinLens(50.0, n1, s1), method="gather", gamma=2.2)
            torch.testing.assert_close(out.image, ref, atol=1e-4, rtol=1e-4)
            assert float(out.defocus_map[0, 0, focus_xy[1], focus_xy[0]]) == 0.0

    def test_pipeline_with_networks_and_checkpoints(self, tmp_path):
        deblur = _wake(DeblurNet.from_config(DeblurNetConfig.tiny()), 1)
        bokeh = _wake(BokehNet.from_config(BokehNetConfig.tiny()), 2)
        estimator = lambda a: a.mean(1, keepdim=True) + 0.5  # noqa: E731
        RefocusPipeline(estimator, deblur, bokeh, max_px=7.0).save_pretrained(tmp_path / "pipe")
        with pytest.raises(ValueError, match="depth_estimator"):  # a lambda is not saved: pass it again
            RefocusPipeline.from_pretrained(tmp_path / "pipe")
        pipe = RefocusPipeline.from_pretrained(tmp_path / "pipe", depth_estimator=estimator)
        assert pipe.max_px == 7.0 and set(pipe.components) == {"depth_estimator", "deblur", "bokeh"}
        img = torch.rand(1, 3, 16, 16)
        out = pipe(img, (3, 3), 10.0, Aperture.polygon(6))
        assert not out.image.requires_grad  # __call__ runs under torch.no_grad()
        with torch.no_grad():
            direct = bokeh(deblur(img), out.defocus_map, Aperture.polygon(6))
        assert out.image.shape == img.shape
        torch.testing.assert_close(out.image, direct, atol=1e-5, rtol=1e-5)

    def test_bad_input(self):
        img = torch.rand(1, 3, 8, 8)
        ones = lambda a: torch.ones(1, 1, 8, 8)  # noqa: E731
        with pytest.raises(TypeError, match="depth_estimator"):
            refocus(img, (1, 1), 1.0, depth_estimator=None)
        with pytest.raises(ValueError, match="depth_estimator"):
            refocus(img, (1, 1), 1.0, depth_estimator=lambda a: torch.zeros(1, 1, 8, 8))
        with pytest.raises(ValueError, match="focus_xy"):
            refocus(img, (9, 1), 1.0, depth_estimator=ones)
        with pytest.raises(ValueError, match="strength"):
            refocus(img, (1, 1), -1.0, depth_estimator=ones)
        with pytest.raises(TypeError, match="bokeh"):
            refocus(img, (1, 1), 1.0, depth_estimator=ones, bokeh="physical")


class TestEvaluate:
    def test_metrics(self):
        x = torch.rand(2, 3, 16, 16)
        same = image_metrics(x, x)
        name = same["perceptual_metric"]
        assert name in ("lpips", "ssim") and same["psnr"] > 100
        assert same[name] == pytest.approx(0.0 if name == "lpips" else 1.0, abs=1e-4)
        noisy = image_metrics((x + 0.1 * torch.randn_like(x)).clamp(0, 1), x)
        assert noisy["psnr"] < 25
        assert (noisy[name] > same[name]) if name == "lpips" else (noisy[name] < same[name])

    def test_held_out_refocus_set(self):
        items = make_refocus_set(2, 24, 24, max_coc_px=5.0, method="gather")
        oracle = evaluate_refocus(items, deblur="oracle", bokeh=PhysicalBokeh())
        # the set and the physical pipeline agree: exact up to float rounding
        assert oracle["psnr"] > 60 and oracle["num_images"] == 2
        # the two shots of every item are focused at clearly different depths
        assert oracle["input_psnr"] < 40
        # refocusing the blurred input itself (no deblur) is worse than the oracle
        naive = evaluate_refocus(items, bokeh=PhysicalBokeh())
        assert naive["psnr"] < oracle["psnr"]


# ---------------------------------------------------------------------------------- FLUX + LoRA
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random FLUX transformer saved to a local directory (no download)."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=12, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    path = tmp_path_factory.mktemp("flux_tiny")
    model.save_pretrained(path)
    return path


class TestFluxAdapter:
    def test_lora_bokeh_train_save_load(self, base_dir, tmp_path):
        from lensblur_models.genrefocus import FluxBridgeAdapter

        torch.manual_seed(0)
        ad = FluxBridgeAdapter.from_pretrained(base_dir, task="bokeh", lora_rank=4)
        trainable = [n for n, p in ad.named_parameters() if p.requires_grad]
        assert any("lora_" in n for n in trainable)
        assert all(("lora_" in n) or not n.startswith("transformer.") for n in trainable)
        aif, dmap, target = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8) * 4, torch.rand(2, 3, 8, 8)
        with torch.no_grad():
            assert (ad(aif, dmap, Aperture.disk()) - ad(aif, dmap, Aperture.polygon(6))).abs().max() > 1e-5
        opt = torch.optim.Adam([p for p in ad.parameters() if p.requires_grad], lr=1e-2)
        first = None
        for _ in range(15):
            loss = ad.loss(aif, dmap, target=target, aperture=Aperture.polygon(6), t=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = float(loss.detach()) if first is None else first
        with torch.no_grad():
            last = float(ad.loss(aif, dmap, target=target, aperture=Aperture.polygon(6), t=0.5))
        assert last < 0.7 * first
        ad.save_adapter(tmp_path / "adapter")
        back = FluxBridgeAdapter.from_pretrained(base_dir, adapter_path=tmp_path / "adapter")
        fresh = FluxBridgeAdapter.from_pretrained(base_dir, task="bokeh", lora_rank=4)
        with torch.no_grad():
            ref = ad(aif, dmap, Aperture.polygon(6))
            torch.testing.assert_close(back(aif, dmap, Aperture.polygon(6)), ref)
            assert (fresh(aif, dmap, Aperture.polygon(6)) - ref).abs().max() > 1e-4

    def test_deblur_task_and_errors(self, base_dir, tmp_path):
        from lensblur_models.genrefocus import FluxBridgeAdapter

        ad = FluxBridgeAdapter.from_pretrained(base_dir, task="deblur", lora_rank=2)
        img = torch.rand(1, 3, 6, 10)
        assert ad(img).shape == img.shape
        with pytest.raises(ValueError, match="even"):
            ad(torch.rand(1, 3, 7, 10))
        with pytest.raises(ValueError, match="path"):
            FluxBridgeAdapter.from_pretrained(tmp_path / "missing")
        with pytest.raises(ValueError, match="task"):
            FluxBridgeAdapter.from_pretrained(base_dir, task="denoise")


# ---------------------------------------------------------------------------------- depth estimator
class TestDepthEstimator:
    def test_local_tiny_dpt_drives_refocus(self, tmp_path):
        transformers = pytest.importorskip("transformers")
        from lensblur_models.common import DepthEstimator

        torch.manual_seed(0)
        cfg = transformers.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=64, image_size=32, patch_size=8,
                                     backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                                     fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
        model = transformers.DPTForDepthEstimation(cfg)
        with torch.no_grad():  # a head that gives a non-trivial positive map
            model.head.head[-2].bias.fill_(1.0)
        model.save_pretrained(tmp_path / "dpt")
        est = DepthEstimator.from_pretrained(tmp_path / "dpt", output="disparity", input_size=(32, 32))
        img = torch.rand(2, 3, 20, 28)
        disp = est(img)
        assert disp.shape == (2, 1, 20, 28)
        assert float(disp.min()) >= 1e-2 and disp.flatten(1).amax(1).tolist() == pytest.approx([1.0, 1.0])
        out = refocus(img, (5, 5), 4.0, depth_estimator=est, return_intermediates=True)
        assert out.image.shape == img.shape and torch.equal(out.disparity, disp)
        with pytest.raises(ValueError, match="path"):
            DepthEstimator.from_pretrained(tmp_path / "nothing", output="disparity")
        with pytest.raises(ValueError, match="output"):
            DepthEstimator(model, output="normals")
        with pytest.raises(ValueError, match="metric depth network"):
            DepthEstimator(model, output="metric")
