"""The argument checks of every ``lensblur_models`` public boundary (errors name the argument).

Tensors: :func:`check_tensor4` (a finite float ``(B, C, H, W)``), :func:`check_pair` (matching
batch and spatial sizes).  Numbers: :func:`check_int`.  Architectures:
:func:`check_transformer_args` (the shared :class:`~lensblur_models.common.ModelConfig` fields).
Wrong types raise ``TypeError``, wrong values :class:`lensblur.LensBlurError` (a ``ValueError``).
"""

from __future__ import annotations

import torch

from lensblur import LensBlurError

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor4(x, name: str, channels=None, *, positive: bool = False, nonnegative: bool = False) -> None:
    """``x`` must be a finite floating ``(B, C, H, W)`` tensor (``C == channels`` when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {x.dtype}")
    want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels) or min(x.shape) == 0:
        raise LensBlurError(f"`{name}` must have shape {want}, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise LensBlurError(f"`{name}` contains NaN or infinite values")
    if positive and not bool((x > 0).all()):
        raise LensBlurError(f"`{name}` must be > 0 everywhere")
    if nonnegative and not bool((x >= 0).all()):
        raise LensBlurError(f"`{name}` must be >= 0 everywhere")


def check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Batch, height and width of two ``(B, ., H, W)`` tensors must agree."""
    if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
        raise LensBlurError(f"`{name_b}` of shape {tuple(b.shape)} does not match `{name_a}` of shape "
                            f"{tuple(a.shape)}: batch, height and width must agree")


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` must be an ``int`` (not a bool) ``>= minimum``; returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < minimum:
        raise LensBlurError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_transformer_args(*, in_channels: int, patch_size: int, dim: int, depth: int, heads: int) -> None:
    """The shared architecture fields: positive ints, ``dim`` a multiple of 4 and of ``heads``."""
    for name, value in (("in_channels", in_channels), ("patch_size", patch_size), ("dim", dim),
                        ("depth", depth), ("heads", heads)):
        check_int(value, name)
    if dim % 4 or dim % heads:
        raise LensBlurError(f"`dim` ({dim}) must be a multiple of 4 and of `heads` ({heads})")
