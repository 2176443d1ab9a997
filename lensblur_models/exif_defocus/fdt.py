"""The Focus Distance Transformer (FDT): where would a photographer focus this picture?

A ViT reads the all-in-focus image and its depth as patch tokens, plus one token carrying the
camera EXIF (:class:`~lensblur_models.exif.ExifEmbedder`, also the adaLN condition of every
block), and a learned *focus* token.  From the focus token's output two numbers are read:

* a focus position :math:`t = \\sigma(z_0) \\in (0, 1)` that interpolates **in log depth** between
  the image's nearest and farthest depth, so the focus always lies inside the scene:
  :math:`\\log S_1 = \\log s + (1 - t) \\log d_\\min + t \\log d_\\max`;
* a depth scale :math:`s = \\exp(\\tanh(z_1) \\log s_\\max) \\in (1/s_\\max, s_\\max)` that turns a
  relative depth map into metres (:math:`d_\\text{m} = s\\,d`), needed because monocular depth
  networks are only right up to scale and the blur of a thin lens is not scale invariant.

The head is zero-initialised: a fresh FDT focuses at the geometric middle of the depth range with
scale 1.  Training signal comes only through the differentiable lens blur (see
:class:`~lensblur_models.exif_defocus.ExifDefocusPipeline`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from lensblur import LensBlurError

from ..exif import ExifEmbedder, check_exif_tensor
from diffusers.configuration_utils import register_to_config

from ..common import LensBlurModel, ModelConfig, check_transformer_args
from ..nn import PatchEmbed, TokenTransformer, sincos_pos_embed_2d

__all__ = ["FocusDistanceConfig", "FocusDistanceTransformer", "FocusPrediction",
           "depth_range", "load_vit_weights"]


@dataclass
class FocusDistanceConfig(ModelConfig):
    """Architecture of a :class:`FocusDistanceTransformer` (the constructor's arguments).

    Attributes:
        patch_size: patch side in pixels (image sides must be multiples of it).
        dim, depth, heads, mlp_ratio: transformer width, number of blocks, heads, MLP ratio.
        in_channels: channels of the all-in-focus image (depth adds one).
        exif_freqs: Fourier frequencies per EXIF value.
        max_depth_scale: the depth scale lies in ``(1 / max_depth_scale, max_depth_scale)``.

    Presets: ``tiny()`` (a few thousand parameters: patch 4, width 32, 2 blocks), ``small()``
    (ViT-S/16 layout, about 33 M parameters with adaLN), ``base()`` (ViT-B/16, about 130 M).
    """

    patch_size: int = 16
    dim: int = 384
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    in_channels: int = 3
    exif_freqs: int = 6
    max_depth_scale: float = 10.0

    PRESETS = {
        "tiny": dict(patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0),
        "small": dict(patch_size=16, dim=384, depth=12, heads=6),
        "base": dict(patch_size=16, dim=768, depth=12, heads=12),
    }


class FocusPrediction(NamedTuple):
    """Output of :class:`FocusDistanceTransformer` (all ``(B,)`` tensors).

    Attributes:
        focus_distance_m: focus distance in the units of ``depth_scale * depth`` (metres).
        depth_scale: multiply the input depth by it to get metres.
        focus_position: ``t`` in ``(0, 1)``: 0 = nearest depth, 1 = farthest (log scale).
    """

    focus_distance_m: torch.Tensor
    depth_scale: torch.Tensor
    focus_position: torch.Tensor


def depth_range(depth: torch.Tensor):
    """Per-image ``(min, max)`` of a ``(B, 1, H, W)`` depth map, each ``(B,)`` (no gradient)."""
    flat = depth.detach().flatten(1)
    return flat.amin(dim=1), flat.amax(dim=1)


def _check_inputs(image, depth, exif, channels, patch):
    for t, name in ((image, "image"), (depth, "depth")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"`{name}` must be a floating point tensor, got dtype {t.dtype}")
        if t.dim() != 4:
            raise LensBlurError(f"`{name}` must have shape (B, C, H, W), got {tuple(t.shape)}")
    if image.shape[1] != channels:
        raise LensBlurError(f"`image` must have {channels} channels, got shape {tuple(image.shape)}")
    if depth.shape[1] != 1 or depth.shape[0] != image.shape[0] or depth.shape[-2:] != image.shape[-2:]:
        raise LensBlurError(f"`depth` must have shape ({image.shape[0]}, 1, {image.shape[2]}, "
                            f"{image.shape[3]}), got {tuple(depth.shape)}")
    h, w = image.shape[-2:]
    if h % patch or w % patch:
        raise LensBlurError(f"`image` size {h}x{w} must be a multiple of the patch size {patch}")
    d = depth.detach()
    if not bool(torch.isfinite(d).all()) or not bool((d > 0).all()):
        raise LensBlurError("`depth` must be finite and > 0 everywhere")
    check_exif_tensor(exif, "exif", batch=image.shape[0])


class FocusDistanceTransformer(LensBlurModel):
    """Predict a focus distance and a depth scale from an image, its depth and the EXIF.

    Args:
        patch_size, dim, depth, heads, mlp_ratio, in_channels, exif_freqs, max_depth_scale: see
            :class:`FocusDistanceConfig`; ``FocusDistanceTransformer.from_config(
            FocusDistanceConfig.tiny())`` builds a preset.

    Shapes:
        ``image`` ``(B, C, H, W)`` (non-negative; linear or display encoded), ``depth``
        ``(B, 1, H, W)`` > 0 (relative or metric), ``exif`` ``(B, 3)``
        ``[focal_length_mm, f_number, sensor_width_mm]`` -> :class:`FocusPrediction` of ``(B,)``
        tensors.

    Example:
        >>> fdt = FocusDistanceTransformer.from_config(FocusDistanceConfig.tiny())
        >>> depth = torch.linspace(1.0, 4.0, 64).view(1, 1, 8, 8)
        >>> pred = fdt(torch.rand(1, 3, 8, 8), depth, torch.tensor([[50.0, 2.0, 36.0]]))
        >>> round(float(pred.focus_distance_m.detach()), 3)   # zero-initialised head: sqrt(1 * 4)
        2.0
    """

    config_class = FocusDistanceConfig

    @register_to_config
    def __init__(self, patch_size: int = 16, dim: int = 384, depth: int = 6, heads: int = 6,
                 mlp_ratio: float = 4.0, in_channels: int = 3, exif_freqs: int = 6,
                 max_depth_scale: float = 10.0):
        super().__init__()
        check_transformer_args(in_channels=in_channels, patch_size=patch_size, dim=dim, depth=depth, heads=heads)
        if not max_depth_scale > 1.0:
            raise LensBlurError(f"`max_depth_scale` must be > 1, got {max_depth_scale}")
        self.patch_embed = PatchEmbed(in_channels + 1, dim, patch_size)
        self.exif_embed = ExifEmbedder(dim, num_freqs=exif_freqs)
        self.focus_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.exif_type = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.focus_token, std=0.02)
        nn.init.normal_(self.exif_type, std=0.02)
        self.blocks = TokenTransformer(dim, depth, heads, mlp_ratio)
        self.head = nn.Linear(dim, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def prepare_inputs(image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """``(B, C+1, H, W)`` network input: tone-mapped image and normalised log depth.

        The image is compressed by ``x / (1 + x)`` (HDR radiance and display images alike land in
        ``[0, 1)``); the depth becomes ``(log d - log d_min) / (log d_max - log d_min)`` per image,
        which is invariant to the unknown scale of a relative depth map.
        """
        img = image.clamp_min(0)
        img = img / (1.0 + img)
        dmin, dmax = depth_range(depth)
        lo = dmin.log().view(-1, 1, 1, 1)
        span = (dmax.log() - dmin.log()).clamp_min(1e-6).view(-1, 1, 1, 1)
        nd = (depth.log() - lo) / span
        return torch.cat([img, nd.to(img.dtype)], dim=1)

    def forward(self, image: torch.Tensor, depth: torch.Tensor, exif: torch.Tensor) -> FocusPrediction:
        cfg = self.config
        _check_inputs(image, depth, exif, cfg.in_channels, cfg.patch_size)
        x = self.prepare_inputs(image, depth)
        tokens, (gh, gw) = self.patch_embed(x)
        tokens = tokens + sincos_pos_embed_2d(gh, gw, cfg.dim, device=x.device, dtype=tokens.dtype)
        cond = self.exif_embed(exif.to(tokens.dtype))
        b = tokens.shape[0]
        extra = torch.cat([self.focus_token.expand(b, -1, -1), (cond[:, None] + self.exif_type)], dim=1)
        out = self.blocks(torch.cat([extra, tokens], dim=1), cond)
        z = self.head(out[:, 0])  # (B, 2)
        t = torch.sigmoid(z[:, 0])
        scale = torch.exp(torch.tanh(z[:, 1]) * math.log(cfg.max_depth_scale))
        dmin, dmax = depth_range(depth)
        log_focus = (1 - t) * dmin.log().to(t.dtype) + t * dmax.log().to(t.dtype)
        focus = scale * torch.exp(log_focus)
        return FocusPrediction(focus, scale, t)

    @classmethod
    def from_timm(cls, model_name: str, pretrained: bool = True, **overrides) -> "FocusDistanceTransformer":
        """Build an FDT whose patch embedding and blocks start from a ``timm`` ViT.

        Requires the optional ``timm`` package (weights come from its cache: no download is
        attempted when ``HF_HUB_OFFLINE=1``).  See :func:`load_vit_weights` for the mapping.
        """
        try:
            import timm
        except ImportError:
            raise ImportError("FocusDistanceTransformer.from_timm needs the optional `timm` package "
                              "(pip install timm)") from None
        vit = timm.create_model(model_name, pretrained=pretrained)
        blocks = list(vit.blocks)
        cfg = FocusDistanceConfig(patch_size=int(vit.patch_embed.proj.kernel_size[0]), dim=int(vit.embed_dim),
                                  depth=len(blocks), heads=int(blocks[0].attn.num_heads),
                                  mlp_ratio=blocks[0].mlp.fc1.out_features / vit.embed_dim, **overrides)
        model = cls.from_config(cfg)
        load_vit_weights(model, vit)
        return model


@torch.no_grad()
def load_vit_weights(model: FocusDistanceTransformer, vit: nn.Module) -> FocusDistanceTransformer:
    """Copy a standard pre-norm ViT (``timm`` layout) into ``model``, in place; returns it.

    ``vit`` must have ``patch_embed.proj`` (Conv2d over RGB) and ``blocks[i]`` with ``norm1``,
    ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``.  The RGB filters of the patch
    embedding are copied and the depth filter starts at zero; each LayerNorm's affine
    ``(g, b)`` is folded into the Linear that follows it (``W (g x + b) + c = (W g) x + (W b + c)``),
    because the FDT's norms are affine-free and modulated; and every block's adaLN gate bias is
    set to 1 (or to the block's LayerScale ``ls1.gamma`` / ``ls2.gamma`` when it has one), so at
    initialisation each block computes the ViT block ``x + Attn(LN(x)); x + MLP(LN(x))``
    (exactly, up to the FDT's tanh approximation of GELU).
    """
    blocks = list(vit.blocks)
    ours = model.blocks.blocks
    if len(blocks) != len(ours):
        raise LensBlurError(f"`vit` has {len(blocks)} blocks, the model {len(ours)}")
    proj = vit.patch_embed.proj
    w = model.patch_embed.proj.weight
    if proj.weight.shape[0] != w.shape[0] or proj.weight.shape[2:] != w.shape[2:] or proj.weight.shape[1] != 3:
        raise LensBlurError(f"`vit` patch embedding {tuple(proj.weight.shape)} does not fit the model "
                            f"{tuple(w.shape)}")
    w.zero_()
    w[:, :3] = proj.weight
    bias = model.patch_embed.proj.bias
    bias.copy_(proj.bias if proj.bias is not None else torch.zeros_like(bias))

    def fold(norm, lin, dst):
        g = norm.weight if getattr(norm, "weight", None) is not None else torch.ones(lin.in_features)
        b = norm.bias if getattr(norm, "bias", None) is not None else torch.zeros(lin.in_features)
        dst.weight.copy_(lin.weight * g[None, :])
        dst.bias.copy_((lin.bias if lin.bias is not None else 0) + lin.weight @ b)

    dim = model.config.dim
    for src, dst in zip(blocks, ours):
        fold(src.norm1, src.attn.qkv, dst.qkv)
        dst.proj.weight.copy_(src.attn.proj.weight)
        dst.proj.bias.copy_(src.attn.proj.bias)
        fold(src.norm2, src.mlp.fc1, dst.mlp[0])
        dst.mlp[2].weight.copy_(src.mlp.fc2.weight)
        dst.mlp[2].bias.copy_(src.mlp.fc2.bias)
        bias = dst.ada[1].bias
        bias.zero_()
        bias[2 * dim:3 * dim] = _layer_scale(src, "ls1", dim)  # attention gate
        bias[5 * dim:6 * dim] = _layer_scale(src, "ls2", dim)  # MLP gate
    return model


def _layer_scale(block: nn.Module, name: str, dim: int) -> torch.Tensor:
    """The per-channel LayerScale of a timm block branch (``ls1.gamma``), or ones."""
    gamma = getattr(getattr(block, name, None), "gamma", None)
    return torch.ones(dim) if gamma is None else gamma.detach().reshape(dim)

