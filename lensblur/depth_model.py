"""Depth for photos that come without a depth map, and focusing on a pixel.

:class:`DepthModel` runs a local ``transformers`` depth-estimation checkpoint (Depth Anything,
DPT, GLPN, ... loaded with ``AutoModelForDepthEstimation`` from a directory, never downloaded;
needs the ``models`` extra) on an sRGB photo and returns metric depth in metres:

* a **metric** model (``config.depth_estimation_type == "metric"``, e.g. the Depth Anything V2
  metric checkpoints) predicts metres: they are used as they are (clamped to >= 1 mm);
* a **relative** model (the default of most checkpoints) predicts inverse depth up to an
  unknown scale and shift, ``1 / depth = a * pred + b``.  The two unknowns are set by a depth
  range ``(near_m, far_m)``: the largest prediction in the frame is placed at ``near_m`` and the
  smallest at ``far_m``, linearly in inverse depth in between::

      1 / depth = 1 / far_m + (pred - pred.min()) / (pred.max() - pred.min()) * (1 / near_m - 1 / far_m)

  (``lensblur render --depth-range NEAR,FAR``; :data:`DEFAULT_DEPTH_RANGE_M` when not given).
  Pick it for the scene: the nearest and the farthest thing in the photo.

:func:`focus_depth_at` is the depth "at this point": the median over a small window around a
pixel, robust to an edge or a noisy estimate under the cursor.

Example:
    >>> depth = torch.full((1, 1, 8, 8), 4.0); depth[..., :, 4:] = 1.5
    >>> focus_depth_at(depth, 6, 3, window=3)
    1.5
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .validation import LensBlurError, check_map

__all__ = ["DepthModel", "relative_to_metric", "focus_depth_at", "make_tiny_depth_checkpoint",
           "DEFAULT_DEPTH_RANGE_M"]

#: ``(near_m, far_m)`` a relative model's prediction is mapped to when no range is given.
DEFAULT_DEPTH_RANGE_M = (1.0, 20.0)


def relative_to_metric(pred: torch.Tensor, depth_range_m: Tuple[float, float] = DEFAULT_DEPTH_RANGE_M
                       ) -> torch.Tensor:
    """Map a relative inverse-depth prediction ``(B, 1, H, W)`` to metres (module docstring):
    per image, the largest value goes to ``near_m``, the smallest to ``far_m``.  A constant
    prediction gives ``far_m`` everywhere."""
    near, far = _check_range(depth_range_m)
    flat = pred.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1, 1) - lo).clamp_min(1e-12)
    t = ((pred - lo) / span).clamp(0, 1)
    return 1.0 / (1.0 / far + t * (1.0 / near - 1.0 / far))


def _check_range(depth_range_m) -> Tuple[float, float]:
    try:
        near, far = (float(v) for v in depth_range_m)
    except (TypeError, ValueError) as exc:
        raise LensBlurError(f"`depth_range_m` must be (near_m, far_m), got {depth_range_m!r}") from exc
    if not (0 < near < far < float("inf")):
        raise LensBlurError(f"`depth_range_m` must satisfy 0 < near < far (metres), got {depth_range_m!r}")
    return near, far


def focus_depth_at(depth: torch.Tensor, x: int, y: int, window: int = 5) -> float:
    """Median depth over a ``window x window`` square centred on pixel column ``x``, row ``y``
    (clipped to the frame) of the first image of ``depth`` ``(B, 1, H, W)``."""
    check_map(depth, "depth", positive=True)
    h, w = depth.shape[-2:]
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise LensBlurError(f"`window` must be a positive int, got {window!r}")
    for v, n, name in ((x, w, "x"), (y, h, "y")):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise LensBlurError(f"`{name}` must be a pixel index in [0, {n - 1}], got {v!r}")
    r = window // 2
    patch = depth[0, 0, max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
    return float(patch.flatten().median())


class DepthModel:
    """A local ``transformers`` depth-estimation checkpoint that returns metres.

    Args:
        model: a model whose output has ``predicted_depth`` ``(B, h, w)``.
        kind: ``"metric"``, ``"relative"`` or ``"auto"`` (from ``config.depth_estimation_type``).
        mean, std: input normalisation of ``[0, 1]`` sRGB values.
        input_size: shorter side the photo is resized to (rounded to the patch size); ``None``:
            the backbone's ``image_size`` (518 for Depth Anything).

    Example:
        >>> import tempfile
        >>> from lensblur.depth_model import make_tiny_depth_checkpoint
        >>> with tempfile.TemporaryDirectory() as d:
        ...     model = DepthModel.from_pretrained(make_tiny_depth_checkpoint(d))
        ...     depth = model(torch.rand(1, 3, 10, 12), depth_range_m=(2.0, 8.0))
        >>> depth.shape, bool((depth >= 2.0 - 1e-4).all() and (depth <= 8.0 + 1e-4).all())
        (torch.Size([1, 1, 10, 12]), True)
    """

    def __init__(self, model: torch.nn.Module, kind: str = "auto", mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), input_size: Optional[int] = None) -> None:
        self.model = model.eval()
        cfg = getattr(model, "config", None)
        if kind == "auto":
            kind = "metric" if getattr(cfg, "depth_estimation_type", "relative") == "metric" else "relative"
        if kind not in ("metric", "relative"):
            raise LensBlurError(f"`kind` must be 'auto', 'metric' or 'relative', got {kind!r}")
        self.kind = kind
        backbone = getattr(cfg, "backbone_config", None)
        self.patch = int(getattr(cfg, "patch_size", None) or getattr(backbone, "patch_size", None) or 1)
        self.input_size = int(input_size or getattr(backbone, "image_size", None)
                              or getattr(cfg, "image_size", None) or 518)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], **kwargs) -> "DepthModel":
        """Load ``AutoModelForDepthEstimation`` from the local directory ``path`` (its
        ``preprocessor_config.json``, when present, gives the mean and std)."""
        p = Path(path)
        if not (p / "config.json").is_file():
            raise LensBlurError(f"depth model {str(p)!r} is not a local transformers checkpoint "
                                "(a directory with config.json)")
        try:
            from transformers import AutoModelForDepthEstimation
        except ImportError as exc:
            from .exr import MissingExtraError

            raise MissingExtraError("--depth-model needs transformers: pip install \"lensblur[models]\"") from exc
        pre = p / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            kwargs.setdefault("mean", cfg.get("image_mean", (0.485, 0.456, 0.406)))
            kwargs.setdefault("std", cfg.get("image_std", (0.229, 0.224, 0.225)))
        try:
            model = AutoModelForDepthEstimation.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise LensBlurError(f"cannot load the depth model {str(p)!r}: {exc}") from exc
        return cls(model, **kwargs)

    @torch.no_grad()
    def __call__(self, srgb: torch.Tensor, depth_range_m: Optional[Tuple[float, float]] = None) -> torch.Tensor:
        """Metric depth ``(B, 1, H, W)`` in metres of an sRGB image ``(B, 3, H, W)`` in ``[0, 1]``.

        ``depth_range_m`` places a relative model's prediction (module docstring; default
        :data:`DEFAULT_DEPTH_RANGE_M`); a metric model ignores it."""
        if not isinstance(srgb, torch.Tensor) or srgb.dim() != 4 or srgb.shape[1] != 3:
            raise LensBlurError(f"`srgb` must be a (B, 3, H, W) tensor, got {getattr(srgb, 'shape', srgb)!r}")
        h, w = srgb.shape[-2:]
        param = next(self.model.parameters())
        s = self.input_size / min(h, w)
        size = (max(self.patch, round(h * s / self.patch) * self.patch),
                max(self.patch, round(w * s / self.patch) * self.patch))
        x = F.interpolate(srgb.to(param.device, torch.float32).clamp(0, 1), size=size, mode="bilinear",
                          align_corners=False)
        x = ((x - self.mean.to(x.device)) / self.std.to(x.device)).to(param.dtype)
        pred = self.model(pixel_values=x).predicted_depth
        pred = pred[:, None] if pred.dim() == 3 else pred
        pred = F.interpolate(pred.float(), size=(h, w), mode="bilinear", align_corners=False)
        pred = torch.nan_to_num(pred, nan=0.0, posinf=0.0, neginf=0.0)
        if self.kind == "metric":
            out = pred.clamp_min(1e-3)
        else:
            out = relative_to_metric(pred, DEFAULT_DEPTH_RANGE_M if depth_range_m is None else depth_range_m)
        return out.to(srgb.device)


def make_tiny_depth_checkpoint(path: Union[str, os.PathLike], seed: int = 0, metric_max_depth_m: Optional[int] = None
                               ) -> Path:
    """Write a tiny randomly initialised ``DepthAnythingForDepthEstimation`` to ``path`` (a
    4-layer, 16-wide DINOv2 backbone, patch 14; for tests and examples only).  With
    ``metric_max_depth_m`` it is a metric model, else a relative one."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            image_size=14, patch_size=14, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    extra = {} if metric_max_depth_m is None else {"depth_estimation_type": "metric",
                                                      "max_depth": int(metric_max_depth_m)}
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                              neck_hidden_sizes=[4, 8, 8, 16], fusion_hidden_size=8, head_hidden_size=8, **extra)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(str(path))
    return Path(path)
