"""Model families built on :mod:`lensblur` (see ``../shared/seeds``).

``lensblur_models`` only uses the public ``lensblur`` API.  The fixed entry points from SPEC are
:func:`defocus_map`, :func:`blur_strength_from_lens` and :func:`blur_monotonicity`.
"""

from .defocus_map import blur_strength_from_lens, defocus_map, focus_disparity_at  # noqa: E402

__all__ = ["blur_strength_from_lens", "defocus_map", "focus_disparity_at"]
