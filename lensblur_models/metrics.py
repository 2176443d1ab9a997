"""Evaluation metrics for controllable defocus.

:func:`blur_monotonicity` is the *Blur Monotonicity* score: render the same scene at a sweep of
f-numbers; stopping down (larger :math:`N`) shrinks every circle of confusion
(:math:`c \\propto 1/N`), so the out-of-focus region must get *sharper* at every step.  The score
is the percentage of adjacent steps in which it does.

Sharpness is the mean squared Laplacian (:func:`laplacian_sharpness`): blur is a low-pass filter,
and the energy of the second derivative falls strictly as a blur kernel grows.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from lensblur import LensBlurError

__all__ = ["blur_monotonicity", "laplacian_sharpness"]

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_sharpness(images: torch.Tensor, region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared Laplacian of the channel mean, over ``region``.

    The 5-point Laplacian is taken with replicated borders; the squared response is averaged with
    the weights ``region`` (all pixels when ``None``).

    Args:
        images: ``(..., C, H, W)`` float tensor.
        region: ``(..., 1, H, W)`` non-negative weights broadcastable to the images' leading
            dimensions, or ``None``.

    Returns:
        ``images.shape[:-3]`` tensor of sharpness values (units: intensity^2 / px^4).

    Example:
        >>> x = torch.zeros(1, 1, 5, 5); x[..., 2, 2] = 1.0
        >>> round(float(laplacian_sharpness(x)), 6)  # (16 + 4 * 1) / 25 pixels
        0.8
    """
    lead = images.shape[:-3]
    h, w = images.shape[-2:]
    gray = images.mean(dim=-3, keepdim=True).reshape(-1, 1, h, w)
    kernel = _LAPLACIAN.to(device=images.device, dtype=gray.dtype).view(1, 1, 3, 3)
    lap = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernel)
    energy = lap.square().reshape(*lead, h, w)
    if region is None:
        return energy.mean(dim=(-2, -1))
    weights = region.to(energy.dtype).squeeze(-3).expand_as(energy)
    return (energy * weights).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1))


def blur_monotonicity(renders: torch.Tensor, f_numbers: Union[Sequence[float], torch.Tensor],
                      region: Optional[torch.Tensor] = None) -> float:
    r"""Blur Monotonicity: percentage of f-number steps in which the blurred region gets sharper.

    For each scene ``b`` the renders are ordered by f-number ascending; for every adjacent pair
    ``(N_s, N_{s+1})`` the step counts as correct when the sharpness of the region
    (:func:`laplacian_sharpness`) **strictly** increases.  The score is
    ``100 * correct / (B * (S - 1))``.  A physically correct renderer scores 100; one that ignores
    the f-number scores 0 (equal sharpness is not an increase).

    Args:
        renders: ``(S, B, C, H, W)``: scene ``b`` rendered at ``S >= 2`` f-numbers.
        f_numbers: ``S`` distinct positive f-numbers (any order; ``renders`` follows it).
        region: optional ``(B, 1, H, W)`` mask / non-negative weights of the out-of-focus area,
            with a non-zero sum for every scene (default: the whole image).

    Returns:
        a float in ``[0, 100]``.

    Raises:
        ValueError (``LensBlurError``) / TypeError: wrong shapes or types, non-finite values,
        repeated or non-positive f-numbers, negative or empty region.

    Example:
        >>> base = torch.zeros(1, 1, 8, 8); base[..., ::2, :] = 1.0
        >>> sweep = torch.stack([base * 0.5, base * 0.8, base * 1.0])   # contrast grows with N
        >>> blur_monotonicity(sweep, [2.0, 4.0, 8.0])
        100.0
        >>> blur_monotonicity(sweep, [8.0, 4.0, 2.0])
        0.0
    """
    if not isinstance(renders, torch.Tensor):
        raise TypeError(f"`renders` must be a torch.Tensor, got {type(renders).__name__}")
    if not renders.is_floating_point():
        raise TypeError(f"`renders` must be a floating point tensor, got dtype {renders.dtype}")
    if renders.dim() != 5:
        raise LensBlurError(f"`renders` must have shape (S, B, C, H, W), got {tuple(renders.shape)}")
    s, b, _, h, w = renders.shape
    if s < 2:
        raise LensBlurError(f"`renders` needs at least 2 f-numbers (S >= 2), got S={s}")
    if b < 1:
        raise LensBlurError("`renders` must hold at least one scene (B >= 1), got B=0")
    if min(renders.shape[2:]) < 1:
        raise LensBlurError(f"`renders` must have C, H and W >= 1, got shape {tuple(renders.shape)}")
    if not bool(torch.isfinite(renders).all()):
        raise LensBlurError("`renders` contains NaN or infinite values")

    if isinstance(f_numbers, torch.Tensor):
        if f_numbers.dim() != 1:
            raise LensBlurError(f"`f_numbers` must be 1-d, got shape {tuple(f_numbers.shape)}")
        fn = [float(v) for v in f_numbers.detach().cpu()]
    else:
        try:
            fn = list(f_numbers)
        except TypeError:
            raise TypeError(f"`f_numbers` must be a sequence or 1-d tensor, got "
                            f"{type(f_numbers).__name__}") from None
        for v in fn:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"`f_numbers` must hold numbers, got {type(v).__name__}")
        fn = [float(v) for v in fn]
    if len(fn) != s:
        raise LensBlurError(f"`f_numbers` has {len(fn)} values but `renders` has S={s} renders")
    if not all(v > 0 and v != float("inf") for v in fn):
        raise LensBlurError(f"`f_numbers` must be finite and > 0, got {fn}")
    if len(set(fn)) != s:
        raise LensBlurError(f"`f_numbers` must be distinct, got {fn}")

    if region is not None:
        if not isinstance(region, torch.Tensor):
            raise TypeError(f"`region` must be a torch.Tensor or None, got {type(region).__name__}")
        if tuple(region.shape) != (b, 1, h, w):
            raise LensBlurError(f"`region` must have shape ({b}, 1, {h}, {w}), got {tuple(region.shape)}")
        region = region.to(device=renders.device, dtype=torch.float64)
        if not bool(torch.isfinite(region).all()) or bool((region < 0).any()):
            raise LensBlurError("`region` must be finite and >= 0")
        if bool((region.sum(dim=(1, 2, 3)) <= 0).any()):
            raise LensBlurError("`region` must select at least one pixel in every scene")

    with torch.no_grad():
        sharp = laplacian_sharpness(renders.detach().to(torch.float64), region)  # (S, B)
    order = sorted(range(s), key=lambda i: fn[i])
    sharp = sharp[order]
    correct = (sharp[1:] > sharp[:-1]).sum().item()
    return 100.0 * correct / (b * (s - 1))
