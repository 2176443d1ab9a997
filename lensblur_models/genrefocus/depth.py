"""Depth estimators for :func:`~lensblur_models.genrefocus.refocus` from local checkpoints.

:class:`HFDepthEstimator` wraps a ``transformers`` depth-estimation model (DPT, Depth Anything,
GLPN, ... loaded with ``AutoModelForDepthEstimation`` from a **local** directory, no download)
as the pipeline's ``depth_estimator``: ``aif (B, 3, H, W) -> disparity (B, 1, H, W)``.

Most monocular networks predict *relative* inverse depth (disparity); metric-depth networks
(ZoeDepth, Depth Anything metric) predict metres: pass ``output="depth"`` and the estimate is
inverted.  The disparity is then divided by its per-image maximum and clamped to ``[eps, 1]``, so
``K`` in :func:`refocus` reads as *the blur diameter, in pixels, of the nearest point when the
focus is at infinity*.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from lensblur import LensBlurError

from ..common.checks import check_tensor4

__all__ = ["HFDepthEstimator"]


class HFDepthEstimator:
    """A ``transformers`` depth model as ``depth_estimator`` (relative disparity in ``(0, 1]``).

    Args:
        model: a ``transformers`` model whose output has ``predicted_depth`` ``(B, h, w)``.
        input_size: ``(h, w)`` the image is resized to (multiples of the model's patch size);
            ``None`` keeps the image size.
        mean, std: input normalisation (per channel, applied to ``[0, 1]`` values).
        output: ``"disparity"`` (relative inverse depth, the usual case) or ``"depth"``.
        eps: smallest returned disparity (keeps the map strictly positive).
    """

    def __init__(self, model: torch.nn.Module, input_size: Optional[Tuple[int, int]] = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 output: str = "disparity", eps: float = 1e-3) -> None:
        if output not in ("disparity", "depth"):
            raise LensBlurError(f"unknown `output` {output!r}; expected 'disparity' or 'depth'")
        if not (0 < eps < 1):
            raise LensBlurError(f"`eps` must lie in (0, 1), got {eps}")
        if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
            raise LensBlurError(f"`input_size` must be (h, w) with positive sizes, got {input_size!r}")
        self.model = model.eval()
        self.input_size = tuple(int(v) for v in input_size) if input_size is not None else None
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.output, self.eps = output, float(eps)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], **kwargs) -> "HFDepthEstimator":
        """Load ``AutoModelForDepthEstimation`` from the local directory ``path``.

        ``preprocessor_config.json``, when present, supplies ``image_mean`` / ``image_std`` and
        the input size; keyword arguments override them.
        """
        from transformers import AutoModelForDepthEstimation

        path = Path(path)
        if not (path / "config.json").is_file():
            raise LensBlurError(f"`path` {str(path)!r} is not a local model directory (no config.json)")
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            kwargs.setdefault("mean", cfg.get("image_mean", (0.5, 0.5, 0.5)))
            kwargs.setdefault("std", cfg.get("image_std", (0.5, 0.5, 0.5)))
            size = cfg.get("size")
            if isinstance(size, dict) and "height" in size and "width" in size:
                kwargs.setdefault("input_size", (size["height"], size["width"]))
        model = AutoModelForDepthEstimation.from_pretrained(str(path), local_files_only=True)
        return cls(model, **kwargs)

    @torch.no_grad()
    def __call__(self, aif: torch.Tensor) -> torch.Tensor:
        check_tensor4(aif, "aif", 3)
        h, w = aif.shape[-2:]
        p = next(self.model.parameters())
        x = aif.to(device=p.device, dtype=p.dtype).clamp(0, 1)
        if self.input_size is not None and self.input_size != (h, w):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x)) / self.std.to(x)
        pred = self.model(pixel_values=x).predicted_depth
        pred = pred[:, None] if pred.dim() == 3 else pred
        pred = F.interpolate(pred.float(), size=(h, w), mode="bilinear", align_corners=False)
        if self.output == "depth":
            pred = 1.0 / pred.clamp_min(1e-6)
        pred = torch.nan_to_num(pred, nan=0.0, posinf=0.0).clamp_min(0)
        peak = pred.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (pred / peak).clamp(self.eps, 1.0).to(device=aif.device, dtype=aif.dtype)
