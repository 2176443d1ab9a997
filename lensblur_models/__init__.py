"""Model families built on :mod:`lensblur` (see ``../shared/seeds``).

``lensblur_models`` only uses the public ``lensblur`` API.  The fixed entry points from SPEC are
:func:`defocus_map`, :func:`blur_strength_from_lens` and :func:`blur_monotonicity`.
"""

from .defocus_map import blur_strength_from_lens, defocus_map, focus_disparity_at  # noqa: E402

__all__ = ["blur_strength_from_lens", "defocus_map", "focus_disparity_at"]

# issue 8: EXIF-conditioned defocus with a Focus Distance Transformer
from .metrics import blur_monotonicity  # noqa: E402
from .exif import ExifData, ExifEmbedder, ExifError, read_exif, validate_exif  # noqa: E402
from .exif_defocus import (ExifDefocusConfig, ExifDefocusPipeline, FocusDistanceConfig,  # noqa: E402
                           FocusDistanceTransformer)

__all__ += ["blur_monotonicity", "ExifData", "ExifEmbedder", "ExifError", "read_exif", "validate_exif",
            "ExifDefocusConfig", "ExifDefocusPipeline", "FocusDistanceConfig", "FocusDistanceTransformer"]

# issue 10: generative refocusing (DeblurNet + BokehNet)
from .genrefocus import (BokehNet, BokehNetConfig, DeblurNet, DeblurNetConfig, PhysicalBokeh,  # noqa: E402
                         RefocusPipeline, refocus)

__all__ += ["BokehNet", "BokehNetConfig", "DeblurNet", "DeblurNetConfig", "PhysicalBokeh", "RefocusPipeline",
            "refocus"]

# issue 9: refocusing diffusion transformer (simulated pairs + stacking constraint)
from .refocus_dit import RefocusDiT, RefocusDiTConfig, RefocusDiTPipeline  # noqa: E402

__all__ += ["RefocusDiT", "RefocusDiTConfig", "RefocusDiTPipeline"]
