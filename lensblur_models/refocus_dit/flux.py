"""The refocusing conditioning on a pretrained ``diffusers`` FLUX transformer, trained with LoRA.

:class:`FluxRefocusAdapter` wraps a ``diffusers.FluxTransformer2DModel`` (loaded from a local
checkpoint; nothing is downloaded) and exposes the same velocity-model interface as
:class:`~.model.RefocusDiT`, so :func:`~.training.training_step` and :func:`~.pipeline.refocus`
work unchanged:

* latents ``(B, c, h, w)`` are packed into FLUX's 2x2 tokens (``in_channels = 4 c``), exactly
  as the FLUX pipelines do;
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
  modules are trained.

Real use: ``FluxRefocusAdapter.from_pretrained(local_dir, subfolder="transformer")``.  With a
tiny random transformer:

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> base = FluxTransformer2DModel(in_channels=12, num_layers=1, num_single_layers=1,
    ...     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
    ...     pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    >>> model = FluxRefocusAdapter(base, lora_rank=4)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> model(x, torch.rand(1), x, torch.rand(1, 3)).shape
    torch.Size([1, 3, 8, 8])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from lensblur import LensBlurError

from ..nn import ScalarEmbedder
from .model import normalized_disparity

__all__ = ["FluxRefocusAdapter", "pack_latents", "unpack_latents"]

ADAPTER_CONFIG = "refocus_adapter.json"
ADAPTER_WEIGHTS = "refocus_adapter.safetensors"
DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """FLUX packing: ``(B, c, h, w)`` -> ``(B, (h/2)(w/2), 4c)``, each token ``(c, 2, 2)``.

    Example:
        >>> import torch
        >>> z = torch.randn(1, 2, 4, 6)
        >>> torch.equal(unpack_latents(pack_latents(z), 4, 6), z)
        True
    """
    b, c, h, w = z.shape
    if h % 2 or w % 2:
        raise LensBlurError(f"latent size {h}x{w} must be even for FLUX 2x2 packing")
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``(B, (h/2)(w/2), 4c)`` -> ``(B, c, h, w)``."""
    b, n, d = tokens.shape
    c = d // 4
    z = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, c, h, w)


