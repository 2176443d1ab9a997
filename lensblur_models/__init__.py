"""Model families built on :mod:`lensblur` (see ``../shared/seeds``).

``lensblur_models`` only uses the public ``lensblur`` API.  The fixed entry points from SPEC are
:func:`defocus_map`, :func:`blur_strength_from_lens` and :func:`blur_monotonicity`.

* EXIF-conditioned defocus with a Focus Distance Transformer (seed 000):
  :class:`ExifDefocusPipeline`, :class:`FocusDistanceTransformer`, :mod:`.exif`.
* Refocusing diffusion transformer with simulated pairs and the stacking constraint
  (seeds 001/002): :class:`RefocusDiT`, :class:`RefocusDiTPipeline`.
* Generative refocusing with DeblurNet and BokehNet (seed 003): :class:`DeblurNet`,
  :class:`BokehNet`, :func:`refocus`, :class:`RefocusPipeline`.

All three stand on :mod:`lensblur_models.common`: one config base (:class:`ModelConfig`), the
``diffusers`` model base (:class:`LensBlurModel`), one FLUX + LoRA adapter base, one depth
wrapper (:class:`DepthEstimator`) and one Accelerate training loop.
"""

from .common import DepthEstimator, LensBlurModel, ModelConfig
from .defocus_map import blur_strength_from_lens, defocus_map, focus_disparity_at
from .exif import ExifData, ExifEmbedder, ExifError, read_exif, validate_exif
from .exif_defocus import (ExifDefocusConfig, ExifDefocusPipeline, FocusDistanceConfig,
                           FocusDistanceTransformer)
from .genrefocus import (BokehNet, BokehNetConfig, DeblurNet, DeblurNetConfig, PhysicalBokeh,
                         RefocusPipeline, refocus)
from .metrics import blur_monotonicity
from .refocus_dit import RefocusDiT, RefocusDiTConfig, RefocusDiTPipeline

__all__ = [
    # SPEC entry points
    "blur_strength_from_lens", "defocus_map", "blur_monotonicity", "focus_disparity_at",
    # seed 000
    "ExifData", "ExifEmbedder", "ExifError", "read_exif", "validate_exif", "ExifDefocusConfig",
    "ExifDefocusPipeline", "FocusDistanceConfig", "FocusDistanceTransformer",
    # seed 003
    "BokehNet", "BokehNetConfig", "DeblurNet", "DeblurNetConfig", "PhysicalBokeh",
    "RefocusPipeline", "refocus",
    # seeds 001/002
    "RefocusDiT", "RefocusDiTConfig", "RefocusDiTPipeline",
    # the shared floor (lensblur_models.common)
    "DepthEstimator", "LensBlurModel", "ModelConfig",
]
