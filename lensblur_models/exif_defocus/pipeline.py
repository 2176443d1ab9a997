"""EXIF-conditioned defocus: generator -> depth -> Focus Distance Transformer -> lens blur.

:class:`ExifDefocusPipeline` mimics image formation (seed paper 000): an all-in-focus (AIF) image
comes from a generator (or is given), a frozen monocular depth network estimates its depth (or
depth is given), the :class:`~lensblur_models.exif_defocus.FocusDistanceTransformer` predicts a
focus distance and a depth scale, and :func:`lensblur.render` (the machinery of
:class:`lensblur.LensBlur`) forms the defocused photo with the EXIF focal length, f-number and
sensor width.  Every step is differentiable, so a reconstruction loss against real defocused
photos trains the FDT (and fine-tunes the generator) **without focus labels or AIF images**.

Training objective (:meth:`ExifDefocusPipeline.training_step`):

* **reconstruction** — Charbonnier distance between the rendered photo and the real one, both
  tone-mapped by ``x / (1 + |x|)`` (so that HDR highlights of linear images do not dominate; a
  mild compression for display images), summed over a ``loss_levels``-level average-pooling
  pyramid.  The blur's gradient w.r.t. the focus is
  local (it comes from pixels whose circle of confusion is at least about one pixel); the coarse
  levels compare blur over larger areas, which widens the basin of the focus.
* **depth-scale prior** ``scale_prior_weight * log(s)^2`` — the reconstruction only weakly
  separates the depth scale from the focus (scaling a far scene up mainly shrinks its blur,
  as does stopping down); the prior keeps the scale near 1, the right value for metric depth
  networks, unless the photos demand otherwise.
* **focus-logit prior** ``focus_prior_weight * z^2`` on the focus logit — keeps the sigmoid out
  of saturation, where the gradient through it would vanish.
* **all-in-focus prior** (generator runs only) ``aif_prior_weight * relu(L(target) - L(aif)) /
  L(target)`` with ``L`` the mean squared Laplacian: a blur never adds detail, so the AIF image
  must be at least as sharp as the photo; without it a generator could paint the blur itself and
  leave the FDT nothing to learn.

When a generator is trained, it sees the photo noised to a random level and returns its one-step
clean-image estimate (:meth:`DiffusersGenerator.denoise`); that estimate is what gets blurred, as
in the paper.

Inference (:meth:`ExifDefocusPipeline.__call__`, :meth:`~ExifDefocusPipeline.refocus`) lets the
user override focus distance and f-number; :meth:`~ExifDefocusPipeline.f_number_sweep` renders
sweeps for :func:`lensblur_models.blur_monotonicity`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import lensblur
from lensblur import LensBlur, LensBlurError, ThinLens

from ..common.pipeline import PipelineMixin
from ..exif import check_exif_tensor
from ..metrics import laplacian_sharpness
from .fdt import FocusDistanceConfig, FocusDistanceTransformer

__all__ = ["ExifDefocusConfig", "ExifDefocusPipeline", "ExifDefocusOutput", "DEFAULT_BLUR_METHOD",
           "log_focus_error"]

#: Blur method of new pipelines: the occlusion-aware ``"layered"`` renderer, as in the paper
#: (``"gather"`` is about 8x faster on CPU at tiny sizes and is what the learning test uses).
DEFAULT_BLUR_METHOD = "layered"


@dataclass
class ExifDefocusConfig:
    """Configuration of :class:`ExifDefocusPipeline` (FDT size, renderer, loss weights).

    Attributes:
        fdt: size of the Focus Distance Transformer.
        blur_method: ``"layered"``, ``"gather"`` or ``"scatter"`` (see :func:`lensblur.render`).
        gamma: encoding of images (1 = linear radiance, 2.2 = display-referred sRGB-like).
        backend: blur backend (``"auto"``).
        loss_levels: pyramid levels of the reconstruction loss (1 = full resolution only).
        loss_tonemap: compare ``x / (1 + x)`` tone-mapped images (recommended for HDR input).
        charbonnier_eps: smoothing of the Charbonnier distance ``sqrt(d^2 + eps^2)``.
        scale_prior_weight, focus_prior_weight, aif_prior_weight: regulariser weights.
        noise_range: ``(lo, hi)`` noise levels for generator fine-tuning.
    """

    fdt: FocusDistanceConfig = field(default_factory=FocusDistanceConfig)
    blur_method: str = DEFAULT_BLUR_METHOD
    gamma: float = 1.0
    backend: str = "auto"
    loss_levels: int = 3
    loss_tonemap: bool = True
    charbonnier_eps: float = 1e-3
    scale_prior_weight: float = 1e-2
    focus_prior_weight: float = 1e-4
    aif_prior_weight: float = 0.1
    noise_range: Tuple[float, float] = (0.02, 0.3)

    @classmethod
    def tiny(cls, **overrides) -> "ExifDefocusConfig":
        """Tiny FDT (see :meth:`FocusDistanceConfig.tiny`), default weights."""
        return cls(**{"fdt": FocusDistanceConfig.tiny(), **overrides})

    @classmethod
    def base(cls, **overrides) -> "ExifDefocusConfig":
        """ViT-B/16 sized FDT, display-encoded images (gamma 2.2)."""
        return cls(**{"fdt": FocusDistanceConfig.base(), "gamma": 2.2, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "ExifDefocusConfig":
        d = dict(d)
        d["fdt"] = FocusDistanceConfig(**d.get("fdt", {}))
        if "noise_range" in d:
            d["noise_range"] = tuple(d["noise_range"])
        return cls(**d)


@dataclass
class ExifDefocusOutput:
    """Result of :class:`ExifDefocusPipeline` (``forward`` keeps the autograd graph; ``pipe(...)``
    runs under ``torch.no_grad()``).

    Attributes:
        image: ``(B, C, H, W)`` defocused photo.
        aif: ``(B, C, H, W)`` all-in-focus image it was rendered from.
        depth_m: ``(B, 1, H, W)`` metric depth (``depth_scale * relative depth``), metres.
        focus_distance_m, depth_scale, f_number, focal_length_mm, sensor_width_mm: ``(B,)``.
        focus_position: ``(B,)`` FDT focus position in ``(0, 1)``.
    """

    image: torch.Tensor
    aif: torch.Tensor
    depth_m: torch.Tensor
    focus_distance_m: torch.Tensor
    depth_scale: torch.Tensor
    f_number: torch.Tensor
    focal_length_mm: torch.Tensor
    sensor_width_mm: torch.Tensor
    focus_position: torch.Tensor


def _per_sample(value, name: str, b: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be a float or a (B,) tensor, got bool")
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device) if not isinstance(value, torch.Tensor) \
        else value.to(device=like.device, dtype=like.dtype)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, b)):
        raise LensBlurError(f"`{name}` must be a float, a 0-d or a ({b},) tensor, got shape {tuple(t.shape)}")
    t = t.expand(b) if t.dim() == 0 or t.shape[0] == 1 else t
    if not bool(torch.isfinite(t.detach()).all()) or not bool((t.detach() > 0).all()):
        raise LensBlurError(f"`{name}` must be finite and > 0")
    return t


def _tonemap(x: torch.Tensor) -> torch.Tensor:
    return F.softsign(x)  # x / (1 + |x|): smooth, keeps gradients of negative generator outputs


def _user_focus(value, b: int, focal_length_mm: torch.Tensor) -> torch.Tensor:
    """Validate a user focus override: ``(B,)`` metres, beyond the focal length."""
    focus = _per_sample(value, "focus_distance_m", b, focal_length_mm)
    if bool((focus.detach() <= focal_length_mm.detach() / 1000.0).any()):
        raise LensBlurError("`focus_distance_m` must be greater than the focal length "
                            f"(got {focus.detach().tolist()} m for focal lengths "
                            f"{focal_length_mm.detach().tolist()} mm)")
    return focus


def _charbonnier_pyramid(pred: torch.Tensor, target: torch.Tensor, levels: int, eps: float) -> torch.Tensor:
    loss = pred.new_zeros(())
    for lvl in range(levels):
        if lvl:
            if min(pred.shape[-2:]) < 2:
                break
            pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
        loss = loss + torch.sqrt((pred - target).square() + eps * eps).mean()
    return loss


class ExifDefocusPipeline(PipelineMixin, nn.Module):
    """Generator -> depth -> :class:`FocusDistanceTransformer` -> lens blur, trainable end to end.

    Args:
        config: an :class:`ExifDefocusConfig`.
        generator: optional AIF generator with ``sample(batch_size, cond, seed=...)`` and
            ``denoise(image, noise_level, cond)`` returning ``(B, 3, H, W)``, e.g.
            :class:`~lensblur_models.exif_defocus.DiffusersGenerator`; ``None``: AIF images are
            passed in (refocusing real all-in-focus images).
        depth_model: optional module ``(B, 3, H, W) -> (B, 1, H, W)`` positive depth, e.g.
            :class:`~lensblur_models.common.DepthEstimator` (``output="relative"`` or ``"metric"``);
            ``None``: depth is passed in.
        fdt: an existing FDT (default: a fresh one of ``config.fdt``).
        aperture: bokeh shape (``None`` = disk).

    Example:
        >>> pipe = ExifDefocusPipeline(ExifDefocusConfig.tiny())
        >>> aif, depth = torch.rand(1, 3, 16, 16), torch.linspace(1, 9, 256).view(1, 1, 16, 16)
        >>> exif = torch.tensor([[85.0, 1.8, 36.0]])
        >>> out = pipe(exif, images=aif, depth=depth)
        >>> round(float(out.focus_distance_m.detach()), 2)        # untrained: middle of the range
        3.0
        >>> sharper = pipe.refocus(out, f_number=16.0)   # user override, same scene
        >>> sharper.image.shape
        torch.Size([1, 3, 16, 16])
    """

    def __init__(self, config: Optional[ExifDefocusConfig] = None, generator: Optional[nn.Module] = None,
                 depth_model: Optional[nn.Module] = None, fdt: Optional[FocusDistanceTransformer] = None,
                 aperture: Optional[lensblur.Aperture] = None) -> None:
        super().__init__()
        config = config or ExifDefocusConfig()
        if not isinstance(config, ExifDefocusConfig):
            raise TypeError(f"`config` must be an ExifDefocusConfig, got {type(config).__name__}")
        lo, hi = config.noise_range
        if not 0 <= lo <= hi <= 1:
            raise LensBlurError(f"`noise_range` must satisfy 0 <= lo <= hi <= 1, got {config.noise_range}")
        if config.loss_levels < 1:
            raise LensBlurError(f"`loss_levels` must be >= 1, got {config.loss_levels}")
        self.config = config
        self.register_components(generator=generator, depth_model=depth_model,
                                 fdt=fdt if fdt is not None else FocusDistanceTransformer.from_config(config.fdt))
        # holds the renderer configuration; the per-sample sensor width goes through ThinLens
        self.lens_blur = LensBlur(aperture=aperture, method=config.blur_method, gamma=config.gamma,
                                  backend=config.backend)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the FDT's (and the generator's UNet's) blocks in the backward pass."""
        self.fdt.enable_gradient_checkpointing()
        if self.generator is not None and hasattr(self.generator, "enable_gradient_checkpointing"):
            self.generator.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        """Undo :meth:`enable_gradient_checkpointing`."""
        self.fdt.disable_gradient_checkpointing()
        if self.generator is not None and hasattr(self.generator, "disable_gradient_checkpointing"):
            self.generator.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ building blocks
    def render(self, aif: torch.Tensor, depth_m: torch.Tensor, exif: torch.Tensor,
               focus_distance_m: torch.Tensor, f_number: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Defocus ``aif`` with metric ``depth_m``, the EXIF camera and the given focus.

        ``exif`` ``(B, 3)`` gives focal length and sensor width (and the f-number unless
        ``f_number`` is given); ``focus_distance_m`` is ``(B,)``.
        """
        b = aif.shape[0]
        n = exif[:, 1] if f_number is None else _per_sample(f_number, "f_number", b, exif)
        focal = exif[:, 0]
        # the thin lens needs the focus beyond the focal length: a predicted focus (metric depth
        # times a learned scale) is kept 5 % beyond it; user overrides are validated instead
        focus = torch.maximum(focus_distance_m, 1.05 * focal.detach() / 1000.0)
        lens = ThinLens(focal_length_mm=focal, f_number=n, focus_distance_m=focus,
                        sensor_width_mm=exif[:, 2])
        blur = self.lens_blur
        return lensblur.render(aif, depth_m, lens, blur.aperture, blur.method, blur.gamma,
                               backend=blur.backend, **blur.controls)

    def _aif(self, batch_size, images, cond, seed, num_inference_steps):
        if images is not None:
            return images
        if self.generator is None:
            raise LensBlurError("`images` is required: this pipeline has no generator")
        return self.generator.sample(batch_size, cond, num_inference_steps=num_inference_steps, seed=seed)

    def _depth(self, aif, depth):
        if depth is not None:
            if not isinstance(depth, torch.Tensor) or depth.dim() != 4 or depth.shape[1] != 1 \
                    or depth.shape[0] != aif.shape[0] or depth.shape[-2:] != aif.shape[-2:]:
                raise LensBlurError(f"`depth` must have shape ({aif.shape[0]}, 1, {aif.shape[2]}, "
                                    f"{aif.shape[3]}), got {tuple(getattr(depth, 'shape', ()))}")
            return depth
        if self.depth_model is None:
            raise LensBlurError("`depth` is required: this pipeline has no depth model")
        return self.depth_model(aif)

    # ------------------------------------------------------------------ inference
    def forward(self, exif: torch.Tensor, *, images: Optional[torch.Tensor] = None,
                depth: Optional[torch.Tensor] = None, cond=None,
                focus_distance_m=None, f_number=None, seed: Optional[int] = None,
                num_inference_steps: Optional[int] = None) -> ExifDefocusOutput:
        """Generate (or take) an AIF image, estimate depth and focus, render the photo.

        Args:
            exif: ``(B, 3)`` ``[focal_length_mm, f_number, sensor_width_mm]`` (see
                :mod:`lensblur_models.exif`).
            images: ``(B, 3, H, W)`` AIF images; ``None`` = generate them.
            depth: ``(B, 1, H, W)`` depth (relative or metric) of ``images``; ``None`` = estimate.
            cond: generator conditioning (prompt(s) or embeddings).
            focus_distance_m: user override of the focus (float or ``(B,)``, metres); default
                the FDT's prediction.
            f_number: user override of the f-number (float or ``(B,)``); default the EXIF's.
            seed: generator seed.

        Returns:
            :class:`ExifDefocusOutput`.
        """
        check_exif_tensor(exif, "exif")
        b = exif.shape[0]
        aif = self._aif(b, images, cond, seed, num_inference_steps)
        if aif.shape[0] != b:
            raise LensBlurError(f"`images` has batch size {aif.shape[0]} but `exif` has {b}")
        depth = self._depth(aif, depth)
        exif = exif.to(device=aif.device, dtype=aif.dtype)
        pred = self.fdt(aif, depth, exif)
        focus = pred.focus_distance_m if focus_distance_m is None else \
            _user_focus(focus_distance_m, b, exif[:, 0])
        n = exif[:, 1] if f_number is None else _per_sample(f_number, "f_number", b, exif)
        depth_m = depth * pred.depth_scale.view(-1, 1, 1, 1)
        image = self.render(aif, depth_m, exif, focus, n)
        return ExifDefocusOutput(image, aif, depth_m, focus, pred.depth_scale, n, exif[:, 0], exif[:, 2],
                                 pred.focus_position)

    def run(self, *args, **kwargs) -> ExifDefocusOutput:
        """``pipe(...)``: :meth:`forward` under ``torch.no_grad()`` (inference); training calls
        :meth:`forward` (or :meth:`training_step`) directly and keeps the autograd graph."""
        return self.forward(*args, **kwargs)

    def refocus(self, output: ExifDefocusOutput, focus_distance_m=None, f_number=None) -> ExifDefocusOutput:
        """Re-render a previous result with a new focus distance and/or f-number (same scene).

        Only the blur runs again, so this is the interactive path.
        """
        b = output.aif.shape[0]
        like = output.focus_distance_m
        focus = output.focus_distance_m if focus_distance_m is None else \
            _user_focus(focus_distance_m, b, output.focal_length_mm)
        n = output.f_number if f_number is None else _per_sample(f_number, "f_number", b, like)
        exif = torch.stack([output.focal_length_mm, n, output.sensor_width_mm], dim=1)
        image = self.render(output.aif, output.depth_m, exif, focus)
        return dataclasses.replace(output, image=image, focus_distance_m=focus, f_number=n)

    def f_number_sweep(self, output: ExifDefocusOutput, f_numbers: Sequence[float]) -> torch.Tensor:
        """``(S, B, C, H, W)`` renders of ``output``'s scenes at each f-number (for metrics)."""
        return torch.stack([self.refocus(output, f_number=float(n)).image for n in f_numbers])

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer] = None,
                      generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """One step of the unsupervised objective (see the module docstring).

        Args:
            batch: ``target`` ``(B, 3, H, W)`` real defocused photos; ``exif`` ``(B, 3)``;
                optional ``aif`` (given AIF images: the generator is skipped), ``depth``
                (given depth: the depth model is skipped), ``cond`` (generator conditioning).
            optimizer: when given, the step zeroes gradients, back-propagates and steps.
            generator: ``torch.Generator`` for noise levels and noise.

        Returns:
            dict of the scalar ``loss`` (with graph when no optimizer is given) and its detached
            parts ``reconstruction``, ``scale_prior``, ``focus_prior``, ``aif_prior``.
        """
        if not isinstance(batch, dict) or "target" not in batch or "exif" not in batch:
            raise LensBlurError("`batch` must be a dict with 'target' and 'exif'")
        target, exif = batch["target"], batch["exif"]
        if not isinstance(target, torch.Tensor) or target.dim() != 4:
            raise LensBlurError(f"`batch['target']` must be (B, C, H, W), got {getattr(target, 'shape', target)!r}")
        b = target.shape[0]
        check_exif_tensor(exif, "batch['exif']", batch=b)
        cfg = self.config
        aif = batch.get("aif")
        used_generator = aif is None
        if used_generator:
            if self.generator is None:
                raise LensBlurError("`batch['aif']` is required: this pipeline has no generator")
            lo, hi = cfg.noise_range
            u = torch.rand(b, generator=generator)
            level = (lo + (hi - lo) * u).to(target.device)
            aif = self.generator.denoise(target, level, batch.get("cond"), generator=generator)
        elif aif.shape != target.shape:
            raise LensBlurError(f"`batch['aif']` must have the shape of the target {tuple(target.shape)}, "
                                f"got {tuple(aif.shape)}")
        out = self.forward(exif, images=aif, depth=batch.get("depth"))
        pred_img = _tonemap(out.image) if cfg.loss_tonemap else out.image
        target_img = _tonemap(target) if cfg.loss_tonemap else target
        rec = _charbonnier_pyramid(pred_img, target_img, cfg.loss_levels, cfg.charbonnier_eps)
        scale_prior = out.depth_scale.log().square().mean()
        t = out.focus_position.clamp(1e-6, 1 - 1e-6)
        focus_prior = torch.log(t / (1 - t)).square().mean()
        loss = rec + cfg.scale_prior_weight * scale_prior + cfg.focus_prior_weight * focus_prior
        aif_prior = loss.new_zeros(())
        if used_generator and cfg.aif_prior_weight > 0:
            s_target = laplacian_sharpness(target).detach()
            aif_prior = (torch.relu(s_target - laplacian_sharpness(aif)) / s_target.clamp_min(1e-12)).mean()
            loss = loss + cfg.aif_prior_weight * aif_prior
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss = loss.detach()
        return {"loss": loss, "reconstruction": rec.detach(), "scale_prior": scale_prior.detach(),
                "focus_prior": focus_prior.detach(), "aif_prior": aif_prior.detach()}

    @torch.no_grad()
    def predict_focus(self, images: torch.Tensor, depth: torch.Tensor, exif: torch.Tensor) -> torch.Tensor:
        """``(B,)`` predicted focus distance (metres, in the units of ``depth_scale * depth``)."""
        return self.fdt(images, depth, exif).focus_distance_m

    # ------------------------------------------------------------------ persistence
    @property
    def _settings(self) -> dict:
        return {"config": dataclasses.asdict(self.config)}

    @classmethod
    def from_pretrained(cls, path, **overrides) -> "ExifDefocusPipeline":
        """Load a pipeline folder written by ``save_pretrained`` (``pipeline.json``, ``fdt/``,
        ``generator/``, ``depth_model/``; local files only); ``overrides`` (``aperture=`` ...)
        go to the constructor."""
        comps, settings = cls.load_components(path)
        config = ExifDefocusConfig.from_dict(settings.get("config", {}))
        return cls(config, **{**comps, **overrides})


def log_focus_error(pred_focus_m: torch.Tensor, true_focus_m: torch.Tensor) -> float:
    """Mean absolute error of focus distances in log space, ``mean |log pred - log true|``.

    Scale free: 0.1 means the focus is off by about 10 %.

    Example:
        >>> round(log_focus_error(torch.tensor([2.0, 4.0]), torch.tensor([2.0, 2.0])), 4)
        0.3466
    """
    return float((pred_focus_m.detach().log() - true_focus_m.detach().log()).abs().mean())
