"""Generative refocusing (seed 003): DeblurNet + BokehNet, simulated data, pipeline, evaluation.

* ``genrefocus.models`` — :class:`DeblurNet` (defocused -> all-in-focus) and :class:`BokehNet`
  (all-in-focus + defocus map + aperture tokens -> defocused), token-concatenation transformers
  on :mod:`lensblur_models.nn`, with ``tiny()`` / ``small()`` / ``base()`` configs.
* ``genrefocus.tokens`` — aperture-shape tokens from :meth:`lensblur.Aperture.kernel`.
* ``genrefocus.data`` — training batches rendered on the fly by :mod:`lensblur` with random apertures.
* ``genrefocus.train`` — the networks' task of the shared Accelerate loop
  (:mod:`lensblur_models.common.train`) and :func:`train`, its in-Python front-end.
  ``genrefocus.pipeline`` — :func:`refocus` and :class:`RefocusPipeline`.
* ``genrefocus.evaluate`` — PSNR and LPIPS (or the documented SSIM fallback) on a held-out set.
* depth: the shared :class:`lensblur_models.common.DepthEstimator` with ``output="disparity"``
  is the pipeline's depth estimator.
* ``genrefocus.flux`` — :class:`FluxBridgeAdapter`, the networks on a local diffusers FLUX transformer with
  LoRA (on :class:`~lensblur_models.common.flux.FluxAdapterBase`; imported lazily).
"""

from .data import DEFAULT_RENDER_METHOD, RefocusData, random_aperture, random_lens, random_scene
from .evaluate import evaluate_refocus, image_metrics, make_refocus_set, perceptual_metric, psnr
from .models import BokehNet, BokehNetConfig, DeblurNet, DeblurNetConfig
from .pipeline import PhysicalBokeh, RefocusOutput, RefocusPipeline, refocus
from .tokens import aperture_canvas, aperture_tokens
from .train import eval_loss, train

__all__ = [
    "BokehNet", "BokehNetConfig", "DeblurNet", "DeblurNetConfig", "DEFAULT_RENDER_METHOD",
    "PhysicalBokeh",
    "RefocusData", "RefocusOutput", "RefocusPipeline", "aperture_canvas", "aperture_tokens", "eval_loss",
    "evaluate_refocus", "image_metrics", "make_refocus_set", "perceptual_metric", "psnr", "random_aperture",
    "random_lens", "random_scene", "refocus", "train", "FluxBridgeAdapter",
]


def __getattr__(name):  # the FLUX adapter imports diffusers/peft: only on demand
    if name == "FluxBridgeAdapter":
        from .flux import FluxBridgeAdapter
        return FluxBridgeAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
