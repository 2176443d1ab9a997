r"""DeblurNet and BokehNet: image-to-image flow transformers conditioned by token concatenation.

Both networks are *bridges* between two images (rectified flow from a source image to a target
image, as in image-to-image flow matching): with source :math:`x_0`, target :math:`x_1` and
:math:`t \in [0, 1]`

.. math::

    x_t = (1 - t)\, x_0 + t\, x_1 + \sigma \sqrt{t (1 - t)}\, \varepsilon, \qquad
    v_\theta(x_t, t, \text{cond}) \approx x_1 - x_0 ,

and sampling integrates :math:`\dot x = v_\theta` from :math:`x_0` with Euler steps (one step is a
direct prediction; more steps refine it).  The last layer is zero-initialised, so an untrained network
returns its source unchanged.

**Token concatenation.**  The sequence fed to one shared :class:`~lensblur_models.nn.TokenTransformer`
is ``[state tokens | condition tokens ...]``: the patchified state :math:`x_t`, then each condition
as its own token set (spatially aligned conditions share the state's 2-D sine/cosine positions and
are told apart by a learned *type* embedding; aperture tokens carry a learned position).  Only the
state tokens are read out, by a linear patch head followed by a small convolutional pixel decoder
that also sees the full-resolution state and condition images (``config.head_channels``).

* :class:`DeblurNet` — source: the defocused photo; condition: the defocused photo (kept in view
  while the state moves); target: the all-in-focus image (AIF).
* :class:`BokehNet` — source: the AIF; conditions: the AIF, the defocus map
  ``D / max_coc_px`` (see :func:`lensblur_models.defocus_map`) and the aperture-shape tokens
  (:func:`~lensblur_models.genrefocus.tokens.aperture_tokens`); target: the defocused image.

Images are ``(B, C, H, W)``; any ``H, W`` works (inputs are reflect-padded to a multiple of the
patch and cropped back).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lensblur import Aperture, LensBlurError

from diffusers.configuration_utils import register_to_config

from .. import nn as lbnn
from ..common import LensBlurModel, ModelConfig, check_int, check_pair, check_tensor4, check_transformer_args
from .tokens import aperture_tokens

__all__ = ["DeblurNetConfig", "BokehNetConfig", "DeblurNet", "BokehNet", "ApertureEncoder", "bridge_loss",
           "bridge_sample", "bridge_matching_loss"]


@dataclasses.dataclass
class DeblurNetConfig(ModelConfig):
    """Architecture of :class:`DeblurNet` (the constructor's arguments).

    Attributes:
        in_channels: image channels.  patch_size: token patch side (pixels).  dim, depth, heads,
        mlp_ratio: transformer width, blocks, attention heads, MLP ratio.
        bridge_noise: :math:`\\sigma` of the training bridge (0 = deterministic bridge).
        head_channels: width of the convolutional pixel decoder that turns the state tokens
            (unpatchified to full resolution) plus the state and condition images into the
            velocity; 0 = a plain linear patch head.

    Presets: ``tiny()`` (about 70 k parameters: CPU tests and the example run), ``small()``
    (ViT-S/8 width, 6 blocks), ``base()`` (DiT-S sized, about 22 M parameters, for GPUs).
    """

    in_channels: int = 3
    patch_size: int = 4
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    bridge_noise: float = 0.0
    head_channels: int = 16

    PRESETS = {
        "tiny": dict(patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0),
        "small": dict(patch_size=8, dim=384, depth=6, heads=6, bridge_noise=0.05, head_channels=32),
        "base": dict(patch_size=8, dim=384, depth=12, heads=6, mlp_ratio=4.0, bridge_noise=0.05,
                     head_channels=32),
    }


@dataclasses.dataclass
class BokehNetConfig(DeblurNetConfig):
    """Architecture of :class:`BokehNet` (adds the defocus-map and aperture-token settings).

    Attributes:
        max_coc_px: defocus maps are divided by this before embedding (pixels).
        aperture_size, aperture_patch: canvas and patch sides of the aperture tokens.
    """

    max_coc_px: float = 16.0
    aperture_size: int = 16
    aperture_patch: int = 4

    PRESETS = {
        "tiny": dict(patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0, max_coc_px=8.0),
        "small": dict(patch_size=8, dim=384, depth=6, heads=6, bridge_noise=0.05, head_channels=32,
                      max_coc_px=32.0, aperture_size=32, aperture_patch=8),
        "base": dict(patch_size=8, dim=384, depth=12, heads=6, mlp_ratio=4.0, bridge_noise=0.05,
                     head_channels=32, max_coc_px=48.0, aperture_size=32, aperture_patch=8),
    }


def _time(t, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    return t.expand(like.shape[0]) if t.dim() == 0 else t


def bridge_sample(source: torch.Tensor, steps: int, velocity_fn) -> torch.Tensor:
    """Integrate ``dx/dt = velocity_fn(x, t)`` from ``x(0) = source`` to ``t = 1`` (Euler)."""
    check_int(steps, "steps")
    x = source
    for i in range(steps):
        t = torch.full((source.shape[0],), i / steps, device=source.device)
        x = x + velocity_fn(x, t).to(x.dtype) / steps
    return x


def bridge_matching_loss(source: torch.Tensor, target: torch.Tensor, velocity_fn, sigma: float = 0.0,
                         t=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``MSE(velocity_fn(x_t, t), target - source)`` at bridge times ``t`` (random if None)."""
    b = source.shape[0]
    dev = source.device if generator is None else "cpu"
    t = _time(torch.rand(b, generator=generator, device=dev) if t is None else t, source)
    tt = t.view(b, 1, 1, 1).to(source.dtype)
    x_t = (1 - tt) * source + tt * target
    if sigma > 0:
        noise = torch.randn(source.shape, generator=generator, device=dev).to(source)
        x_t = x_t + sigma * (tt * (1 - tt)).sqrt() * noise
    return F.mse_loss(velocity_fn(x_t, t).to(source.dtype), target - source)


class ApertureEncoder(nn.Module):
    """Project raw aperture tokens ``(B, N, p*p)`` to ``(B, N, dim)`` with learned positions."""

    def __init__(self, size: int, patch: int, dim: int):
        super().__init__()
        self.size, self.patch = size, patch
        n = (size // patch) ** 2
        self.proj = nn.Linear(patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(n, dim) * 0.02)

    def forward(self, aperture, batch: int, device, dtype) -> torch.Tensor:
        tok = aperture_tokens(aperture, batch, size=self.size, patch=self.patch, device=device,
                              dtype=dtype)
        return self.proj(tok) + self.pos


class _BridgeTransformer(LensBlurModel):
    """Shared machinery: state/condition tokens, transformer, zero-initialised pixel head."""

    config_class = DeblurNetConfig

    def __init__(self, in_channels: int, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 bridge_noise: float, head_channels: int, cond_channels: Sequence[int]) -> None:
        super().__init__()
        check_transformer_args(in_channels=in_channels, patch_size=patch_size, dim=dim, depth=depth, heads=heads)
        check_int(head_channels, "head_channels", minimum=0)
        if not bridge_noise >= 0:
            raise LensBlurError(f"`bridge_noise` must be >= 0, got {bridge_noise}")
        c, p, d = in_channels, patch_size, dim
        self.state_embed = lbnn.PatchEmbed(c, d, p)
        self.cond_embeds = nn.ModuleList(lbnn.PatchEmbed(ch, d, p) for ch in cond_channels)
        self.type_embed = nn.Parameter(torch.randn(1 + len(self.cond_embeds) + 1, d) * 0.02)
        self.time_embed = lbnn.TimestepEmbedder(d)
        self.transformer = lbnn.TokenTransformer(d, depth, heads, mlp_ratio)
        hc = head_channels
        if hc > 0:
            # pixel decoder: token features at full resolution + the state and conditions -> velocity
            self.head = nn.Linear(d, p * p * hc)
            in_ch = hc + c + sum(cond_channels)
            self.refine = nn.Sequential(nn.Conv2d(in_ch, 2 * hc, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(2 * hc, 2 * hc, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(2 * hc, c, 3, padding=1))
            last = self.refine[-1]
        else:
            self.head = nn.Linear(d, p * p * c)
            self.refine = None
            last = self.head
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


    # -- helpers -------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        h, w = x.shape[-2:]
        ph, pw = (-h) % p, (-w) % p
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if (h > ph and w > pw) else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _velocity(self, state: torch.Tensor, t: torch.Tensor, conds: Sequence[torch.Tensor],
                  extra_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        h, w = state.shape[-2:]
        dtype = self.head.weight.dtype
        state_p = self._pad(state.to(dtype))
        conds_p = [self._pad(c.to(dtype)) for c in conds]
        tok, (gh, gw) = self.state_embed(state_p)
        pos = lbnn.sincos_pos_embed_2d(gh, gw, self.config.dim, device=tok.device, dtype=tok.dtype)
        seq = [tok + pos + self.type_embed[0]]
        for i, (emb, c) in enumerate(zip(self.cond_embeds, conds_p)):
            ctok, _ = emb(c)
            seq.append(ctok + pos + self.type_embed[1 + i])
        if extra_tokens is not None:
            seq.append(extra_tokens + self.type_embed[-1])
        cond_vec = self.time_embed(t)
        out = self.transformer(torch.cat(seq, dim=1), cond_vec)[:, : gh * gw]
        if self.refine is None:
            v = lbnn.unpatchify(self.head(out), self.config.patch_size, self.config.in_channels, gh, gw)
        else:
            feat = lbnn.unpatchify(self.head(out), self.config.patch_size, self.config.head_channels, gh, gw)
            v = self.refine(torch.cat([feat, state_p, *conds_p], dim=1))
        return v[..., :h, :w]

    def _sample(self, source: torch.Tensor, steps: int, velocity_fn) -> torch.Tensor:
        return bridge_sample(source, steps, velocity_fn)

    def _bridge_loss(self, source, target, velocity_fn, t=None, generator=None) -> torch.Tensor:
        return bridge_matching_loss(source, target, velocity_fn, self.config.bridge_noise, t, generator)


class DeblurNet(_BridgeTransformer):
    """Recover the all-in-focus image from a defocused photo.

    Shapes: ``image`` ``(B, C, H, W)`` -> AIF ``(B, C, H, W)`` (same encoding as training data).

    Example:
        >>> net = DeblurNet.from_config(DeblurNetConfig.tiny())
        >>> img = torch.rand(1, 3, 12, 16)
        >>> torch.equal(net(img), img)   # zero-initialised head: identity before training
        True
    """

    config_class = DeblurNetConfig

    @register_to_config
    def __init__(self, in_channels: int = 3, patch_size: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, bridge_noise: float = 0.0, head_channels: int = 16) -> None:
        super().__init__(in_channels, patch_size, dim, depth, heads, mlp_ratio, bridge_noise, head_channels,
                         cond_channels=(in_channels,))

    def velocity(self, state: torch.Tensor, t, image: torch.Tensor) -> torch.Tensor:
        """Bridge velocity at ``state`` (``(B, C, H, W)``), time ``t`` (float or ``(B,)``)."""
        return self._velocity(state, _time(t, state), [image])

    def _check(self, image):
        check_tensor4(image, "image", self.config.in_channels)

    def forward(self, image: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """Deblur ``image`` with ``steps`` Euler steps of the bridge."""
        self._check(image)
        return self._sample(image, steps, lambda x, t: self.velocity(x, t, image))

    def loss(self, defocused: torch.Tensor, sharp: torch.Tensor, t=None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Bridge-matching loss for ``(defocused, AIF)`` pairs; ``t`` random in [0, 1) if None."""
        self._check(defocused)
        check_tensor4(sharp, "sharp", self.config.in_channels)
        check_pair(defocused, sharp, "defocused", "sharp")
        return self._bridge_loss(defocused, sharp, lambda x, tt: self.velocity(x, tt, defocused), t, generator)


class BokehNet(_BridgeTransformer):
    """Render the defocus blur asked for by a defocus map (and an aperture shape) from an AIF.

    ``bokeh_net(aif, defocus_map, aperture)`` has the same signature as the physical renderer
    :class:`~lensblur_models.genrefocus.pipeline.PhysicalBokeh`, so either can finish
    :func:`~lensblur_models.genrefocus.pipeline.refocus`.

    Shapes: ``aif`` ``(B, C, H, W)``, ``defocus_map`` ``(B, 1, H, W)`` coc diameter in pixels
    (>= 0), ``aperture`` a :class:`lensblur.Aperture`, ``None`` (disk) or one per batch item
    -> ``(B, C, H, W)``.

    Example:
        >>> net = BokehNet.from_config(BokehNetConfig.tiny())
        >>> aif, dmap = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8) * 4
        >>> net(aif, dmap, Aperture.polygon(6)).shape
        torch.Size([2, 3, 8, 8])
    """

    config_class = BokehNetConfig

    @register_to_config
    def __init__(self, in_channels: int = 3, patch_size: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, bridge_noise: float = 0.0, head_channels: int = 16,
                 max_coc_px: float = 16.0, aperture_size: int = 16, aperture_patch: int = 4) -> None:
        check_int(aperture_size, "aperture_size")
        check_int(aperture_patch, "aperture_patch")
        if aperture_size % aperture_patch:
            raise LensBlurError("`aperture_size` must be a multiple of `aperture_patch`")
        if not max_coc_px > 0:
            raise LensBlurError(f"`max_coc_px` must be > 0, got {max_coc_px}")
        super().__init__(in_channels, patch_size, dim, depth, heads, mlp_ratio, bridge_noise, head_channels,
                         cond_channels=(in_channels, 1))
        self.aperture_encoder = ApertureEncoder(aperture_size, aperture_patch, dim)

    def velocity(self, state, t, aif, defocus_map, aperture=None) -> torch.Tensor:
        """Bridge velocity at ``state`` given the AIF, defocus map and aperture."""
        ap = self.aperture_encoder(aperture, state.shape[0], state.device, self.head.weight.dtype)
        dnorm = defocus_map / self.config.max_coc_px
        return self._velocity(state, _time(t, state), [aif, dnorm], extra_tokens=ap)

    def _check(self, aif, defocus_map, aperture):
        check_tensor4(aif, "aif", self.config.in_channels)
        check_tensor4(defocus_map, "defocus_map", 1, nonnegative=True)
        check_pair(aif, defocus_map, "aif", "defocus_map")
        if isinstance(aperture, (list, tuple)) and len(aperture) != aif.shape[0]:
            raise LensBlurError(f"`aperture` has {len(aperture)} entries for a batch of {aif.shape[0]}")
        if not (aperture is None or isinstance(aperture, (Aperture, list, tuple))):
            raise TypeError(f"`aperture` must be a lensblur.Aperture, None or a list, got {type(aperture).__name__}")

    def forward(self, aif: torch.Tensor, defocus_map: torch.Tensor, aperture=None, steps: int = 1) -> torch.Tensor:
        """Render the blur of ``defocus_map`` with ``steps`` Euler steps of the bridge."""
        self._check(aif, defocus_map, aperture)
        return self._sample(aif, steps, lambda x, t: self.velocity(x, t, aif, defocus_map, aperture))

    def loss(self, aif, defocus_map, aperture, target, t=None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Bridge-matching loss for ``(AIF, defocus map, aperture, target)`` quadruples."""
        self._check(aif, defocus_map, aperture)
        check_tensor4(target, "target", self.config.in_channels)
        check_pair(aif, target, "aif", "target")
        return self._bridge_loss(aif, target, lambda x, tt: self.velocity(x, tt, aif, defocus_map, aperture),
                                 t, generator)


def bridge_loss(net: _BridgeTransformer, batch: dict, t=None, generator=None) -> torch.Tensor:
    """The training loss of ``net`` on a batch from :mod:`~lensblur_models.genrefocus.data`."""
    if isinstance(net, BokehNet):
        return net.loss(batch["aif"], batch["defocus_map"], batch["aperture"], batch["target"], t, generator)
    if isinstance(net, DeblurNet):
        return net.loss(batch["defocused"], batch["aif"], t, generator)
    raise TypeError(f"`net` must be a DeblurNet or a BokehNet, got {type(net).__name__}")
