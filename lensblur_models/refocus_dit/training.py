r"""Rectified-flow training with the stacking constraint and depth dropout.

**Flow matching.**  With a target latent :math:`z`, noise :math:`\epsilon` and time
:math:`t \sim U(0, 1)`, the model sees :math:`x_t = (1 - t) z + t \epsilon` and regresses the
velocity :math:`v = \epsilon - z`:

.. math::  L_\text{flow} = \operatorname{mean} \| \hat v(x_t, t, \text{ref}, \text{depth}, c) - v \|^2

**Stacking constraint.**  Every scene of a :class:`~.simulate.RefocusBatch` has ``k`` targets
that share the reference, the noise, the time and the bokeh level but focus on different planes.
The clean prediction of each is :math:`\hat z_i = x_{t,i} - t \hat v_i`; blended with the
stacking masks (resized to the latent, ``area``) they must reproduce the latent of the
multi-focus render:

.. math::  L_\text{stack} = \operatorname{mean} \| \textstyle\sum_i M_i \hat z_i - z_\text{multi} \|^2

(see :mod:`.simulate` for the precise multi-focus definition). The total loss is
``flow_weight * L_flow + stack_weight * L_stack``.

**Depth dropout.**  Each scene drops its depth map with probability ``depth_dropout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from lensblur import LensBlurError

from .codec import IdentityCodec, LatentCodec
from .simulate import RefocusBatch

__all__ = ["TrainConfig", "stacking_loss", "flow_matching_inputs", "training_step"]


@dataclass
class TrainConfig:
    """Loss weights and regularisers.

    Attributes:
        flow_weight: weight of the flow-matching loss (>= 0).
        stack_weight: weight of the stacking loss (>= 0).
        depth_dropout: probability of training a scene without its depth map.
    """

    flow_weight: float = 1.0
    stack_weight: float = 0.5
    depth_dropout: float = 0.1

    def __post_init__(self):
        if self.flow_weight < 0 or self.stack_weight < 0:
            raise LensBlurError(f"loss weights must be >= 0, got flow_weight={self.flow_weight}, "
                                f"stack_weight={self.stack_weight}")
        if not 0.0 <= self.depth_dropout <= 1.0:
            raise LensBlurError(f"`depth_dropout` must be in [0, 1], got {self.depth_dropout}")


def stacking_loss(predictions: torch.Tensor, masks: torch.Tensor, multi_focus: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the mask-blended predictions and the multi-focus image.

    Args:
        predictions: ``(B, k, C, h, w)`` per-focus-plane predictions (images or latents).
        masks: ``(B, k, 1, H, W)`` stacking masks; resized to ``(h, w)`` with ``area`` if needed.
        multi_focus: ``(B, C, h, w)`` the multi-focus image (or latent).

    Returns:
        a scalar tensor; zero when each prediction equals the physical render of its plane
        (exactly, for ``"gather"`` renders in pixel space).

    Example:
        >>> import torch
        >>> p = torch.rand(1, 2, 3, 4, 4)
        >>> m = torch.zeros(1, 2, 1, 4, 4); m[:, 0, :, :2] = 1; m[:, 1, :, 2:] = 1
        >>> multi = (m * p).sum(1)
        >>> float(stacking_loss(p, m, multi))
        0.0
    """
    if predictions.dim() != 5 or masks.dim() != 5 or masks.shape[:3] != (*predictions.shape[:2], 1):
        raise LensBlurError(f"`predictions` (B, k, C, h, w) {tuple(predictions.shape)} and `masks` "
                            f"(B, k, 1, H, W) {tuple(masks.shape)} do not match")
    b, k = predictions.shape[:2]
    h, w = predictions.shape[-2:]
    if multi_focus.shape != (b, *predictions.shape[2:]):
        raise LensBlurError(f"`multi_focus` must have shape {(b, *predictions.shape[2:])}, "
                            f"got {tuple(multi_focus.shape)}")
    if masks.shape[-2:] != (h, w):
        masks = F.interpolate(masks.flatten(0, 1), size=(h, w), mode="area").view(b, k, 1, h, w)
    blended = (masks.to(predictions.dtype) * predictions).sum(dim=1)
    return F.mse_loss(blended, multi_focus)


def flow_matching_inputs(z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x_t = (1 - t) z + t noise`` and the velocity target ``noise - z`` (``t`` is ``(B,)``)."""
    tt = t.view(-1, *([1] * (z.dim() - 1))).to(z.dtype)
    return (1 - tt) * z + tt * noise, noise - z


def training_step(model, batch: RefocusBatch, codec: Optional[LatentCodec] = None,
                  config: Optional[TrainConfig] = None,
                  generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Compute the training loss of ``model`` on a simulated batch (no optimiser step).

    Args:
        model: a velocity model ``model(x_t, t, reference, condition, depth, depth_mask)``
            (:class:`~.model.RefocusDiT` or :class:`~lensblur_models.refocus_dit.flux.FluxRefocusDiT`).
        batch: a :class:`~.simulate.RefocusBatch` on the model's device.
        codec: latent codec (default: pixel space).
        config: :class:`TrainConfig`.
        generator: CPU generator for ``t``, the noise and depth dropout (deterministic steps).

    Returns:
        ``(loss, {"loss", "flow", "stack"})`` — the differentiable total and float metrics.
    """
    config = config or TrainConfig()
    codec = codec or IdentityCodec(batch.image.shape[1])
    b, k = batch.conditions.shape[:2]
    device = batch.image.device
    with torch.no_grad():
        z_ref = codec.encode(batch.reference)
        z_tgt = codec.encode(batch.targets.flatten(0, 1))
        z_multi = codec.encode(batch.multi_focus) if config.stack_weight > 0 else None
    t = torch.rand(b, generator=generator).to(device)
    noise = torch.randn(b, *z_ref.shape[1:], generator=generator).to(device, z_ref.dtype)
    keep = (torch.rand(b, generator=generator) >= config.depth_dropout).to(device)

    rep = lambda x: x.repeat_interleave(k, dim=0)  # noqa: E731  per-plane copies
    t_k, noise_k = rep(t), rep(noise)
    x_t, v = flow_matching_inputs(z_tgt, t_k, noise_k)
    v_hat = model(x_t, t_k, rep(z_ref), batch.conditions.flatten(0, 1), rep(batch.depth), rep(keep))
    flow = F.mse_loss(v_hat.float(), v.float())
    loss = config.flow_weight * flow
    stack = torch.zeros((), device=device)
    if config.stack_weight > 0:
        z_hat = x_t - t_k.view(-1, 1, 1, 1) * v_hat
        stack = stacking_loss(z_hat.view(b, k, *z_hat.shape[1:]).float(), batch.masks, z_multi.float())
        loss = loss + config.stack_weight * stack
    return loss, {"loss": float(loss.detach()), "flow": float(flow.detach()), "stack": float(stack.detach())}
