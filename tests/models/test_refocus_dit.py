"""Tests for the refocusing DiT: simulation, stacking constraint, training, sampler, adapters, DDP."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import lensblur
from lensblur import LensBlurError, ThinLens
from lensblur.scene import make_scene
from lensblur_models import blur_strength_from_lens
from lensblur_models.refocus_dit import (DEFAULT_RENDER_METHOD, IdentityCodec, RefocusDiT, RefocusDiTConfig, RefocusDiTPipeline,
                                         SimulationConfig, TrainConfig, lens_for_condition,
                                         multi_focus_render, refocus, simulate_batch, stacking_loss,
                                         training_step)

SIZE = 16


@pytest.fixture(autouse=True)
def one_thread():
    # two cores shared by many processes: one intra-op thread is much faster than two
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def scenes(n=2, size=SIZE):
    pairs = [make_scene(size, size, seed=s) for s in range(n)]
    img = torch.cat([p[0] for p in pairs]).clamp(0, 1)
    return img, torch.cat([p[1] for p in pairs])


def banded_scene(size=SIZE):
    """Random texture on three vertical bands at 1.5 m, 3 m and 8 m."""
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 3, size, size, generator=g)
    depth = torch.full((1, 1, size, size), 3.0)
    depth[..., : size // 3] = 1.5
    depth[..., 2 * size // 3:] = 8.0
    return img, depth


def randomize(model, std=0.05):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


class TestSimulation:
    cfg = SimulationConfig(max_strength=0.5, method="gather")

    @pytest.mark.parametrize("method", ["gather", DEFAULT_RENDER_METHOD])
    def test_pair_target_is_lensblur_render_at_condition(self, method):
        img, depth = scenes()
        cfg = SimulationConfig(max_strength=0.5, method=method)
        batch = simulate_batch(img, depth, cfg, torch.Generator().manual_seed(0))
        b, k = batch.conditions.shape[:2]
        assert batch.targets.shape == (b, k, 3, SIZE, SIZE) and k == 2
        f_m, sensor_m = 0.05, 0.036
        for i in range(b):
            for cond, out in [(batch.reference_condition[i], batch.reference[i])] + \
                             [(batch.conditions[i, j], batch.targets[i, j]) for j in range(k)]:
                x, y, bok = (float(v) for v in cond)
                s1 = float(depth[i, 0, int(y * SIZE), int(x * SIZE)])  # depth under the focus point
                strength = bok * self.cfg.max_strength * SIZE          # px per diopter
                n = f_m * f_m * s1 * SIZE / (strength * (s1 - f_m) * sensor_m)
                lens = ThinLens(50.0, n, s1)
                assert blur_strength_from_lens(lens, SIZE) == pytest.approx(strength, rel=1e-4)
                want = lensblur.render(img[i:i + 1], depth[i:i + 1], lens, method=method)
                torch.testing.assert_close(out[None], want, atol=1e-5, rtol=1e-5)
        # all targets of a scene share the bokeh level; the blur is visible
        assert torch.equal(batch.conditions[:, 0, 2], batch.conditions[:, 1, 2])
        assert (batch.targets - img[:, None]).abs().mean() > 1e-2

    def test_deterministic_with_seed(self):
        img, depth = scenes()
        a = simulate_batch(img, depth, self.cfg, torch.Generator().manual_seed(5))
        b = simulate_batch(img, depth, self.cfg, torch.Generator().manual_seed(5))
        c = simulate_batch(img, depth, self.cfg, torch.Generator().manual_seed(6))
        assert torch.equal(a.targets, b.targets) and torch.equal(a.conditions, b.conditions)
        assert not torch.equal(a.conditions, c.conditions)

    @pytest.mark.parametrize("method", ["gather", "layered"])
    def test_multi_focus_sharp_at_each_focus_depth(self, method):
        if method == "layered":
            pytest.importorskip("lensblur.layered")
        img, depth = banded_scene()
        cfg = SimulationConfig(max_strength=0.5, method=method)
        # focus on the near band (x = 0.1) and the far band (x = 0.9), bokeh 1
        conds = torch.tensor([[[0.1, 0.5, 1.0], [0.9, 0.5, 1.0]]])
        multi, masks = multi_focus_render(img, depth, conds, cfg)
        near, mid, far = slice(0, SIZE // 3), slice(SIZE // 3, 2 * SIZE // 3), slice(2 * SIZE // 3, SIZE)
        # masks: one-hot, nearest plane in disparity (3 m is nearer to 8 m than to 1.5 m in 1/d)
        assert torch.equal(masks.sum(1), torch.ones(1, 1, SIZE, SIZE))
        assert masks[0, 0, 0, :, near].eq(1).all() and masks[0, 1, 0, :, mid].eq(1).all()
        assert masks[0, 1, 0, :, far].eq(1).all()
        inner = 2 if method == "layered" else 0  # the layered blend may touch the band edges
        for band in (near, far):
            cols = slice(band.start + inner, band.stop - inner)
            torch.testing.assert_close(multi[..., cols], img[..., cols], atol=1e-4, rtol=0)
        assert (multi[..., mid] - img[..., mid]).abs().mean() > 0.02  # the middle band is blurred
        # a single-plane render is blurred in the other focus band: stacking adds sharpness
        single = lensblur.render(img, depth, lens_for_condition(depth, conds[:, 0], cfg), method=method)
        assert (single[..., far] - img[..., far]).abs().mean() > 0.02

    def test_bad_input(self):
        img, depth = scenes(1)
        with pytest.raises(LensBlurError, match="condition"):
            lens_for_condition(depth, torch.tensor([[0.5, 0.5, 1.5]]))
        with pytest.raises(LensBlurError, match="bokeh_range"):
            SimulationConfig(bokeh_range=(0.5, 0.2))
        with pytest.raises(LensBlurError, match="depth"):
            simulate_batch(img, -depth)
        with pytest.raises(LensBlurError, match="focal length"):
            lens_for_condition(torch.full((1, 1, 4, 4), 0.03), torch.tensor([[0.5, 0.5, 0.5]]))


class TestStacking:
    cfg = SimulationConfig(max_strength=0.5, method="gather", num_focus_planes=3)

    def test_zero_for_physical_renderer_positive_for_wrong_one(self):
        img, depth = scenes()
        batch = simulate_batch(img, depth, self.cfg, torch.Generator().manual_seed(1))
        assert float(stacking_loss(batch.targets, batch.masks, batch.multi_focus)) < 1e-10
        # in the (pixel-space) latent of a codec as well
        codec = IdentityCodec(3, shift=0.5, scale=2.0)
        lat = codec.encode(batch.targets.flatten(0, 1)).view_as(batch.targets)
        assert float(stacking_loss(lat, batch.masks, codec.encode(batch.multi_focus))) < 1e-10
        # wrong predictors: planes swapped, or the right planes at another bokeh level
        swapped = batch.targets.roll(1, dims=1)
        assert float(stacking_loss(swapped, batch.masks, batch.multi_focus)) > 1e-4
        other = batch.conditions.clone()
        other[..., 2] = (other[..., 2] + 0.5) % 1.0
        wrong = simulate_batch(img, depth, self.cfg, conditions=other).targets
        assert float(stacking_loss(wrong, batch.masks, batch.multi_focus)) > 1e-4
        assert float(stacking_loss(img[:, None].expand_as(wrong), batch.masks, batch.multi_focus)) > 1e-4

    def test_layered_renderer_nearly_satisfies_stacking(self):
        """With occlusion-aware layers the identity is approximate: far below a wrong predictor."""
        img, depth = scenes(2, 32)
        cfg = SimulationConfig(max_strength=0.5, method="layered", num_focus_planes=3)
        batch = simulate_batch(img, depth, cfg, torch.Generator().manual_seed(1))
        physical = float(stacking_loss(batch.targets, batch.masks, batch.multi_focus))
        swapped = float(stacking_loss(batch.targets.roll(1, dims=1), batch.masks, batch.multi_focus))
        assert physical < swapped / 10, (physical, swapped)

    def test_gradient_reaches_model(self):
        img, depth = scenes()
        batch = simulate_batch(img, depth, self.cfg, torch.Generator().manual_seed(2))
        model = RefocusDiT.from_config(RefocusDiTConfig(patch_size=4, dim=32, depth=1, heads=2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tc = TrainConfig(flow_weight=0.0, stack_weight=1.0, depth_dropout=0.0)
        for _ in range(3):  # adaLN-zero: at init only the head gets gradient; the rest follows
            loss, m = training_step(model, batch, config=tc, generator=torch.Generator().manual_seed(0))
            assert m["flow"] > 0 and loss.item() == pytest.approx(m["stack"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for mod in (model.head, model.embed_target.proj, model.embed_reference.proj, model.c_embed.mlp[0]):
            assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depth_dropout", [0.0, 1.0], ids=["with_depth", "without_depth"])
@pytest.mark.slow  # model training
def test_tiny_model_overfits_a_handful_of_pairs(depth_dropout):
    """Flow loss on fixed (t, noise) draws drops at least 3x in 200 steps on 2 scenes x 2 planes."""
    img, depth = scenes()
    batch = simulate_batch(img ** (1 / 2.2), depth, SimulationConfig(max_strength=0.5, gamma=2.2),
                           torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = RefocusDiT.from_config(RefocusDiTConfig(patch_size=4, dim=64, depth=2, heads=4))
    codec = IdentityCodec(3, shift=0.5, scale=2.0)
    tc = TrainConfig(stack_weight=0.5, depth_dropout=depth_dropout)

    def evaluate():
        with torch.no_grad():
            return sum(training_step(model, batch, codec, tc, torch.Generator().manual_seed(100 + j))[1]["flow"]
                       for j in range(4)) / 4

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        loss, _ = training_step(model, batch, codec, tc, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after < before / 3, (before, after)


class TestSampler:
    def model(self):
        torch.manual_seed(0)
        return randomize(RefocusDiT.from_config(RefocusDiTConfig(patch_size=4, dim=32, depth=1, heads=2))).eval()

    def test_shape_dtype_determinism_and_conditioning(self):
        model = self.model()
        img, depth = scenes()
        run = lambda seed, **kw: refocus(model, img, **{"depth": depth, "focus_xy": (0.2, 0.7),  # noqa: E731
                                                         "bokeh_level": 0.6, "steps": 3,
                                                         "generator": torch.Generator().manual_seed(seed), **kw})
        out = run(0)
        assert out.shape == img.shape and out.dtype == img.dtype and torch.isfinite(out).all()
        assert torch.equal(out, run(0))
        assert (out - run(1)).abs().max() > 1e-3
        assert (out - run(0, focus_xy=(0.8, 0.2))).abs().max() > 1e-4
        assert (out - run(0, bokeh_level=0.1)).abs().max() > 1e-4
        assert (out - run(0, depth=None)).abs().max() > 1e-4
        per_sample = run(0, focus_xy=torch.tensor([[0.2, 0.7], [0.9, 0.9]]), bokeh_level=torch.tensor([0.6, 0.1]))
        torch.testing.assert_close(per_sample[0], out[0])
        model64 = self.model().double()
        out64 = refocus(model64, img.double(), depth.double(), steps=2, generator=torch.Generator().manual_seed(0))
        assert out64.dtype == torch.float64

    def test_bad_input(self):
        model, img = self.model(), torch.rand(1, 3, 8, 8)
        with pytest.raises(LensBlurError, match="focus_xy"):
            refocus(model, img, focus_xy=(1.5, 0.5))
        with pytest.raises(LensBlurError, match="steps"):
            refocus(model, img, steps=0)
        with pytest.raises(LensBlurError, match="depth"):
            refocus(model, img, depth=torch.zeros(1, 1, 8, 8))
        with pytest.raises(LensBlurError, match="depth_mask"):
            model(img, torch.rand(1), img, torch.rand(1, 3), None, torch.tensor([True]))


def test_depth_dropout_removes_depth_information():
    torch.manual_seed(0)
    model = randomize(RefocusDiT.from_config(RefocusDiTConfig(patch_size=4, dim=32, depth=1, heads=2)))
    x = torch.randn(2, 3, 8, 8)
    d1, d2 = torch.rand(2, 1, 8, 8) + 1, torch.rand(2, 1, 8, 8) + 1
    args = (x, torch.rand(2), x, torch.rand(2, 3))
    off = torch.tensor([False, False])
    dropped = model(*args, d1, off)
    assert torch.equal(dropped, model(*args, d2, off)) and torch.equal(dropped, model(*args, None))
    assert (model(*args, d1) - model(*args, d2)).abs().max() > 1e-5      # depth is used when kept
    assert (model(*args, d1) - dropped).abs().max() > 1e-5
    mixed = model(*args, d1, torch.tensor([True, False]))                 # per-sample flag
    torch.testing.assert_close(mixed[1], dropped[1])
    # training with depth_dropout=1 never looks at the depth map
    img, depth = scenes()
    batch = simulate_batch(img, depth, SimulationConfig(max_strength=0.5), torch.Generator().manual_seed(0))
    other = dataclasses.replace(batch, depth=batch.depth.flip(-1))
    tc = TrainConfig(depth_dropout=1.0)
    la = training_step(model, batch, config=tc, generator=torch.Generator().manual_seed(3))[1]
    lb = training_step(model, other, config=tc, generator=torch.Generator().manual_seed(3))[1]
    assert la == lb


def test_example_command_trains_and_refocuses(tmp_path, capsys):
    """The documented one-command example, with 2 steps: trains, saves, refocuses, writes images."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train_refocus_dit.py")
    spec = importlib.util.spec_from_file_location("train_refocus_dit", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.run(["--out", str(tmp_path), "--steps", "2", "--log-every", "1", "--patch", "4", "--scenes", "2",
                 "--batch", "2"])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model", "log.jsonl", "rank0.json", "reference.png", "truth_near.png",
            "refocus_far_nodepth.png"} <= names
    assert capsys.readouterr().out.count("PSNR") == 4


