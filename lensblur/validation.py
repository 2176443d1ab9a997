"""Input validation shared by every public entry point.

Validation happens once, at the public boundary (``defocus``, ``render``, ``ThinLens``,
``Aperture``...).  Kernels trust their inputs.  Every check raises :class:`LensBlurError`
(a :class:`ValueError`) or :class:`TypeError` with a message that names the argument.
"""

from __future__ import annotations

import numbers
from typing import Iterable

import torch

__all__ = [
    "LensBlurError",
    "check_choice",
    "check_image",
    "check_map",
    "check_same_geometry",
    "check_lens_param",
    "check_positive_float",
    "check_range",
    "check_not_meta",
]


class LensBlurError(ValueError):
    """Raised for invalid arguments to a lensblur function (a :class:`ValueError`)."""


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"`{name}` must be a floating point tensor, got dtype {x.dtype}")
    check_not_meta(x, name)


def check_not_meta(x: torch.Tensor, name: str) -> None:
    """Tensors on the ``meta`` device hold no data: lensblur reads values (validation, layer
    ranges), so they are refused by name rather than failing inside ``Tensor.item()``."""
    if x.device.type == "meta":
        raise LensBlurError(f"`{name}` is on the meta device (no data); lensblur needs real "
                            "tensors (cpu or cuda)")


def _tracing() -> bool:
    """True while ``torch.compile`` traces: value checks (which read tensor data and would break
    the graph) are skipped there; shapes, dtypes and devices are still checked."""
    return torch.compiler.is_compiling()


def _check_finite(x: torch.Tensor, name: str) -> None:
    if _tracing():
        return
    if not bool(torch.isfinite(x).all()):
        raise LensBlurError(f"`{name}` contains NaN or infinite values")


def check_image(image, name: str = "image") -> None:
    """Check a ``(B, C, H, W)`` floating point image tensor (values are not range-checked)."""
    _check_tensor(image, name)
    if image.dim() != 4:
        raise LensBlurError(
            f"`{name}` must have shape (B, C, H, W), got {tuple(image.shape)} ({image.dim()}-D)")
    if min(image.shape) == 0:
        raise LensBlurError(f"`{name}` must not be empty, got shape {tuple(image.shape)}")
    _check_finite(image, name)


def check_map(x, name: str, *, positive: bool = False, nonnegative: bool = False) -> None:
    """Check a ``(B, 1, H, W)`` per-pixel map (depth, disparity, coc)."""
    _check_tensor(x, name)
    if x.dim() != 4 or x.shape[1] != 1:
        raise LensBlurError(f"`{name}` must have shape (B, 1, H, W), got {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise LensBlurError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    _check_finite(x, name)
    if _tracing():
        return
    if positive and not bool((x > 0).all()):
        raise LensBlurError(f"`{name}` must be > 0 everywhere (min is {x.min().item():.4g})")
    if nonnegative and not bool((x >= 0).all()):
        raise LensBlurError(f"`{name}` must be >= 0 everywhere (min is {x.min().item():.4g})")


def check_same_geometry(image: torch.Tensor, other: torch.Tensor, name: str,
                        image_name: str = "image") -> None:
    """``other`` (B, 1, H, W) must match ``image`` (B, C, H, W) in batch, height, width, device."""
    if other.shape[0] != image.shape[0] or other.shape[-2:] != image.shape[-2:]:
        raise LensBlurError(
            f"`{name}` of shape {tuple(other.shape)} does not match `{image_name}` of shape "
            f"{tuple(image.shape)}: batch, height and width must agree")
    if other.device != image.device:
        raise LensBlurError(
            f"`{name}` is on {other.device} but `{image_name}` is on {image.device}")


def check_choice(value, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise LensBlurError(f"unknown `{name}` {value!r}; expected one of {', '.join(choices)}")
    return value


def check_lens_param(value, name: str, *, allow_zero: bool = False) -> None:
    """A lens parameter: Python number, 0-d tensor or ``(B,)`` tensor, finite and > 0
    (>= 0 with ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number or a tensor, got bool")
    if isinstance(value, numbers.Real):
        v = float(value)
        if v != v or v in (float("inf"), float("-inf")):
            raise LensBlurError(f"`{name}` must be finite, got {value}")
        if v < 0 or (v == 0 and not allow_zero):
            raise LensBlurError(f"`{name}` must be {bound}, got {value}")
        return
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"`{name}` must be a floating point tensor, got dtype {value.dtype}")
        if value.dim() > 1:
            raise LensBlurError(
                f"`{name}` must be a 0-d or (B,) tensor, got shape {tuple(value.shape)}")
        if value.numel() == 0:
            raise LensBlurError(f"`{name}` must not be empty, got shape {tuple(value.shape)}")
        check_not_meta(value, name)
        v = value.detach()
        _check_finite(v, name)
        if not bool(((v >= 0) if allow_zero else (v > 0)).all()):
            raise LensBlurError(f"`{name}` must be {bound}, got min {v.min().item():.4g}")
        return
    raise TypeError(f"`{name}` must be a float or a tensor, got {type(value).__name__}")


def check_positive_float(value, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    v = float(value)
    if v != v or abs(v) == float("inf"):
        raise LensBlurError(f"`{name}` must be finite, got {value}")
    if v < 0 or (v == 0 and not allow_zero):
        raise LensBlurError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return v


def check_range(value, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    v = float(value)
    if not (lo <= v <= hi):
        raise LensBlurError(f"`{name}` must lie in [{lo}, {hi}], got {value}")
    return v
