"""DeblurNet / BokehNet on a pretrained FLUX-style transformer, fine-tuned with LoRA.

:class:`FluxRefocusAdapter` wraps a :class:`diffusers.FluxTransformer2DModel` loaded from a
**local** directory (no download) and trains it as the same image-to-image bridge as the native
networks (:func:`~lensblur_models.genrefocus.models.bridge_matching_loss`), conditioning by token
concatenation as in the native models:

* state and condition images (``(B, C, H, W)`` with ``4 C == transformer.config.in_channels``:
  FLUX latents from a VAE, or pixels for a small model) are packed into 2x2 patches and put in one
  image-token sequence ``[state | condition images | defocus map]``; each set gets the FLUX 3-axis
  RoPE ids ``(set index, row, col)`` so that aligned conditions share positions;
* the defocus map (BokehNet only) is packed the same way and lifted to ``in_channels`` by a small
  trainable Linear (``map_in``);
* aperture-shape tokens (:func:`~lensblur_models.genrefocus.tokens.aperture_tokens`) take the
  place of the text tokens (trainable Linear to ``joint_attention_dim`` plus learned positions);
  DeblurNet uses one learned null token; the pooled text vector is a learned parameter.

Only the LoRA weights (``peft``; attention projections by default) and these small adapter modules
are trainable; the transformer's own weights stay frozen.  :meth:`save_adapter` writes just
those (``adapter_config.json`` + ``adapter.safetensors``); :meth:`from_pretrained` rebuilds the
adapter from the base checkpoint plus, optionally, a saved adapter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from lensblur import LensBlurError

from ..common.checks import check_int, check_pair, check_tensor4
from .models import _time, bridge_matching_loss, bridge_sample
from .tokens import aperture_tokens

__all__ = ["FluxRefocusAdapter", "DEFAULT_LORA_TARGETS"]

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
_TASKS = ("deblur", "bokeh")


def _pack(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2 * W/2, 4 C)`` (FLUX 2x2 packing, channel-major in a patch)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    b = tokens.shape[0]
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def _ids(index: int, gh: int, gw: int, device, dtype) -> torch.Tensor:
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    return torch.stack([torch.full_like(rows, index), rows, cols], dim=1).to(dtype)


class FluxRefocusAdapter(nn.Module):
    """A FLUX transformer + LoRA as DeblurNet (``task="deblur"``) or BokehNet (``task="bokeh"``).

    Args:
        transformer: a ``diffusers.FluxTransformer2DModel`` (frozen; LoRA is added here).
        task: ``"deblur"`` or ``"bokeh"``.
        lora_rank, lora_alpha: LoRA rank and scale (alpha defaults to the rank).
        lora_targets: module names that get LoRA.
        aperture_size, aperture_patch: aperture-token geometry (BokehNet).
        max_coc_px: the defocus map is divided by this before embedding.

    Call it like the native networks: ``adapter(image)`` (deblur) or
    ``adapter(aif, defocus_map, aperture)`` (bokeh); ``adapter.loss(...)`` trains it.
    ``H`` and ``W`` must be even.
    """

    def __init__(self, transformer: nn.Module, task: str = "bokeh", lora_rank: int = 16,
                 lora_alpha: Optional[float] = None, lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
                 aperture_size: int = 16, aperture_patch: int = 4, max_coc_px: float = 16.0,
                 bridge_noise: float = 0.0) -> None:
        super().__init__()
        from peft import LoraConfig

        if task not in _TASKS:
            raise LensBlurError(f"unknown `task` {task!r}; expected one of {', '.join(_TASKS)}")
        cfg = getattr(transformer, "config", None)
        if cfg is None or not hasattr(cfg, "in_channels") or not hasattr(transformer, "add_adapter"):
            raise TypeError("`transformer` must be a diffusers FluxTransformer2DModel")
        if cfg.in_channels % 4:
            raise LensBlurError(f"`transformer.config.in_channels` ({cfg.in_channels}) must be a multiple of 4")
        check_int(lora_rank, "lora_rank")
        self.task = task
        self.channels = cfg.in_channels // 4
        self.out_channels = (cfg.out_channels or cfg.in_channels) // 4
        if self.out_channels != self.channels:
            raise LensBlurError("`transformer` must have out_channels == in_channels")
        self.settings = dict(task=task, lora_rank=lora_rank, lora_alpha=float(lora_alpha or lora_rank),
                             lora_targets=list(lora_targets), aperture_size=aperture_size,
                             aperture_patch=aperture_patch, max_coc_px=float(max_coc_px),
                             bridge_noise=float(bridge_noise))
        transformer.requires_grad_(False)
        transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=self.settings["lora_alpha"],
                                           target_modules=list(lora_targets), init_lora_weights="gaussian"))
        self.transformer = transformer
        jd, pd = cfg.joint_attention_dim, cfg.pooled_projection_dim
        self.pooled = nn.Parameter(torch.zeros(1, pd))
        if task == "bokeh":
            n_ap = (aperture_size // aperture_patch) ** 2
            self.map_in = nn.Linear(4, cfg.in_channels)
            self.aperture_proj = nn.Linear(aperture_patch * aperture_patch, jd)
            self.aperture_pos = nn.Parameter(torch.randn(n_ap, jd) * 0.02)
        else:
            self.null_text = nn.Parameter(torch.randn(1, 1, jd) * 0.02)

    # ---------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], task: str = "bokeh", *,
                        adapter_path: Union[str, os.PathLike, None] = None, subfolder: Optional[str] = None,
                        torch_dtype: Optional[torch.dtype] = None, **kwargs) -> "FluxRefocusAdapter":
        """Load the base transformer from the local directory ``path`` and add LoRA.

        ``adapter_path``: a directory written by :meth:`save_adapter`; its settings override
        ``task`` and ``kwargs`` and its weights are loaded.  ``subfolder``: e.g.
        ``"transformer"`` inside a full FLUX pipeline folder.
        """
        from diffusers import FluxTransformer2DModel

        base = Path(path) / (subfolder or "")
        if not (base / "config.json").is_file():
            raise LensBlurError(f"`path` {str(base)!r} is not a local transformer directory (no config.json)")
        saved = None
        if adapter_path is not None:
            ap = Path(adapter_path)
            if not (ap / ADAPTER_CONFIG).is_file() or not (ap / ADAPTER_WEIGHTS).is_file():
                raise LensBlurError(f"`adapter_path` {str(ap)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
            saved = json.loads((ap / ADAPTER_CONFIG).read_text())
            task = saved.pop("task")
            kwargs.update(saved)
        transformer = FluxTransformer2DModel.from_pretrained(
            str(path), subfolder=subfolder, local_files_only=True,
            **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
        adapter = cls(transformer, task, **kwargs)
        if saved is not None:
            adapter.load_adapter_weights(Path(adapter_path) / ADAPTER_WEIGHTS)
        return adapter

    def adapter_state_dict(self) -> dict:
        """The trainable weights only: LoRA (peft naming) and the adapter's own modules."""
        from peft import get_peft_model_state_dict

        own = {k: v for k, v in self.state_dict().items() if not k.startswith("transformer.")}
        lora = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.transformer).items()}
        return {**own, **lora}

    def save_adapter(self, path: Union[str, os.PathLike]) -> Path:
        """Write ``adapter_config.json`` and ``adapter.safetensors`` (LoRA + adapter modules)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / ADAPTER_CONFIG).write_text(json.dumps(self.settings, indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.adapter_state_dict().items()},
                  str(path / ADAPTER_WEIGHTS))
        return path

    def load_adapter_weights(self, file: Union[str, os.PathLike]) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        sd = load_file(str(file))
        lora = {k[len("lora."):]: v for k, v in sd.items() if k.startswith("lora.")}
        own = {k: v for k, v in sd.items() if not k.startswith("lora.")}
        missing, unexpected = self.load_state_dict(own, strict=False)
        if unexpected or any(not k.startswith("transformer.") for k in missing):
            raise LensBlurError(f"adapter weights do not match this adapter (missing={missing}, unexpected={unexpected})")
        result = set_peft_model_state_dict(self.transformer, lora)
        if getattr(result, "unexpected_keys", None):
            raise LensBlurError(f"unexpected LoRA keys: {result.unexpected_keys}")

    # ---------------------------------------------------------------------------- network
    def velocity(self, state: torch.Tensor, t, *conds: torch.Tensor, aperture=None) -> torch.Tensor:
        """Bridge velocity.  ``conds``: ``(image,)`` for deblur, ``(aif, defocus_map)`` for bokeh."""
        b, c, h, w = state.shape
        if h % 2 or w % 2:
            raise LensBlurError(f"image height and width must be even for the FLUX adapter, got {h}x{w}")
        dtype = self.transformer.dtype
        dev = state.device
        gh, gw = h // 2, w // 2
        seqs = [_pack(state.to(dtype))]
        ids = [_ids(0, gh, gw, dev, dtype)]
        for i, cimg in enumerate(conds):
            packed = _pack(cimg.to(dtype))
            if cimg.shape[1] == 1:  # defocus map
                packed = self.map_in(packed / self.settings["max_coc_px"])
            seqs.append(packed)
            ids.append(_ids(i + 1, gh, gw, dev, dtype))
        if self.task == "bokeh":
            tok = aperture_tokens(aperture, b, size=self.settings["aperture_size"],
                                  patch=self.settings["aperture_patch"], device=dev, dtype=dtype)
            text = self.aperture_proj(tok) + self.aperture_pos
        else:
            text = self.null_text.expand(b, -1, -1)
        txt_ids = torch.zeros(text.shape[1], 3, device=dev, dtype=dtype)
        extra = {}
        if getattr(self.transformer.config, "guidance_embeds", False):
            extra["guidance"] = torch.ones(b, device=dev, dtype=dtype)
        out = self.transformer(hidden_states=torch.cat(seqs, 1), encoder_hidden_states=text,
                               pooled_projections=self.pooled.expand(b, -1), timestep=_time(t, state).to(dtype),
                               img_ids=torch.cat(ids), txt_ids=txt_ids, return_dict=False, **extra)[0]
        return _unpack(out[:, : gh * gw], c, h, w).to(state.dtype)

    def _conds(self, args):
        if self.task == "deblur":
            (image,) = args
            check_tensor4(image, "image", self.channels)
            return image, (image,)
        aif, dmap = args
        check_tensor4(aif, "aif", self.channels)
        check_tensor4(dmap, "defocus_map", 1, nonnegative=True)
        check_pair(aif, dmap, "aif", "defocus_map")
        return aif, (aif, dmap)

    def forward(self, *args, aperture=None, steps: int = 1) -> torch.Tensor:
        """``adapter(image)`` (deblur) or ``adapter(aif, defocus_map, aperture)`` (bokeh)."""
        if self.task == "bokeh" and len(args) == 3:
            args, aperture = args[:2], args[2]
        source, conds = self._conds(args)
        return bridge_sample(source, steps, lambda x, t: self.velocity(x, t, *conds, aperture=aperture))

    def loss(self, *args, target: torch.Tensor, aperture=None, t=None, generator=None) -> torch.Tensor:
        """Bridge-matching loss: ``loss(defocused, target=aif)`` or ``loss(aif, dmap, target=..., aperture=...)``."""
        source, conds = self._conds(args)
        check_tensor4(target, "target", self.channels)
        check_pair(source, target, "source", "target")
        return bridge_matching_loss(source, target, lambda x, tt: self.velocity(x, tt, *conds, aperture=aperture),
                                    self.settings["bridge_noise"], t, generator)