def test_training_command_reads_a_data_directory(tmp_path):
    np = pytest.importorskip("numpy")
    from lensblur.io import write_image
    from lensblur_models.refocus_dit.train import load_scenes, main

    for i in range(2):
        img, depth = make_scene(24, 24, seed=10 + i)
        write_image(tmp_path / f"s{i}.png", img)
        np.save(tmp_path / f"s{i}_depth.npy", depth[0, 0].numpy())
    images, depths = load_scenes([0, 1], 16, str(tmp_path))
    assert images.shape == (2, 3, 16, 16) and depths.shape == (2, 1, 16, 16)
    assert 1.0 < float(depths.min()) and float(depths.max()) <= 12.0
    summary = main(["--out", str(tmp_path / "run"), "--data", str(tmp_path), "--steps", "1", "--patch", "4",
                    "--scenes", "2", "--batch", "1"])
    assert summary["world_size"] == 1 and (tmp_path / "run" / "model" / "config.json").is_file()
    with pytest.raises(ValueError, match="no images"):
        load_scenes([0], 16, str(tmp_path / "run"))
    # a photo without a depth file: depth is estimated on the fly by --depth-model
    from lensblur_models.exif_defocus import make_tiny_depth_model

    (tmp_path / "nodepth").mkdir()
    write_image(tmp_path / "nodepth" / "p.png", make_scene(20, 30, seed=3)[0])
    args = ["--data", str(tmp_path / "nodepth"), "--steps", "1", "--patch", "4", "--batch", "1", "--size", "16"]
    with pytest.raises(FileNotFoundError, match="depth-model"):
        main(["--out", str(tmp_path / "run2"), *args])
    summary = main(["--out", str(tmp_path / "run3"), *args, "--depth-model",
                    str(make_tiny_depth_model(tmp_path / "depth"))])
    assert summary["step"] == 1 and summary["losses"][0] > 0


