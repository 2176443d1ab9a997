"""One ``transformers`` depth wrapper with an explicit output convention.

:class:`DepthEstimator` wraps a depth-estimation model (DPT, Depth Anything, GLPN, ZoeDepth ...
loaded with ``AutoModelForDepthEstimation`` from a **local** directory; nothing is downloaded).
Its weights are frozen and it stays in eval mode, but its output is differentiable w.r.t. the
input image, so a generator upstream can be trained through it.

Input: ``(B, 3, H, W)`` display-encoded RGB in ``[0, 1]``.  It is resized (``input_size``: the
shorter side, both sides rounded to multiples of the backbone's patch; or an explicit ``(h, w)``),
normalised with the model's mean / std, and the prediction is resized back to ``(H, W)``.

What the network predicts is read from its config (``depth_estimation_type == "metric"``:
metres; otherwise relative inverse depth, the usual case) or given as ``prediction``.  What the
wrapper returns is chosen explicitly with ``output``:

``"metric"``
    depth in metres (a metric network only; a relative one raises).
``"disparity"``
    relative inverse depth divided by its per-image maximum: values in ``[1 / max_relative_depth,
    1]``, 1 at the nearest point (the refocusing pipelines' ``depth_estimator`` convention).
``"relative"``
    relative depth ``1 / disparity``: values in ``[1, max_relative_depth]``, 1 at the nearest
    point (the EXIF pipeline learns the metric scale).

Example:
    >>> import tempfile, torch
    >>> from lensblur_models.exif_defocus import make_tiny_depth_model
    >>> with tempfile.TemporaryDirectory() as d:
    ...     est = DepthEstimator.from_pretrained(make_tiny_depth_model(d), output="relative")
    ...     depth = est(torch.rand(1, 3, 14, 21))
    >>> depth.shape, bool((depth >= 1).all())
    (torch.Size([1, 1, 14, 21]), True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from lensblur import LensBlurError

from .checks import check_tensor4

__all__ = ["DepthEstimator", "DEPTH_OUTPUTS", "IMAGENET_MEAN", "IMAGENET_STD"]

DEPTH_OUTPUTS = ("metric", "disparity", "relative")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File in which the wrapper's own settings are saved next to the transformers checkpoint.
SETTINGS_NAME = "lensblur_depth.json"
PathLike = Union[str, os.PathLike]


class DepthEstimator(nn.Module):
    """A frozen ``transformers`` depth model returning ``output`` (see the module docstring).

    Args:
        model: a ``transformers`` model whose output has ``predicted_depth`` ``(B, h, w)``.
        output: ``"metric"``, ``"disparity"`` or ``"relative"``.
        prediction: what ``model`` predicts: ``"auto"`` (from its config), ``"metric"`` or
            ``"disparity"``.
        input_size: shorter side of the network input (``None``: the config's ``image_size``)
            or an explicit ``(h, w)``.
        mean, std: per-channel input normalisation of ``[0, 1]`` values.
        max_relative_depth: the relative outputs are clamped to ``[1, max_relative_depth]``
            (disparity to ``[1 / max_relative_depth, 1]``), so they stay positive and finite.
    """

    def __init__(self, model: nn.Module, *, output: str, prediction: str = "auto",
                 input_size: Union[None, int, Sequence[int]] = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, max_relative_depth: float = 100.0) -> None:
        super().__init__()
        if output not in DEPTH_OUTPUTS:
            raise LensBlurError(f"unknown `output` {output!r}; expected one of {', '.join(DEPTH_OUTPUTS)}")
        cfg = model.config
        if prediction == "auto":
            prediction = "metric" if getattr(cfg, "depth_estimation_type", "relative") == "metric" else "disparity"
        if prediction not in ("metric", "disparity"):
            raise LensBlurError(f"unknown `prediction` {prediction!r}; expected 'auto', 'metric' or 'disparity'")
        if output == "metric" and prediction != "metric":
            raise LensBlurError("`output='metric'` needs a metric depth network; this one predicts relative "
                                "disparity (use output='disparity' or 'relative')")
        if not max_relative_depth > 1:
            raise LensBlurError(f"`max_relative_depth` must be > 1, got {max_relative_depth}")
        backbone = getattr(cfg, "backbone_config", None)
        self.patch = int(getattr(cfg, "patch_size", None) or getattr(backbone, "patch_size", 1) or 1)
        if input_size is None:
            input_size = getattr(backbone, "image_size", None) or getattr(cfg, "image_size", None) or 518
        if isinstance(input_size, (list, tuple)):
            if len(input_size) != 2 or min(input_size) < 1:
                raise LensBlurError(f"`input_size` must be an int or (h, w) with positive sizes, got {input_size!r}")
            input_size = (int(input_size[0]), int(input_size[1]))
        elif isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise LensBlurError(f"`input_size` must be an int or (h, w) with positive sizes, got {input_size!r}")
        self.model = model.eval().requires_grad_(False)
        self.output, self.prediction = output, prediction
        self.input_size = input_size
        self.max_relative_depth = float(max_relative_depth)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):  # the wrapped network stays in eval mode (frozen)
        super().train(mode)
        self.model.eval()
        return self

    @classmethod
    def from_pretrained(cls, path: PathLike, **kwargs) -> "DepthEstimator":
        """Load ``AutoModelForDepthEstimation`` from the local directory ``path``.

        The settings saved by :meth:`save_pretrained`, then ``preprocessor_config.json`` (mean,
        std and input size), fill what ``kwargs`` (``output=`` ...) leave open.
        """
        from transformers import AutoModelForDepthEstimation

        p = Path(path)
        if not (p / "config.json").is_file():
            raise LensBlurError(f"`path` {str(p)!r} is not a local checkpoint directory with config.json "
                                "(nothing is downloaded)")
        saved = p / SETTINGS_NAME
        if saved.is_file():
            kwargs = {**json.loads(saved.read_text()), **kwargs}
        pre = p / "preprocessor_config.json"
        if pre.is_file():
            pc = json.loads(pre.read_text())
            kwargs.setdefault("mean", pc.get("image_mean", IMAGENET_MEAN))
            kwargs.setdefault("std", pc.get("image_std", IMAGENET_STD))
            size = pc.get("size")
            if isinstance(size, dict) and "height" in size and "width" in size:
                keep = pc.get("keep_aspect_ratio", False)
                kwargs.setdefault("input_size", min(size["height"], size["width"]) if keep
                                  else (size["height"], size["width"]))
        if "output" not in kwargs:
            raise TypeError("DepthEstimator.from_pretrained needs `output` ('metric', 'disparity' or 'relative')")
        model = AutoModelForDepthEstimation.from_pretrained(str(p), local_files_only=True)
        return cls(model, **kwargs)

    def save_pretrained(self, path: PathLike) -> None:
        """Write the wrapped model (transformers format) and this wrapper's settings."""
        self.model.save_pretrained(str(path))
        size = list(self.input_size) if isinstance(self.input_size, tuple) else self.input_size
        settings = {"output": self.output, "prediction": self.prediction, "input_size": size,
                    "max_relative_depth": self.max_relative_depth,
                    "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        (Path(path) / SETTINGS_NAME).write_text(json.dumps(settings))

    def _network_size(self, h: int, w: int) -> Tuple[int, int]:
        if isinstance(self.input_size, tuple):
            return self.input_size
        s = self.input_size / min(h, w)
        p = self.patch
        return max(p, round(h * s / p) * p), max(p, round(w * s / p) * p)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` image in ``[0, 1]`` -> ``(B, 1, H, W)`` in the ``output`` convention."""
        check_tensor4(image, "image", 3)
        h, w = image.shape[-2:]
        dtype = next(self.model.parameters()).dtype
        x = F.interpolate(image.clamp(0, 1), size=self._network_size(h, w), mode="bilinear", align_corners=False)
        x = ((x - self.mean.to(x)) / self.std.to(x)).to(dtype)
        pred = self.model(pixel_values=x).predicted_depth
        pred = pred[:, None] if pred.dim() == 3 else pred
        pred = F.interpolate(pred.to(image.dtype), size=(h, w), mode="bilinear", align_corners=False)
        pred = torch.nan_to_num(pred, nan=0.0, posinf=0.0).clamp_min(0)
        if self.output == "metric":
            return pred.clamp_min(1e-3)
        disp = 1.0 / pred.clamp_min(1e-6) if self.prediction == "metric" else pred
        disp = disp / disp.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        disp = disp.clamp(1.0 / self.max_relative_depth, 1.0)
        return disp if self.output == "disparity" else 1.0 / disp