def _image_ids(gh: int, gw: int, segment: int, device, dtype) -> torch.Tensor:
    ids = torch.zeros(gh, gw, 3, device=device, dtype=dtype)
    ids[..., 0] = segment
    ids[..., 1] = torch.arange(gh, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(gw, device=device, dtype=dtype)[None, :]
    return ids.reshape(gh * gw, 3)


class FluxRefocusAdapter(nn.Module):
    """Refocusing velocity model on a FLUX transformer (see the module docstring).

    Args:
        transformer: a ``diffusers.FluxTransformer2DModel`` (its weights are frozen).
        lora_rank: LoRA rank (``0`` = no LoRA: only the new modules train).
        lora_alpha: LoRA scaling numerator (default ``lora_rank``).
        lora_targets: module names that get LoRA.
        cond_freqs: Fourier frequencies of the ``(x, y, b)`` embedding.
        guidance: value fed to guidance-distilled checkpoints (FLUX-dev); ignored otherwise.
    """

    def __init__(self, transformer, lora_rank: int = 16, lora_alpha: Optional[float] = None,
                 lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS, cond_freqs: int = 8,
                 guidance: float = 1.0):
        super().__init__()
        from diffusers import FluxTransformer2DModel

        if not isinstance(transformer, FluxTransformer2DModel):
            raise TypeError("`transformer` must be a diffusers.FluxTransformer2DModel, "
                            f"got {type(transformer).__name__}")
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
            raise LensBlurError(f"`lora_rank` must be an int >= 0, got {lora_rank!r}")
        cfg = transformer.config
        if cfg.in_channels % 4:
            raise LensBlurError(f"the transformer's in_channels ({cfg.in_channels}) must be 4 x latent channels")
        self.transformer = transformer.requires_grad_(False)
        self.latent_channels = cfg.in_channels // 4
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha or lora_rank or 1)
        self.lora_targets = tuple(lora_targets)
        self.cond_freqs, self.guidance = int(cond_freqs), float(guidance)
        self.source = None  # (path, subfolder) when loaded from a checkpoint
        if lora_rank > 0:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=self.lora_alpha,
                                               target_modules=list(self.lora_targets),
                                               init_lora_weights=True))
        self.depth_proj = nn.Linear(4, cfg.in_channels)
        nn.init.zeros_(self.depth_proj.weight)
        nn.init.zeros_(self.depth_proj.bias)
        self.cond_embed = ScalarEmbedder(3, cfg.pooled_projection_dim, num_freqs=cond_freqs,
                                         max_freq=32.0)
        self.flag_tokens = nn.Parameter(torch.randn(2, cfg.joint_attention_dim) * 0.02)
        param = next(transformer.parameters())
        self.to(device=param.device, dtype=param.dtype)

    # -------------------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], subfolder: Optional[str] = None,
                        torch_dtype: Optional[torch.dtype] = None, **kwargs) -> "FluxRefocusAdapter":
        """Build from a local ``FluxTransformer2DModel`` checkpoint (``subfolder="transformer"`` for
        a full FLUX pipeline folder); ``kwargs`` go to the constructor (``lora_rank`` ...)."""
        from diffusers import FluxTransformer2DModel

        path = os.fspath(path)
        if not os.path.isdir(path):
            raise LensBlurError(f"`path` must be a local checkpoint directory, got {path!r}")
        base = FluxTransformer2DModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype)
        model = cls(base, **kwargs)
        model.source = (path, subfolder)
        return model

    def trainable_state_dict(self) -> dict:
        """The trained tensors only: LoRA weights and the new conditioning modules."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.state_dict().items() if n in names}

    def save_pretrained(self, path: Union[str, os.PathLike]) -> Path:
        """Write the trained tensors and the adapter config (with the base checkpoint location)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {"lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
               "lora_targets": list(self.lora_targets), "cond_freqs": self.cond_freqs,
               "guidance": self.guidance,
               "base_path": self.source[0] if self.source else None,
               "base_subfolder": self.source[1] if self.source else None}
        with open(path / ADAPTER_CONFIG, "w") as f:
            json.dump(cfg, f, indent=2)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.trainable_state_dict().items()},
                  str(path / ADAPTER_WEIGHTS))
        return path

    @classmethod
    def load_adapter(cls, path: Union[str, os.PathLike], base_path: Optional[str] = None,
                     base_subfolder: Optional[str] = None,
                     torch_dtype: Optional[torch.dtype] = None) -> "FluxRefocusAdapter":
        """Rebuild an adapter saved by :meth:`save_pretrained` on its base checkpoint (or on
        ``base_path``)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
            raise LensBlurError(f"`path` {str(path)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
        with open(path / ADAPTER_CONFIG) as f:
            cfg = json.load(f)
        base = base_path or cfg.pop("base_path")
        sub = base_subfolder if base_path else cfg.pop("base_subfolder")
        cfg.pop("base_path", None), cfg.pop("base_subfolder", None)
        if base is None:
            raise LensBlurError("the adapter does not record its base checkpoint: pass `base_path`")
        model = cls.from_pretrained(base, subfolder=sub, torch_dtype=torch_dtype, **cfg)
        state = load_file(str(path / ADAPTER_WEIGHTS))
        expected = set(model.trainable_state_dict())
        if set(state) != expected:
            raise LensBlurError(f"adapter weights in {str(path)!r} do not match this configuration "
                                f"(missing {sorted(expected - set(state))[:3]}, "
                                f"unexpected {sorted(set(state) - expected)[:3]})")
        model.load_state_dict(state, strict=False)
        return model

    # -------------------------------------------------------------------------- forward

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
        dtype, device = self.depth_proj.weight.dtype, x_t.device
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
        keep = depth_mask.view(b, 1, 1).to(dtype)
        tgt = pack_latents(x_t.to(dtype))
        ref = pack_latents(reference.to(dtype))
        dep = self.depth_proj(pack_latents(dmap.to(dtype))) * keep
        n = tgt.shape[1]
        gh, gw = h // 2, w // 2
        ids = torch.cat([_image_ids(gh, gw, s, device, dtype) for s in range(3)])
        txt = self.flag_tokens[depth_mask.long()][:, None]  # (B, 1, joint_attention_dim)
        txt_ids = torch.zeros(1, 3, device=device, dtype=dtype)
        kwargs = {}
        if self.transformer.config.guidance_embeds:
            kwargs["guidance"] = torch.full((b,), self.guidance, device=device, dtype=dtype)
        out = self.transformer(hidden_states=torch.cat([tgt, ref, dep], dim=1),
                               encoder_hidden_states=txt.to(dtype),
                               pooled_projections=self.cond_embed(condition.to(dtype)),
                               timestep=t.to(dtype), img_ids=ids, txt_ids=txt_ids,
                               return_dict=False, **kwargs)[0]
        return unpack_latents(out[:, :n], h, w).to(x_t.dtype)
