"""One adapter base for a pretrained ``diffusers`` FLUX transformer trained with LoRA.

:class:`FluxAdapterBase` holds what every family needs from FLUX and does it once:

* **loading** — :meth:`FluxAdapterBase.from_pretrained` reads a local
  ``FluxTransformer2DModel`` checkpoint (``subfolder="transformer"`` inside a full FLUX pipeline
  folder; ``torch_dtype=torch.bfloat16`` keeps a 12 B transformer in bf16); nothing is downloaded;
* **freezing + LoRA** — the base weights are frozen and ``peft`` LoRA adapters are added to the
  attention projections (``lora_rank=0``: no LoRA, only the family's own modules train); every
  trainable tensor (LoRA and the family's conditioning modules) is kept in fp32 whatever the
  base dtype, so mixed-precision training updates fp32 weights;
* **latent packing** — :func:`pack_latents` / :func:`unpack_latents` (FLUX's 2x2 tokens,
  ``in_channels = 4 c``) and :func:`image_ids` (the 3-axis RoPE ids ``(segment, row, column)``
  of one token set), and :meth:`FluxAdapterBase.run_transformer`, one call of the transformer on
  several image token sets and a text stream;
* **one adapter format** — :meth:`FluxAdapterBase.save_adapter` writes ``adapter_config.json``
  (the class, its settings, the LoRA setup and the base checkpoint's location) and
  ``adapter.safetensors`` (only the trainable tensors: ``lora.*`` in ``peft`` naming plus the
  family's modules); :meth:`FluxAdapterBase.load_adapter` rebuilds it on its base checkpoint.

A family subclasses it only for its conditioning: it creates its modules in ``__init__`` (after
``super().__init__``), lists its extra constructor settings in ``settings`` and writes
``forward``.  See :class:`lensblur_models.refocus_dit.FluxRefocusDiT` and
:class:`lensblur_models.genrefocus.FluxBridgeAdapter`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lensblur import LensBlurError

from .checks import check_int

__all__ = ["FluxAdapterBase", "pack_latents", "unpack_latents", "image_ids", "DEFAULT_LORA_TARGETS",
           "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
PathLike = Union[str, os.PathLike]


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
    z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: ``(B, (h/2)(w/2), 4c)`` -> ``(B, c, h, w)``."""
    b, n, d = tokens.shape
    if n != (h // 2) * (w // 2) or d % 4:
        raise LensBlurError(f"`tokens` of shape {tuple(tokens.shape)} do not unpack to {h}x{w}")
    z = tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return z.reshape(b, d // 4, h, w)


def image_ids(segment: int, gh: int, gw: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(gh * gw, 3)`` RoPE ids ``(segment, row, column)`` of one packed token set (row-major).

    Token sets that are spatially aligned (a noisy state and its condition images) share rows
    and columns and differ in ``segment``.

    Example:
        >>> image_ids(1, 1, 2).tolist()
        [[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    """
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    return torch.stack([torch.full_like(rows, segment), rows, cols], dim=1).to(dtype)


class FluxAdapterBase(nn.Module):
    """A frozen FLUX transformer + LoRA + a family's conditioning modules (see the module docstring).

    Args:
        transformer: a ``diffusers.FluxTransformer2DModel`` (its weights are frozen).
        lora_rank: LoRA rank (``0`` = no LoRA).
        lora_alpha: LoRA scaling numerator (default ``lora_rank``).
        lora_targets: module names that get LoRA.
        guidance: value fed to guidance-distilled checkpoints (FLUX-dev); unused otherwise.

    Attributes:
        latent_channels: ``c`` with ``4 c == transformer.config.in_channels``.
        settings: the subclass's own JSON-able constructor arguments (saved with the adapter).
    """

    def __init__(self, transformer: nn.Module, lora_rank: int = 16, lora_alpha: Optional[float] = None,
                 lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS, guidance: float = 1.0) -> None:
        super().__init__()
        from diffusers import FluxTransformer2DModel

        if not isinstance(transformer, FluxTransformer2DModel):
            raise TypeError("`transformer` must be a diffusers.FluxTransformer2DModel, "
                            f"got {type(transformer).__name__}")
        check_int(lora_rank, "lora_rank", minimum=0)
        cfg = transformer.config
        if cfg.in_channels % 4:
            raise LensBlurError(f"`transformer.config.in_channels` ({cfg.in_channels}) must be 4 x latent channels")
        if (cfg.out_channels or cfg.in_channels) != cfg.in_channels:
            raise LensBlurError("`transformer` must have out_channels == in_channels")
        self.latent_channels = cfg.in_channels // 4
        self.lora_rank = lora_rank
        self.lora_alpha = float(lora_alpha or lora_rank or 1)
        self.lora_targets = tuple(lora_targets)
        self.guidance = float(guidance)
        self.settings: Dict = {}
        self.source = None  # (path, subfolder) of the base checkpoint when loaded from one
        transformer.requires_grad_(False)
        if lora_rank > 0:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=self.lora_alpha,
                                               target_modules=list(self.lora_targets), init_lora_weights=True))
        self.transformer = transformer

    # ------------------------------------------------------------------------------ helpers
    @property
    def base_dtype(self) -> torch.dtype:
        """The dtype of the frozen transformer (bf16 for a real checkpoint loaded so)."""
        return self.transformer.dtype

    def finish_init(self) -> None:
        """Put the family's modules on the transformer's device and every trainable tensor in fp32.

        Subclasses call it at the end of their ``__init__``.
        """
        device = next(self.transformer.parameters()).device
        for name, module in self.named_children():
            if name != "transformer":
                module.to(device=device, dtype=torch.float32)
        for name, p in self.named_parameters(recurse=False):
            p.data = p.data.to(device=device, dtype=torch.float32)
        for p in self.transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the transformer's blocks in the backward pass (diffusers' own checkpointing)."""
        self.transformer.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        """Undo :meth:`enable_gradient_checkpointing`."""
        self.transformer.disable_gradient_checkpointing()

    def run_transformer(self, token_sets: List[torch.Tensor], grid: Tuple[int, int], text: torch.Tensor,
                        pooled: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Run FLUX on the concatenated image token sets; returns the first set's output tokens.

        Args:
            token_sets: ``(B, N, in_channels)`` packed sets on the same token grid; set ``i``
                gets the RoPE segment id ``i``.
            grid: ``(gh, gw)`` of that grid (``N = gh * gw``).
            text: ``(B, L, joint_attention_dim)`` text-stream tokens.
            pooled: ``(B, pooled_projection_dim)`` vector added to the timestep embedding.
            timestep: ``(B,)`` flow time in ``[0, 1]``.
        """
        gh, gw = grid
        dtype, device = self.base_dtype, token_sets[0].device
        b, n = token_sets[0].shape[:2]
        ids = torch.cat([image_ids(i, gh, gw, device, dtype) for i in range(len(token_sets))])
        extra = {}
        if getattr(self.transformer.config, "guidance_embeds", False):
            extra["guidance"] = torch.full((b,), self.guidance, device=device, dtype=dtype)
        out = self.transformer(hidden_states=torch.cat([s.to(dtype) for s in token_sets], dim=1),
                               encoder_hidden_states=text.to(dtype), pooled_projections=pooled.to(dtype),
                               timestep=timestep.to(dtype), img_ids=ids,
                               txt_ids=torch.zeros(text.shape[1], 3, device=device, dtype=dtype),
                               return_dict=False, **extra)[0]
        return out[:, :n]

    # ------------------------------------------------------------------------------ persistence
    def adapter_config(self) -> Dict:
        """What :meth:`save_adapter` writes to ``adapter_config.json``."""
        return {"class": type(self).__name__, "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
                "lora_targets": list(self.lora_targets), "guidance": self.guidance, **self.settings,
                "base_path": self.source[0] if self.source else None,
                "base_subfolder": self.source[1] if self.source else None}

    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trainable tensors only: ``lora.*`` (``peft`` naming) and the family's modules."""
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("transformer.")}
        if self.lora_rank == 0:
            return own
        from peft import get_peft_model_state_dict

        lora = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.transformer).items()}
        return {**own, **lora}

    def save_adapter(self, path: PathLike) -> Path:
        """Write ``adapter_config.json`` + ``adapter.safetensors`` to the directory ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / ADAPTER_CONFIG).write_text(json.dumps(self.adapter_config(), indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.adapter_state_dict().items()},
                  str(path / ADAPTER_WEIGHTS))
        return path

    def load_adapter_weights(self, file: PathLike) -> None:
        """Load ``adapter.safetensors`` written by :meth:`save_adapter` into this adapter."""
        from safetensors.torch import load_file

        state = load_file(str(file))
        expected = set(self.adapter_state_dict())
        if set(state) != expected:
            raise LensBlurError(f"adapter weights in {str(file)!r} do not match this adapter "
                                f"(missing {sorted(expected - set(state))[:3]}, "
                                f"unexpected {sorted(set(state) - expected)[:3]})")
        own = {k: v for k, v in state.items() if not k.startswith("lora.")}
        self.load_state_dict(own, strict=False)
        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        if lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.transformer, lora)
            if getattr(result, "unexpected_keys", None):
                raise LensBlurError(f"unexpected LoRA keys in {str(file)!r}: {result.unexpected_keys[:3]}")

    @classmethod
    def from_pretrained(cls, path: PathLike, *, subfolder: Optional[str] = None,
                        torch_dtype: Optional[torch.dtype] = None, adapter_path: Optional[PathLike] = None,
                        **kwargs) -> "FluxAdapterBase":
        """Build on the local transformer checkpoint ``path`` (``subfolder``: e.g. ``"transformer"``).

        ``kwargs`` go to the constructor (``lora_rank``, the family's settings ...);
        ``adapter_path``: a directory written by :meth:`save_adapter` whose settings and weights
        are loaded (its settings override ``kwargs``).
        """
        from diffusers import FluxTransformer2DModel

        base = Path(path) / (subfolder or "")
        if not (base / "config.json").is_file():
            raise LensBlurError(f"`path` {str(base)!r} is not a local transformer checkpoint (no config.json)")
        if adapter_path is not None:
            kwargs.update(cls._read_adapter_config(adapter_path))
        transformer = FluxTransformer2DModel.from_pretrained(
            os.fspath(path), subfolder=subfolder, local_files_only=True,
            **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
        model = cls(transformer, **kwargs)
        model.source = (os.fspath(path), subfolder)
        if adapter_path is not None:
            model.load_adapter_weights(Path(adapter_path) / ADAPTER_WEIGHTS)
        return model

    @classmethod
    def load_adapter(cls, adapter_path: PathLike, base_path: Optional[PathLike] = None,
                     base_subfolder: Optional[str] = None,
                     torch_dtype: Optional[torch.dtype] = None) -> "FluxAdapterBase":
        """Rebuild an adapter saved by :meth:`save_adapter` on its recorded base checkpoint (or on
        ``base_path``)."""
        cfg = json.loads((Path(adapter_path) / ADAPTER_CONFIG).read_text()) if \
            (Path(adapter_path) / ADAPTER_CONFIG).is_file() else None
        if cfg is None:
            raise LensBlurError(f"`adapter_path` {str(adapter_path)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
        base = base_path or cfg.get("base_path")
        sub = base_subfolder if base_path else cfg.get("base_subfolder")
        if base is None:
            raise LensBlurError("the adapter does not record its base checkpoint: pass `base_path`")
        return cls.from_pretrained(base, subfolder=sub, torch_dtype=torch_dtype, adapter_path=adapter_path)

    @classmethod
    def _read_adapter_config(cls, adapter_path: PathLike) -> Dict:
        ap = Path(adapter_path)
        if not (ap / ADAPTER_CONFIG).is_file() or not (ap / ADAPTER_WEIGHTS).is_file():
            raise LensBlurError(f"`adapter_path` {str(ap)!r} must hold {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
        cfg = json.loads((ap / ADAPTER_CONFIG).read_text())
        saved_class = cfg.pop("class", cls.__name__)
        if saved_class != cls.__name__:
            raise LensBlurError(f"`adapter_path` {str(ap)!r} holds a {saved_class}, not a {cls.__name__}")
        cfg.pop("base_path", None)
        cfg.pop("base_subfolder", None)
        return cfg
