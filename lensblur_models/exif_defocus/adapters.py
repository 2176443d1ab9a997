"""Pluggable generator and depth networks for :class:`ExifDefocusPipeline`.

Both adapters load from a **local** directory only (``local_files_only=True``; nothing is
downloaded) and speak the pipeline's image convention: display-encoded RGB in ``[0, 1]``,
``(B, 3, H, W)``.

* :class:`DiffusersGenerator` wraps a ``diffusers`` pipeline directory with a ``unet`` and a
  ``scheduler`` (optionally a ``vae`` for latent diffusion and a text encoder for prompts).  It
  offers :meth:`~DiffusersGenerator.sample` (DDIM-style sampling from noise) and
  :meth:`~DiffusersGenerator.denoise` (one-step estimate of the clean image from a noised photo —
  the quantity the paper blurs during training), both differentiable w.r.t. the UNet.
* depth comes from the shared :class:`lensblur_models.common.DepthEstimator` (a frozen
  ``transformers`` depth model, differentiable w.r.t. its input image).

:func:`make_tiny_diffusers_generator` and :func:`make_tiny_depth_model` write tiny
random-initialised checkpoints (for tests and the CPU example) in the same on-disk formats as real
ones, so the same code path loads both.
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

from ..common.checks import check_int

__all__ = ["DiffusersGenerator", "make_tiny_diffusers_generator", "make_tiny_depth_model"]

PathLike = Union[str, os.PathLike]

#: File in which an adapter's own settings are saved next to the wrapped checkpoint.
ADAPTER_CONFIG = "lensblur_adapter.json"
#: The generator's UNet LoRA weights (``peft`` naming), next to the pipeline.
LORA_WEIGHTS = "unet_lora.safetensors"
#: UNet modules that get LoRA by default: attention projections and the resnet convolutions.
GENERATOR_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


def _read_adapter_config(path: Path, kwargs: dict) -> dict:
    """Saved adapter settings, overridden by explicit keyword arguments."""
    f = path / ADAPTER_CONFIG
    saved = json.loads(f.read_text()) if f.is_file() else {}
    return {**saved, **kwargs}


def _local_dir(path: PathLike, name: str = "path") -> Path:
    p = Path(path)
    if not p.is_dir():
        raise LensBlurError(f"`{name}` must be a local checkpoint directory, {str(p)!r} is not one "
                            "(adapters never download)")
    return p


def _check_image01(image: torch.Tensor, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {image.dtype}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise LensBlurError(f"`{name}` must have shape (B, 3, H, W), got {tuple(image.shape)}")


class DiffusersGenerator(nn.Module):
    """All-in-focus image generator backed by a ``diffusers`` pipeline.

    Args:
        pipeline: a loaded ``diffusers.DiffusionPipeline`` with ``unet`` and ``scheduler``
            components (``vae``, ``text_encoder``/``tokenizer`` optional).
        num_inference_steps: default number of sampling steps for :meth:`sample`.
        image_size: ``(H, W)`` of generated images (default: the UNet's ``sample_size`` times the
            VAE's downsampling factor).
        lora_rank: rank of the ``peft`` LoRA adapters added to the UNet (default 4); the UNet's
            base weights are frozen and only the adapters train.  ``0`` fine-tunes the whole UNet
            (an explicit opt-in).
        lora_targets: UNet module names that get LoRA (attention projections and the resnet
            convolutions; names a UNet lacks are skipped).

    The VAE and the text encoder are always frozen.  ``generator.parameters()`` with
    ``requires_grad`` are what a fine-tuning optimiser sees: the LoRA weights by default.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     gen = DiffusersGenerator.from_pretrained(make_tiny_diffusers_generator(d, size=8))
        ...     img = gen.sample(2, num_inference_steps=2, seed=0)
        >>> img.shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, pipeline, num_inference_steps: int = 25,
                 image_size: Optional[Sequence[int]] = None, lora_rank: int = 4,
                 lora_targets: Sequence[str] = GENERATOR_LORA_TARGETS) -> None:
        super().__init__()
        check_int(lora_rank, "lora_rank", minimum=0)
        for part in ("unet", "scheduler"):
            if getattr(pipeline, part, None) is None:
                raise LensBlurError(f"`pipeline` must have a `{part}` component "
                                    f"(got {type(pipeline).__name__})")
        self.pipeline = pipeline
        self.unet = pipeline.unet
        self.vae = getattr(pipeline, "vae", None)
        self.scheduler = pipeline.scheduler
        self.num_inference_steps = int(num_inference_steps)
        text_encoder = getattr(pipeline, "text_encoder", None)
        if text_encoder is not None:
            text_encoder.requires_grad_(False)
        if self.vae is not None:
            self.vae.requires_grad_(False)
        self.lora_rank, self.lora_targets = lora_rank, tuple(lora_targets)
        if lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            modules = [n for n, _ in self.unet.named_modules()]
            targets = [t for t in self.lora_targets if any(n == t or n.endswith("." + t) for n in modules)]
            if not targets:
                raise LensBlurError(f"none of `lora_targets` {self.lora_targets} is a module of the UNet")
            self.unet.requires_grad_(False)
            inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=targets,
                                               init_lora_weights=True), self.unet)
            for p in self.unet.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        self._vae_factor = 1
        if self.vae is not None:
            self._vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample = self.unet.config.sample_size
        if image_size is None:
            sample = (sample, sample) if isinstance(sample, int) else tuple(sample)
            image_size = (sample[0] * self._vae_factor, sample[1] * self._vae_factor)
        self.image_size = tuple(int(v) for v in image_size)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's blocks in the backward pass (diffusers' own checkpointing)."""
        self.unet.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        """Undo :meth:`enable_gradient_checkpointing`."""
        self.unet.disable_gradient_checkpointing()

    def trainable_parameters(self):
        """The parameters fine-tuning updates: the UNet's LoRA weights (all UNet weights when
        ``lora_rank=0``), whatever their ``requires_grad`` is now."""
        if self.lora_rank > 0:
            return [p for n, p in self.unet.named_parameters() if "lora_" in n]
        return list(self.unet.parameters())

    @classmethod
    def from_pretrained(cls, path: PathLike, **kwargs) -> "DiffusersGenerator":
        """Load a diffusers pipeline from the local directory ``path`` (no download)."""
        from diffusers import DiffusionPipeline

        p = _local_dir(path)
        pipe = DiffusionPipeline.from_pretrained(str(p), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        gen = cls(pipe, **_read_adapter_config(p, kwargs))
        if gen.lora_rank > 0 and (p / LORA_WEIGHTS).is_file():
            from safetensors.torch import load_file

            lora = load_file(str(p / LORA_WEIGHTS))
            expected = {k for k in gen.unet.state_dict() if "lora_" in k}
            if set(lora) != expected:
                raise LensBlurError(f"{p / LORA_WEIGHTS} does not match the generator's LoRA setup")
            gen.unet.load_state_dict(lora, strict=False)
        return gen

    def save_pretrained(self, path: PathLike) -> None:
        """Write the pipeline in diffusers format plus the settings; with LoRA, the UNet keeps its
        base weights and the adapters go to ``unet_lora.safetensors``."""
        from safetensors.torch import save_file

        path = Path(path)
        self.pipeline.save_pretrained(str(path))
        settings = {"num_inference_steps": self.num_inference_steps, "image_size": list(self.image_size),
                    "lora_rank": self.lora_rank, "lora_targets": list(self.lora_targets)}
        if self.lora_rank > 0:
            base = {k.replace(".base_layer", ""): v.detach().contiguous().cpu()
                    for k, v in self.unet.state_dict().items() if "lora_" not in k}
            for f in (path / "unet").glob("diffusion_pytorch_model*"):
                f.unlink()
            save_file(base, str(path / "unet" / "diffusion_pytorch_model.safetensors"))
            save_file({k: v.detach().contiguous().cpu() for k, v in self.unet.state_dict().items() if "lora_" in k},
                      str(path / LORA_WEIGHTS))
        (path / ADAPTER_CONFIG).write_text(json.dumps(settings))

    # -- helpers ----------------------------------------------------------------------------
    def _encode_prompt(self, cond, batch_size: int, device):
        if cond is None:
            return None
        if isinstance(cond, torch.Tensor):  # precomputed embeddings (B, L, D)
            return cond.to(device)
        if not hasattr(self.pipeline, "encode_prompt"):
            raise LensBlurError(f"`cond` is a prompt but {type(self.pipeline).__name__} has no text encoder")
        prompts = [cond] * batch_size if isinstance(cond, str) else list(cond)
        if len(prompts) != batch_size:
            raise LensBlurError(f"`cond` has {len(prompts)} prompts for a batch of {batch_size}")
        with torch.no_grad():
            embeds = self.pipeline.encode_prompt(prompts, device, 1, False)[0]
        return embeds

    def _unet(self, x, t, embeds):
        kwargs = {} if embeds is None else {"encoder_hidden_states": embeds}
        return self.unet(x, t, **kwargs).sample

    def _x0_from_output(self, out, x_t, t):
        alphas = self.scheduler.alphas_cumprod.to(device=x_t.device, dtype=x_t.dtype)[t].view(-1, 1, 1, 1)
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return (x_t - (1 - alphas).sqrt() * out) / alphas.sqrt()
        if kind == "sample":
            return out
        if kind == "v_prediction":
            return alphas.sqrt() * x_t - (1 - alphas).sqrt() * out
        raise LensBlurError(f"unsupported scheduler prediction_type {kind!r}")

    def _to_model_space(self, image01):
        x = image01 * 2 - 1
        if self.vae is not None:
            x = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return x

    def _to_image(self, x):
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        return (x + 1) / 2

    # -- API --------------------------------------------------------------------------------
    def denoise(self, image: torch.Tensor, noise_level: torch.Tensor, cond=None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One-step clean-image estimate from ``image`` noised to ``noise_level``.

        ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with ``t = round(noise_level * (T - 1))``;
        the UNet's prediction is turned into the estimate of ``x_0``, returned in ``[0, 1]``
        display space (not clamped, so gradients are not cut).

        Args:
            image: ``(B, 3, H, W)`` photo in ``[0, 1]``.
            noise_level: ``(B,)`` or float in ``[0, 1]``.
            cond: ``None``, a prompt / list of prompts, or prompt embeddings ``(B, L, D)``.
            generator: ``torch.Generator`` for the noise.

        Returns:
            ``(B, 3, H, W)``.
        """
        _check_image01(image)
        b = image.shape[0]
        level = torch.as_tensor(noise_level, dtype=torch.float32, device=image.device).expand(b)
        if bool(((level < 0) | (level > 1)).any()):
            raise LensBlurError("`noise_level` must lie in [0, 1]")
        num_t = self.scheduler.config.num_train_timesteps
        t = (level * (num_t - 1)).round().long()
        x0 = self._to_model_space(image)
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(x0.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        out = self._unet(x_t, t, self._encode_prompt(cond, b, image.device))
        return self._to_image(self._x0_from_output(out, x_t, t))

    def sample(self, batch_size: int, cond=None, num_inference_steps: Optional[int] = None,
               seed: Optional[int] = None, device=None) -> torch.Tensor:
        """Generate ``(batch_size, 3, H, W)`` images in ``[0, 1]`` (differentiable w.r.t. the UNet).

        Runs the scheduler's sampling loop (``scheduler.set_timesteps`` / ``step``) from seeded
        Gaussian noise; wrap in ``torch.no_grad()`` for plain inference.
        """
        steps = int(num_inference_steps or self.num_inference_steps)
        device = torch.device(device) if device is not None else next(self.unet.parameters()).device
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        h, w = self.image_size
        f = self._vae_factor
        shape = (batch_size, self.unet.config.in_channels, h // f, w // f)
        dtype = next(self.unet.parameters()).dtype
        x = torch.randn(shape, generator=gen, dtype=dtype).to(device) * self.scheduler.init_noise_sigma
        embeds = self._encode_prompt(cond, batch_size, device)
        self.scheduler.set_timesteps(steps, device=device)
        for t in self.scheduler.timesteps:
            inp = self.scheduler.scale_model_input(x, t)
            out = self._unet(inp, t, embeds)
            x = self.scheduler.step(out, t, x).prev_sample
        return self._to_image(x)


def make_tiny_diffusers_generator(path: PathLike, size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random-initialised pixel-space ``DDPMPipeline`` (UNet2DModel + DDIM) to ``path``.

    About 40 k parameters, ``size x size`` RGB output; for tests and CPU demos only.
    """
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(str(path))
    return Path(path)


def make_tiny_depth_model(path: PathLike, seed: int = 0, metric_max_depth_m: Optional[int] = None) -> Path:
    """Write a tiny random-initialised ``DepthAnythingForDepthEstimation`` to ``path``.

    A 4-layer, 16-wide DINOv2 backbone with patch 14 and input size 14; for tests only.  With
    ``metric_max_depth_m`` it is a metric model (``depth_estimation_type="metric"``, outputs in
    ``(0, metric_max_depth_m)`` metres), else a relative (disparity) one.  The checkpoint is
    :func:`lensblur.depth_model.make_tiny_depth_checkpoint`'s.
    """
    from lensblur.depth_model import make_tiny_depth_checkpoint

    return make_tiny_depth_checkpoint(path, seed=seed, metric_max_depth_m=metric_max_depth_m)
