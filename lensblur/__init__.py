"""lensblur: physics-based, differentiable depth of field for PyTorch.

Data flows one way: image + depth -> coc (:mod:`~lensblur.optics`) -> layers
(:mod:`~lensblur.render`, :mod:`~lensblur.layered`) -> operator (:func:`~lensblur.defocus`) ->
backend kernel (:mod:`lensblur.ops`).
"""

from .apertures import Aperture
from .defocus import available_backends, defocus
from .optics import ThinLens, disparity_coc
from .render import LensBlur, render
from .validation import LensBlurError
from .render import render_coc  # noqa: E402  (the render step from a signed coc map)

__version__ = "0.1.0"

__all__ = ["Aperture", "LensBlur", "LensBlurError", "ThinLens", "available_backends", "defocus",
           "disparity_coc", "render", "__version__"]
__all__ += ["render_coc"]

_LAZY_SUBMODULES = ("testing", "scene", "io", "exr", "cli", "layered", "augment", "learnable", "ops")
_LAZY_SUBMODULES += ("bench", "depth_model")


def __getattr__(name):  # lazy: ``lensblur.testing`` needs hypothesis, ``lensblur.io`` Pillow
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
