"""RefocusDiT: a diffusion transformer that refocuses a reference image.

The network predicts the rectified-flow velocity of the *target* latent.  Its token sequence is
the concatenation

    [noisy target tokens (N); reference tokens (N); depth tokens (N); depth flag token (1)]

with a shared 2-D sine/cosine position embedding (so a target token attends to the reference and
depth at the same place) plus a learned segment embedding.  The condition ``(x, y, b)`` (focus
point and bokeh level, all in ``[0, 1]``) is embedded with Fourier features and added to the
timestep embedding, which drives the adaLN-zero modulation of every block — it conditions the
model the way the timestep does.

**Depth dropout.**  ``depth_mask[b] = False`` (or ``depth=None``) removes the depth content of
sample ``b``: its depth tokens carry only position and segment embeddings, and the flag token and
a flag embedding added to the condition tell the model that depth is absent.  Training drops
depth at random, so the model works without a depth map.

The depth map enters as normalised disparity: ``1 / depth`` mapped per sample to ``[-1, 1]``
(min to max), so metric depth, relative depth or any monotone rescaling of it give the same input.

Example:
    >>> import torch
    >>> model = RefocusDiT.from_config(RefocusDiTConfig.tiny())
    >>> x = torch.randn(2, 3, 16, 16)
    >>> v = model(x, torch.rand(2), x, torch.rand(2, 3), depth=torch.rand(2, 1, 16, 16) + 1)
    >>> v.shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lensblur import LensBlurError

from diffusers.configuration_utils import register_to_config

from ..common import LensBlurModel, ModelConfig, check_transformer_args
from ..nn import PatchEmbed, ScalarEmbedder, TimestepEmbedder, TokenTransformer, sincos_pos_embed_2d, unpatchify

__all__ = ["RefocusDiTConfig", "RefocusDiT", "normalized_disparity"]


@dataclass
class RefocusDiTConfig(ModelConfig):
    """Architecture of :class:`RefocusDiT` (the constructor's arguments).

    Attributes:
        in_channels: channels of the codec latent (3 for pixel space, 16 for the FLUX VAE).
        patch_size: latent pixels per token side.
        dim, depth, heads, mlp_ratio: transformer width, blocks, attention heads, MLP ratio.
        cond_freqs: Fourier frequencies of the ``(x, y, b)`` embedding.

    Presets: ``tiny()`` (~0.2 M parameters, pixel space), ``small()`` (DiT-S/2, ~33 M, 16-channel
    latents), ``base()`` (DiT-B/2, ~130 M).
    """

    in_channels: int = 3
    patch_size: int = 2
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    cond_freqs: int = 8

    PRESETS = {
        "tiny": dict(in_channels=3, patch_size=2, dim=64, depth=2, heads=4),
        "small": dict(in_channels=16, patch_size=2, dim=384, depth=12, heads=6),
        "base": dict(in_channels=16, patch_size=2, dim=768, depth=12, heads=12),
    }


def normalized_disparity(depth: torch.Tensor) -> torch.Tensor:
    """``1 / depth`` rescaled per sample to ``[-1, 1]`` (constant depth maps to 0).

    Example:
        >>> import torch
        >>> normalized_disparity(torch.tensor([[[[1.0, 2.0, 4.0]]]]))
        tensor([[[[ 1.0000, -0.3333, -1.0000]]]])
    """
    disp = 1.0 / depth
    lo = disp.amin(dim=(1, 2, 3), keepdim=True)
    hi = disp.amax(dim=(1, 2, 3), keepdim=True)
    return (2 * (disp - lo) / (hi - lo).clamp_min(1e-12) - 1) * (hi > lo)


class RefocusDiT(LensBlurModel):
    """Refocusing diffusion transformer (see the module docstring).

    Args:
        in_channels, patch_size, dim, depth, heads, mlp_ratio, cond_freqs: see
            :class:`RefocusDiTConfig`; ``RefocusDiT.from_config(RefocusDiTConfig.tiny())`` builds
            a preset.

    Forward shapes:
        ``x_t`` ``(B, c, h, w)`` noisy target latent, ``t`` ``(B,)`` flow time in ``[0, 1]``,
        ``reference`` ``(B, c, h, w)`` reference latent, ``condition`` ``(B, 3)`` = ``(x, y, b)``,
        ``depth`` ``(B, 1, H, W)`` positive depth at any resolution (resized to the latent) or
        ``None``, ``depth_mask`` ``(B,)`` bool (True = use depth) -> velocity ``(B, c, h, w)``.
    """

    config_class = RefocusDiTConfig

    @register_to_config
    def __init__(self, in_channels: int = 3, patch_size: int = 2, dim: int = 64, depth: int = 2,
                 heads: int = 4, mlp_ratio: float = 4.0, cond_freqs: int = 8):
        super().__init__()
        check_transformer_args(in_channels=in_channels, patch_size=patch_size, dim=dim, depth=depth,
                               heads=heads)
        c, p, d = in_channels, patch_size, dim
        self.embed_target = PatchEmbed(c, d, p)
        self.embed_reference = PatchEmbed(c, d, p)
        self.embed_depth = PatchEmbed(1, d, p)
        self.segment = nn.Parameter(torch.randn(3, d) * 0.02)
        self.flag_token = nn.Parameter(torch.randn(2, d) * 0.02)  # [no depth, depth]
        self.flag_cond = nn.Embedding(2, d)
        nn.init.zeros_(self.flag_cond.weight)
        self.t_embed = TimestepEmbedder(d)
        self.c_embed = ScalarEmbedder(3, d, num_freqs=cond_freqs, max_freq=32.0)
        self.transformer = TokenTransformer(d, depth, heads, mlp_ratio)
        self.head = nn.Linear(d, p * p * c)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _check(self, name: str, x, shape_like: Optional[torch.Tensor] = None) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
        if shape_like is not None and x.shape != shape_like.shape:
            raise LensBlurError(f"`{name}` must have shape {tuple(shape_like.shape)}, got {tuple(x.shape)}")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, reference: torch.Tensor,
                condition: torch.Tensor, depth: Optional[torch.Tensor] = None,
                depth_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check("x_t", x_t)
        c, p = self.config.in_channels, self.config.patch_size
        if x_t.dim() != 4 or x_t.shape[1] != c:
            raise LensBlurError(f"`x_t` must have shape (B, {c}, h, w), got {tuple(x_t.shape)}")
        self._check("reference", reference, x_t)
        b, _, h, w = x_t.shape
        self._check("t", t)
        if t.shape != (b,):
            raise LensBlurError(f"`t` must have shape ({b},), got {tuple(t.shape)}")
        self._check("condition", condition)
        if condition.shape != (b, 3):
            raise LensBlurError(f"`condition` must have shape ({b}, 3), got {tuple(condition.shape)}")
        if depth_mask is None:
            depth_mask = torch.full((b,), depth is not None, dtype=torch.bool, device=x_t.device)
        elif depth_mask.shape != (b,):
            raise LensBlurError(f"`depth_mask` must have shape ({b},), got {tuple(depth_mask.shape)}")
        depth_mask = depth_mask.to(device=x_t.device, dtype=torch.bool)
        if depth is None:
            if bool(depth_mask.any()):
                raise LensBlurError("`depth_mask` marks depth as present but `depth` is None")
            dmap = x_t.new_zeros(b, 1, h, w)
        else:
            self._check("depth", depth)
            if depth.dim() != 4 or depth.shape[0] != b or depth.shape[1] != 1:
                raise LensBlurError(f"`depth` must have shape ({b}, 1, H, W), got {tuple(depth.shape)}")
            dmap = normalized_disparity(depth.clamp_min(1e-12).to(x_t.dtype))
            if dmap.shape[-2:] != (h, w):
                dmap = F.interpolate(dmap, size=(h, w), mode="area" if dmap.shape[-1] >= w else "bilinear")
            dmap = dmap * depth_mask.view(b, 1, 1, 1)

        tgt, (gh, gw) = self.embed_target(x_t)
        ref, _ = self.embed_reference(reference)
        dep, _ = self.embed_depth(dmap)
        dep = dep * depth_mask.view(b, 1, 1)  # dropped depth: no content, not even the bias
        pos = sincos_pos_embed_2d(gh, gw, self.config.dim, device=x_t.device, dtype=tgt.dtype)
        flag = self.flag_token[depth_mask.long()][:, None]
        tokens = torch.cat([tgt + pos + self.segment[0], ref + pos + self.segment[1],
                            dep + pos + self.segment[2], flag], dim=1)
        cond = self.t_embed(t) + self.c_embed(condition) + self.flag_cond(depth_mask.long())
        out = self.transformer(tokens, cond)[:, : gh * gw]
        return unpatchify(self.head(out), p, c, gh, gw)
