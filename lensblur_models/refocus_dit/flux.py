"""The refocusing conditioning on a pretrained ``diffusers`` FLUX transformer, trained with LoRA.

:class:`FluxRefocusDiT` (a :class:`~lensblur_models.common.flux.FluxAdapterBase`) wraps a
``diffusers.FluxTransformer2DModel`` (loaded from a local checkpoint; nothing is downloaded) and
exposes the same velocity-model interface as
:class:`~.model.RefocusDiT`, so :func:`~.training.training_step` and :func:`~.pipeline.refocus`
work unchanged:

* latents ``(B, c, h, w)`` are packed into FLUX's 2x2 tokens (``in_channels = 4 c``) by the base;
* token concatenation: the image stream is ``[noisy target; reference; depth]``; the three
  segments share the rotary (row, column) ids and differ in the first rotary axis (0, 1, 2);
* the depth map (normalised disparity, see :func:`~.model.normalized_disparity`) is packed the
  same way and projected to ``in_channels`` by a new zero-initialised Linear;
* ``(x, y, b)`` is embedded by a new :class:`~lensblur_models.nn.ScalarEmbedder` into FLUX's
  ``pooled_projections``, which FLUX adds to the timestep embedding that drives its adaLN — the
  condition acts like the timestep;
* the text stream is one learned token per sample, chosen by the depth flag (depth present or
  dropped): the depth-dropout flag token;
* the base weights are frozen; LoRA adapters (``peft``) on the attention projections and the new
  modules are trained (the base's loading, LoRA and adapter format).

Real use: ``FluxRefocusDiT.from_pretrained(local_dir, subfolder="transformer",
torch_dtype=torch.bfloat16)``.  With a tiny random transformer:

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> base = FluxTransformer2DModel(in_channels=12, num_layers=1, num_single_layers=1,
    ...     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
    ...     pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    >>> model = FluxRefocusDiT(base, lora_rank=4)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> model(x, torch.rand(1), x, torch.rand(1, 3)).shape
    torch.Size([1, 3, 8, 8])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lensblur import LensBlurError

from ..common.flux import DEFAULT_LORA_TARGETS, FluxAdapterBase, pack_latents, unpack_latents
from ..nn import ScalarEmbedder
from .model import normalized_disparity

__all__ = ["FluxRefocusDiT"]


class FluxRefocusDiT(FluxAdapterBase):
    """Refocusing velocity model on a FLUX transformer (see the module docstring).

    Args:
        transformer: a ``diffusers.FluxTransformer2DModel`` (its weights are frozen).
        lora_rank, lora_alpha, lora_targets, guidance: see
            :class:`~lensblur_models.common.flux.FluxAdapterBase`.
        cond_freqs: Fourier frequencies of the ``(x, y, b)`` embedding.
    """

    def __init__(self, transformer, lora_rank: int = 16, lora_alpha: Optional[float] = None,
                 lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS, cond_freqs: int = 8,
                 guidance: float = 1.0):
        super().__init__(transformer, lora_rank, lora_alpha, lora_targets, guidance)
        cfg = transformer.config
        self.settings = {"cond_freqs": int(cond_freqs)}
        self.depth_proj = nn.Linear(4, cfg.in_channels)
        nn.init.zeros_(self.depth_proj.weight)
        nn.init.zeros_(self.depth_proj.bias)
        self.cond_embed = ScalarEmbedder(3, cfg.pooled_projection_dim, num_freqs=int(cond_freqs), max_freq=32.0)
        self.flag_tokens = nn.Parameter(torch.randn(2, cfg.joint_attention_dim) * 0.02)
        self.finish_init()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, reference: torch.Tensor,
                condition: torch.Tensor, depth: Optional[torch.Tensor] = None,
                depth_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        c = self.latent_channels
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 4 or x_t.shape[1] != c:
            raise LensBlurError(f"`x_t` must have shape (B, {c}, h, w), got {tuple(getattr(x_t, 'shape', ()))}")
        if reference.shape != x_t.shape:
            raise LensBlurError(f"`reference` must have shape {tuple(x_t.shape)}, got {tuple(reference.shape)}")
        b, _, h, w = x_t.shape
        if t.shape != (b,) or condition.shape != (b, 3):
            raise LensBlurError(f"`t` must be ({b},) and `condition` ({b}, 3); got {tuple(t.shape)}, "
                                f"{tuple(condition.shape)}")
        device = x_t.device
        if depth_mask is None:
            depth_mask = torch.full((b,), depth is not None, dtype=torch.bool, device=device)
        depth_mask = depth_mask.to(device=device, dtype=torch.bool)
        if depth is None:
            if bool(depth_mask.any()):
                raise LensBlurError("`depth_mask` marks depth as present but `depth` is None")
            dmap = x_t.new_zeros(b, 1, h, w)
        else:
            if depth.dim() != 4 or depth.shape[:2] != (b, 1):
                raise LensBlurError(f"`depth` must have shape ({b}, 1, H, W), got {tuple(depth.shape)}")
            dmap = normalized_disparity(depth.clamp_min(1e-12).float())
            if dmap.shape[-2:] != (h, w):
                dmap = F.interpolate(dmap, size=(h, w), mode="area" if dmap.shape[-1] >= w else "bilinear")
        keep = depth_mask.view(b, 1, 1).float()
        dep = self.depth_proj(pack_latents(dmap.float())) * keep
        text = self.flag_tokens[depth_mask.long()][:, None]  # (B, 1, joint_attention_dim)
        out = self.run_transformer([pack_latents(x_t), pack_latents(reference), dep], (h // 2, w // 2), text,
                                   self.cond_embed(condition.float()), t)
        return unpack_latents(out, h, w).to(x_t.dtype)