def test_identity_codec():
    codec = IdentityCodec(3, shift=0.5, scale=2.0)
    x = torch.rand(1, 3, 4, 4)
    z = codec.encode(x)
    assert z.min() >= -1 and z.max() <= 1 and torch.allclose(codec.decode(z), x)
    with pytest.raises(LensBlurError, match="image"):
        codec.encode(torch.rand(1, 1, 4, 4))
    with pytest.raises(LensBlurError, match="scale"):
        IdentityCodec(3, scale=0.0)
    from lensblur_models.refocus_dit import AutoencoderKLCodec
    with pytest.raises(TypeError, match="vae"):
        AutoencoderKLCodec(torch.nn.Linear(2, 2))


def test_save_load_round_trip(tmp_path):
    model = randomize(RefocusDiT.from_config(RefocusDiTConfig(patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0)))
    model.save_pretrained(tmp_path / "m")
    back = RefocusDiT.from_pretrained(tmp_path / "m")
    assert back.architecture() == model.architecture()
    x, d = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8) + 1
    args = (x, torch.rand(2), x, torch.rand(2, 3), d)
    assert torch.equal(back(*args), model(*args))
    pipe = RefocusDiTPipeline.from_pretrained(tmp_path / "m")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(pipe.refocus(x, d, steps=2, generator=g()),
                       refocus(model, x, d, steps=2, generator=g()))
    # one folder: pipeline.json + model/ + codec/
    RefocusDiTPipeline(model, IdentityCodec(3, shift=0.5, scale=2.0)).save_pretrained(tmp_path / "pipe")
    back = RefocusDiTPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(back.codec, IdentityCodec) and back.codec.scale == 2.0
    out = back(x, d, (0.2, 0.7), 0.9, steps=2, generator=g())
    assert not out.image.requires_grad
    assert torch.equal(out.image, refocus(model, x, d, (0.2, 0.7), 0.9, codec=back.codec, steps=2, generator=g()))


