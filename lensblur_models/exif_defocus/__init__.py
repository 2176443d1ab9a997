"""EXIF-conditioned defocus generation with a Focus Distance Transformer (seed paper 000).

* :class:`FocusDistanceTransformer` (+ :class:`FocusDistanceConfig`): image + depth + EXIF ->
  focus distance (metres, inside the scene's depth range) and depth scale.
* :class:`ExifDefocusPipeline` (+ :class:`ExifDefocusConfig`): generator -> depth -> FDT ->
  lens blur, with an unsupervised training step and an inference API with focus / f-number
  overrides.
* Adapters: :class:`DiffusersGenerator` (UNet LoRA by default, VAE frozen) and the shared
  :class:`lensblur_models.common.DepthEstimator` (local checkpoints only).
* :func:`make_focus_dataset`: synthetic defocused photos with known focus for tests and demos;
  :func:`load_exif_photos`: real photos and their EXIF as a training batch.
"""

from .adapters import DiffusersGenerator, make_tiny_depth_model, make_tiny_diffusers_generator
from .data import load_exif_photos, make_focus_dataset
from .fdt import FocusDistanceConfig, FocusDistanceTransformer, FocusPrediction, load_vit_weights
from .pipeline import (DEFAULT_BLUR_METHOD, ExifDefocusConfig, ExifDefocusOutput, ExifDefocusPipeline,
                       log_focus_error)

__all__ = ["DEFAULT_BLUR_METHOD", "DiffusersGenerator", "ExifDefocusConfig", "ExifDefocusOutput",
           "ExifDefocusPipeline", "FocusDistanceConfig", "FocusDistanceTransformer", "FocusPrediction",
           "load_exif_photos", "load_vit_weights", "log_focus_error", "make_focus_dataset",
           "make_tiny_depth_model", "make_tiny_diffusers_generator"]
