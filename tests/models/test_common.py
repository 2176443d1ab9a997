"""The shared floor: config presets and naming, diffusers persistence, bf16, gradient checkpointing."""

import dataclasses
import inspect

import pytest
import torch

from lensblur import Aperture, LensBlurError
from lensblur_models import (BokehNet, BokehNetConfig, DeblurNet, DeblurNetConfig,
                             FocusDistanceTransformer, RefocusDiT, RefocusDiTConfig)
from lensblur_models.common import LensBlurModel, ModelConfig

NETS = [RefocusDiT, DeblurNet, BokehNet, FocusDistanceTransformer]
EXIF = torch.tensor([[50.0, 2.0, 36.0], [85.0, 1.4, 36.0]])


def _wake(net, seed=0):
    """Randomise the zero-initialised heads so that every parameter gets a gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def _loss(net, dtype=torch.float32):
    """A scalar of ``net``'s output on fixed 8x8 inputs (every family's forward)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g, dtype=dtype)
    d = torch.rand(2, 1, 8, 8, generator=g, dtype=dtype) + 1
    if isinstance(net, RefocusDiT):
        out = net(x, torch.rand(2, generator=g), x, torch.rand(2, 3, generator=g), depth=d)
    elif isinstance(net, BokehNet):
        out = net.velocity(x, 0.3, x, d * 2, Aperture.polygon(6))
    elif isinstance(net, DeblurNet):
        out = net.velocity(x, 0.3, x)
    else:
        pred = net(x, d, EXIF.to(dtype))
        out = torch.stack([pred.focus_distance_m, pred.depth_scale])
    return out.float().square().mean()


def _tiny(cls):
    return cls.from_config(cls.config_class.tiny())


@pytest.mark.parametrize("cls", NETS)
def test_config_is_the_constructor(cls):
    """One naming: the dataclass fields are the constructor's arguments, with the same defaults."""
    assert issubclass(cls, LensBlurModel) and issubclass(cls.config_class, ModelConfig)
    params = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    fields = {f.name: f.default for f in dataclasses.fields(cls.config_class)}
    assert params == fields
    for name in ("in_channels", "patch_size", "dim", "depth", "heads", "mlp_ratio"):
        assert name in fields
    assert sum(p.numel() for p in _tiny(cls).parameters()) < 300_000
    tiny, small, base = (getattr(cls.config_class, n)() for n in ("tiny", "small", "base"))
    assert tiny.dim < small.dim <= base.dim and small.depth >= 6


def test_presets_and_from_config_errors():
    assert RefocusDiTConfig.tiny(in_channels=16).in_channels == 16
    with pytest.raises(TypeError, match="patch"):
        RefocusDiTConfig.tiny(patch=4)
    with pytest.raises(LensBlurError, match="name"):
        RefocusDiTConfig.preset("huge")
    with pytest.raises(TypeError, match="BokehNetConfig"):
        BokehNet.from_config(DeblurNetConfig.tiny())
    with pytest.raises(ValueError, match="heads"):
        RefocusDiT(dim=64, heads=3)


@pytest.mark.parametrize("cls", NETS)
def test_from_pretrained_bf16_round_trip(cls, tmp_path):
    net = _wake(_tiny(cls))
    net.save_pretrained(tmp_path / "net")
    back = cls.from_pretrained(tmp_path / "net", torch_dtype=torch.bfloat16)
    assert back.dtype == torch.bfloat16 and back.architecture() == net.architecture()
    sd = net.state_dict()
    for k, v in back.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, sd[k].to(torch.bfloat16)), k
    full = cls.from_pretrained(tmp_path / "net")
    assert all(torch.equal(v, sd[k]) for k, v in full.state_dict().items())
    with torch.no_grad():
        assert torch.isfinite(_loss(back, torch.bfloat16))
    other = DeblurNet if cls is not DeblurNet else BokehNet
    with pytest.raises(ValueError, match=f"holds a {cls.__name__}"):
        other.from_pretrained(tmp_path / "net")
    with pytest.raises(ValueError, match="local directory"):
        cls.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("cls", NETS)
def test_gradient_checkpointing_same_gradients(cls):
    net = _wake(_tiny(cls))

    def grads():
        net.zero_grad()
        _loss(net).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    plain = grads()
    net.enable_gradient_checkpointing()
    assert all(m.gradient_checkpointing for m in net.modules() if hasattr(m, "gradient_checkpointing"))
    ckpt = grads()
    net.disable_gradient_checkpointing()
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6, msg=n)
    assert sum(float(g.abs().sum()) for g in plain.values()) > 0


@pytest.mark.parametrize("cls", NETS)
def test_bf16_autocast_on_cpu(cls):
    """fp32 weights, bf16 compute: the loss is close to fp32's and the gradients stay fp32."""
    net = _wake(_tiny(cls))
    ref = _loss(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _loss(net)
    low.backward()
    assert torch.isfinite(low) and abs(float(low.detach()) - float(ref.detach())) <= 0.05 * abs(float(ref.detach())) + 1e-3
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in net.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------ FLUX adapter base
@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("flux") / "transformer"
    diffusers.FluxTransformer2DModel(
        in_channels=12, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)).save_pretrained(path)
    return path


def _adapter_loss(ad):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 8, 8, generator=g)
    if type(ad).__name__ == "FluxRefocusDiT":
        return ad(x, torch.full((2,), 0.4), x, torch.rand(2, 3, generator=g), x[:, :1] + 1).square().mean()
    return ad.loss(x, x[:, :1] * 3, target=x.flip(-1), aperture=Aperture.polygon(5), t=0.5)


@pytest.mark.parametrize("family", ["refocus_dit", "genrefocus"])
def test_flux_adapter_base(family, flux_dir, tmp_path):
    """Both families share one base: frozen bf16 transformer, fp32 LoRA + conditioning, one format."""
    from lensblur_models.common.flux import ADAPTER_CONFIG, FluxAdapterBase
    from lensblur_models.genrefocus import FluxBridgeAdapter
    from lensblur_models.refocus_dit import FluxRefocusDiT

    cls, other = (FluxRefocusDiT, FluxBridgeAdapter) if family == "refocus_dit" else (FluxBridgeAdapter, FluxRefocusDiT)
    assert issubclass(cls, FluxAdapterBase)
    ad = cls.from_pretrained(flux_dir, lora_rank=4, torch_dtype=torch.bfloat16)
    trainable = {n for n, p in ad.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n or not n.startswith("transformer.") for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in ad.named_parameters() if n in trainable)
    assert all(p.dtype == torch.bfloat16 for n, p in ad.named_parameters() if n not in trainable)
    frozen = {n: p.detach().clone() for n, p in ad.named_parameters() if n not in trainable}
    opt = torch.optim.SGD([p for p in ad.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        _adapter_loss(ad).backward()
        opt.step()
    assert all(p.grad is None for n, p in ad.named_parameters() if n not in trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in ad.named_parameters() if n not in trainable)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in ad.named_parameters() if "lora_B" in n)

    ad.save_adapter(tmp_path / "ad")
    saved = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(tmp_path / "ad" / "adapter.safetensors"))
    assert len(saved) == len(trainable)  # only the adapter weights are written
    back = cls.load_adapter(tmp_path / "ad", torch_dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(_adapter_loss(back), _adapter_loss(ad))
    assert '"class": "%s"' % cls.__name__ in (tmp_path / "ad" / ADAPTER_CONFIG).read_text()
    with pytest.raises(ValueError, match=f"holds a {cls.__name__}"):
        other.load_adapter(tmp_path / "ad")
