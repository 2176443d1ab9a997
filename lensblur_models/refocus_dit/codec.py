"""Latent codecs: where the refocusing transformer denoises (pixels or a VAE latent).

A codec maps ``(B, C, H, W)`` images to ``(B, channels, H / downsample, W / downsample)`` latents
and back.  :class:`IdentityCodec` works in pixel space (tiny models, tests);
:class:`AutoencoderKLCodec` wraps a ``diffusers`` ``AutoencoderKL`` (e.g. the FLUX or SD VAE) from
a local checkpoint.  Codecs are frozen: training never updates them.

Example:
    >>> import torch
    >>> codec = IdentityCodec(channels=3)
    >>> x = torch.rand(1, 3, 8, 8)
    >>> torch.equal(codec.decode(codec.encode(x)), x)
    True
"""

from __future__ import annotations

import abc
import os
from typing import Optional, Union

import torch
from torch import nn

from lensblur import LensBlurError

__all__ = ["LatentCodec", "IdentityCodec", "AutoencoderKLCodec"]


class LatentCodec(nn.Module, metaclass=abc.ABCMeta):
    """Abstract interface of a codec.

    Attributes:
        channels: latent channels; image_channels: image channels;
        downsample: spatial factor between image and latent.
    """

    channels: int
    image_channels: int
    downsample: int

    @abc.abstractmethod
    def encode(self, image: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, image_channels, H, W)`` -> ``(B, channels, H / downsample, W / downsample)``."""

    @abc.abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode` (up to the codec's loss)."""

    def check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"`image` must be a torch.Tensor, got {type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != self.image_channels:
            raise LensBlurError(f"`image` must have shape (B, {self.image_channels}, H, W), "
                                f"got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise LensBlurError(f"`image` size {h}x{w} must be a multiple of the codec's "
                                f"downsampling factor {self.downsample}")


class IdentityCodec(LatentCodec):
    """Pixel space: ``latent = (image - shift) * scale``.

    Args:
        channels: image channels.
        shift, scale: affine normalisation (e.g. ``shift=0.5, scale=2`` maps ``[0, 1]`` to
            ``[-1, 1]``).
    """

    def __init__(self, channels: int = 3, shift: float = 0.0, scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise LensBlurError(f"`scale` must be > 0, got {scale}")
        self.channels = self.image_channels = int(channels)
        self.downsample = 1
        self.shift, self.scale = float(shift), float(scale)

    def encode(self, image, generator=None):
        self.check_image(image)
        return (image - self.shift) * self.scale

    def save_pretrained(self, path) -> None:
        """Write the settings to ``path/codec.json``."""
        import json
        from pathlib import Path

        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "codec.json").write_text(json.dumps(
            {"channels": self.channels, "shift": self.shift, "scale": self.scale}))

    @classmethod
    def from_pretrained(cls, path) -> "IdentityCodec":
        """Read a codec written by :meth:`save_pretrained`."""
        import json
        from pathlib import Path

        return cls(**json.loads((Path(path) / "codec.json").read_text()))

    def decode(self, latent):
        return latent / self.scale + self.shift


class AutoencoderKLCodec(LatentCodec):
    """A frozen ``diffusers.AutoencoderKL``: images in ``[0, 1]`` <-> normalised latents.

    ``encode(x) = (mean(vae.encode(2x - 1)) - shift_factor) * scaling_factor`` (the posterior
    mean, or a sample when a ``generator`` is given and ``sample=True``);
    ``decode(z) = (vae.decode(z / scaling_factor + shift_factor) + 1) / 2``.

    Args:
        vae: an ``AutoencoderKL`` instance.
        sample: draw from the posterior instead of taking its mean.
    """

    def __init__(self, vae, sample: bool = False):
        super().__init__()
        from diffusers import AutoencoderKL

        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"`vae` must be a diffusers.AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.channels = int(cfg.latent_channels)
        self.image_channels = int(cfg.in_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.sample = bool(sample)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], subfolder: Optional[str] = None,
                        sample: bool = False, **kwargs) -> "AutoencoderKLCodec":
        """Load the VAE from a local diffusers checkpoint directory (``subfolder="vae"`` for a
        full pipeline folder)."""
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(os.fspath(path), subfolder=subfolder, **kwargs)
        return cls(vae, sample=sample)

    def save_pretrained(self, path) -> None:
        """Write the VAE (diffusers format); ``sample`` is not saved (posterior mean on load)."""
        self.vae.save_pretrained(os.fspath(path))

    def train(self, mode: bool = True):  # the VAE stays frozen in eval mode
        super().train(mode)
        self.vae.eval()
        return self

    def encode(self, image, generator=None):
        self.check_image(image)
        dtype = self.vae.dtype
        dist = self.vae.encode((image * 2 - 1).to(dtype)).latent_dist
        z = dist.sample(generator) if self.sample else dist.mean
        return ((z - self.shift_factor) * self.scaling_factor).to(image.dtype)

    def decode(self, latent):
        z = latent.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return ((self.vae.decode(z).sample + 1) / 2).to(latent.dtype)