def test_flux_lora_adapter_and_vae_codec_from_local_checkpoints(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from lensblur_models.refocus_dit import AutoencoderKLCodec
    from lensblur_models.refocus_dit.flux import FluxRefocusDiT

    torch.manual_seed(0)
    diffusers.FluxTransformer2DModel(
        in_channels=12, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
    ).save_pretrained(tmp_path / "flux" / "transformer")
    diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=16,
    ).save_pretrained(tmp_path / "flux" / "vae")

    model = FluxRefocusDiT.from_pretrained(tmp_path / "flux", subfolder="transformer", lora_rank=4)
    codec = AutoencoderKLCodec.from_pretrained(tmp_path / "flux", subfolder="vae")
    assert codec.channels == 3 and codec.downsample == 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("transformer.") for n in trainable)
    assert any("lora_" in n for n in trainable)

    img, depth = scenes()
    batch = simulate_batch(img, depth, SimulationConfig(max_strength=0.5), torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for _ in range(2):
        loss, m = training_step(model, batch, codec, TrainConfig(depth_dropout=0.5),
                                torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, base_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # LoRA trained (B starts at zero)

    out = refocus(model, img, depth, (0.3, 0.6), 0.7, codec=codec, steps=2,
                  generator=torch.Generator().manual_seed(0))
    assert out.shape == img.shape and torch.isfinite(out).all()
    assert (out - refocus(model, img, depth, (0.3, 0.6), 0.1, codec=codec, steps=2,
                          generator=torch.Generator().manual_seed(0))).abs().max() > 1e-6

    model.save_adapter(tmp_path / "adapter")
    back = FluxRefocusDiT.load_adapter(tmp_path / "adapter")
    z = codec.encode(img)
    args = (z, torch.full((2,), 0.5), z, torch.rand(2, 3), depth)
    assert torch.equal(back(*args), model(*args))
    with pytest.raises(LensBlurError, match="path"):
        FluxRefocusDiT.from_pretrained(tmp_path / "missing")

    # the training command on the same local checkpoint: LoRA in the VAE latent space
    from lensblur_models.refocus_dit.train import main
    summary = main(["--out", str(tmp_path / "run"), "--flux", str(tmp_path / "flux"), "--vae",
                    str(tmp_path / "flux"), "--lora-rank", "2", "--steps", "1", "--scenes", "1", "--batch", "1"])
    assert summary["final"]["loss"] > 0
    trained = FluxRefocusDiT.load_adapter(tmp_path / "run" / "adapter")
    assert trained.lora_rank == 2 and trained.source == (str(tmp_path / "flux"), "transformer")


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate(tmp_path):
    """accelerate launch, 2 processes, gloo: the ranks train in sync, losses are averaged, model saved."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "lensblur_models.refocus_dit.train", "--out", str(out), "--steps", "3", "--log-every", "1",
           "--patch", "4", "--batch", "2", "--scenes", "4", "--threads", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["param_checksum"] == pytest.approx(r1["param_checksum"], rel=1e-9, abs=1e-9)  # DDP sync
    assert r0["losses"] == r1["losses"]  # the logged loss is the mean over the ranks
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["loss"] > 0 for r in log)
    assert r0["final"]["flow"] != r1["final"]["flow"]  # the ranks saw different data
    model = RefocusDiT.from_pretrained(out / "model")
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert checksum == pytest.approx(r0["param_checksum"], rel=1e-6)
