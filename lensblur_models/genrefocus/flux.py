"""DeblurNet / BokehNet on a pretrained FLUX-style transformer, fine-tuned with LoRA.

:class:`FluxBridgeAdapter` (a :class:`~lensblur_models.common.flux.FluxAdapterBase`) wraps a
``diffusers.FluxTransformer2DModel`` loaded from a **local** directory (no download) and trains it as the same image-to-image bridge as the native
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
are trainable; the transformer's own weights stay frozen.  Loading, LoRA and the adapter format
(``save_adapter`` / ``load_adapter``) are the base class's.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from lensblur import LensBlurError

from ..common.checks import check_pair, check_tensor4
from ..common.flux import DEFAULT_LORA_TARGETS, FluxAdapterBase, pack_latents, unpack_latents
from .models import _time, bridge_matching_loss, bridge_sample
from .tokens import aperture_tokens

__all__ = ["FluxBridgeAdapter"]

_TASKS = ("deblur", "bokeh")


class FluxBridgeAdapter(FluxAdapterBase):
    """A FLUX transformer + LoRA as DeblurNet (``task="deblur"``) or BokehNet (``task="bokeh"``).

    Args:
        transformer: a ``diffusers.FluxTransformer2DModel`` (frozen; LoRA is added by the base).
        task: ``"deblur"`` or ``"bokeh"``.
        lora_rank, lora_alpha, lora_targets, guidance: see
            :class:`~lensblur_models.common.flux.FluxAdapterBase`.
        aperture_size, aperture_patch: aperture-token geometry (BokehNet).
        max_coc_px: the defocus map is divided by this before embedding.
        bridge_noise: :math:`\\sigma` of the training bridge.

    Call it like the native networks: ``adapter(image)`` (deblur) or
    ``adapter(aif, defocus_map, aperture)`` (bokeh); ``adapter.loss(...)`` trains it.
    ``H`` and ``W`` must be even.
    """

    def __init__(self, transformer: nn.Module, task: str = "bokeh", lora_rank: int = 16,
                 lora_alpha: Optional[float] = None, lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS,
                 aperture_size: int = 16, aperture_patch: int = 4, max_coc_px: float = 16.0,
                 bridge_noise: float = 0.0, guidance: float = 1.0) -> None:
        if task not in _TASKS:
            raise LensBlurError(f"unknown `task` {task!r}; expected one of {', '.join(_TASKS)}")
        super().__init__(transformer, lora_rank, lora_alpha, lora_targets, guidance)
        self.task = task
        self.channels = self.latent_channels
        self.settings = dict(task=task, aperture_size=aperture_size, aperture_patch=aperture_patch,
                             max_coc_px=float(max_coc_px), bridge_noise=float(bridge_noise))
        cfg = transformer.config
        jd, pd = cfg.joint_attention_dim, cfg.pooled_projection_dim
        self.pooled = nn.Parameter(torch.zeros(1, pd))
        if task == "bokeh":
            n_ap = (aperture_size // aperture_patch) ** 2
            self.map_in = nn.Linear(4, cfg.in_channels)
            self.aperture_proj = nn.Linear(aperture_patch * aperture_patch, jd)
            self.aperture_pos = nn.Parameter(torch.randn(n_ap, jd) * 0.02)
        else:
            self.null_text = nn.Parameter(torch.randn(1, 1, jd) * 0.02)
        self.finish_init()

    def velocity(self, state: torch.Tensor, t, *conds: torch.Tensor, aperture=None) -> torch.Tensor:
        """Bridge velocity.  ``conds``: ``(image,)`` for deblur, ``(aif, defocus_map)`` for bokeh."""
        b, c, h, w = state.shape
        if h % 2 or w % 2:
            raise LensBlurError(f"image height and width must be even for the FLUX adapter, got {h}x{w}")
        dev = state.device
        seqs = [pack_latents(state)]
        for cimg in conds:
            packed = pack_latents(cimg.float())
            if cimg.shape[1] == 1:  # defocus map
                packed = self.map_in(packed / self.settings["max_coc_px"])
            seqs.append(packed)
        if self.task == "bokeh":
            tok = aperture_tokens(aperture, b, size=self.settings["aperture_size"],
                                  patch=self.settings["aperture_patch"], device=dev, dtype=torch.float32)
            text = self.aperture_proj(tok) + self.aperture_pos
        else:
            text = self.null_text.expand(b, -1, -1)
        out = self.run_transformer(seqs, (h // 2, w // 2), text, self.pooled.expand(b, -1), _time(t, state))
        return unpack_latents(out, h, w).to(state.dtype)

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
