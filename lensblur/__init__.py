"""lensblur: physics-based, differentiable depth of field for PyTorch.

Data flows one way: image + depth -> coc (:mod:`~lensblur.optics`) -> layers
(:mod:`~lensblur.render`, :mod:`~lensblur.layered`) -> operator (:func:`~lensblur.defocus`) ->
backend kernel (:mod:`lensblur.ops`).
"""

import os as _os

import torch as _torch

# Triton kernels run under its interpreter on machines without CUDA; the variable must be set
# before triton is first imported (``torch._dynamo``, imported below, imports it).
try:
    if not _torch.cuda.is_available():
        _os.environ.setdefault("TRITON_INTERPRET", "1")
except Exception:  # pragma: no cover - a broken CUDA setup must not break ``import lensblur``
    pass

from .apertures import Aperture
from .defocus import available_backends, defocus
from .optics import ThinLens, disparity_coc
from .render import LensBlur, render, render_coc
from .validation import LensBlurError

__version__ = "0.1.0"

__all__ = ["Aperture", "LensBlur", "LensBlurError", "ThinLens", "available_backends", "defocus",
           "disparity_coc", "render", "render_coc", "__version__"]

_LAZY_SUBMODULES = ("testing", "scene", "io", "exr", "cli", "layered", "augment", "learnable", "ops")
_LAZY_SUBMODULES += ("bench", "depth_model")


def __getattr__(name):  # lazy: ``lensblur.testing`` needs hypothesis, ``lensblur.io`` Pillow
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
