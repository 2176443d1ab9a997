"""Refocusing diffusion transformer trained on simulated pairs with the stacking constraint.

After DiffCamera (seed 001/002): refocus an existing image to a new focus point ``(x, y)`` and
bokeh level ``b``.

* :mod:`.simulate` — (reference, target, condition) pairs and multi-focus renders with
  :func:`lensblur.render`.
* :mod:`.model` — :class:`RefocusDiT` (token concat [noisy target; reference; depth; flag]).
* :mod:`.codec` — pixel space or a ``diffusers`` VAE.
* :mod:`.training` — flow-matching + stacking loss, depth dropout.
* :mod:`.pipeline` — the sampler :func:`refocus`.
* :mod:`.flux` — the same conditioning on a ``diffusers`` FLUX transformer with LoRA.
* :mod:`.train` — the training command, a task of the shared Accelerate loop (one process,
  ``accelerate launch`` DDP or FSDP).
"""

from .codec import AutoencoderKLCodec, IdentityCodec, LatentCodec
from .model import RefocusDiT, RefocusDiTConfig, normalized_disparity
from .pipeline import RefocusDiTOutput, RefocusDiTPipeline, refocus
from .simulate import (DEFAULT_RENDER_METHOD, RefocusBatch, SimulationConfig, focus_depth_at,
                       lens_for_condition, multi_focus_render, render_condition, render_signed_coc,
                       sample_conditions, simulate_batch)
from .training import TrainConfig, flow_matching_inputs, stacking_loss, training_step

__all__ = [
    "AutoencoderKLCodec", "IdentityCodec", "LatentCodec",
    "RefocusDiT", "RefocusDiTConfig", "normalized_disparity",
    "RefocusDiTOutput", "RefocusDiTPipeline", "refocus",
    "DEFAULT_RENDER_METHOD", "RefocusBatch", "SimulationConfig", "focus_depth_at",
    "lens_for_condition", "multi_focus_render", "render_condition", "render_signed_coc",
    "sample_conditions", "simulate_batch",
    "TrainConfig", "flow_matching_inputs", "stacking_loss", "training_step", "FluxRefocusDiT",
]


def __getattr__(name):  # the FLUX adapter imports peft: only on demand
    if name == "FluxRefocusDiT":
        from .flux import FluxRefocusDiT
        return FluxRefocusDiT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
