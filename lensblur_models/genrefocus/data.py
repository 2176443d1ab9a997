"""Training data for DeblurNet and BokehNet, rendered on the fly with :mod:`lensblur`.

Every sample is built from an all-in-focus image (AIF) with exact metric depth, a random thin
lens and a random aperture:

* ``aif`` ``(B, 3, H, W)`` display-encoded values in ``[0, 1]``: a *dead-leaves* scene of textured
  discs and boxes at random depths (:func:`random_scene`) or the :func:`lensblur.scene.make_scene`
  demo scene (clipped to ``[0, 1]``).
* a random :class:`lensblur.ThinLens` (focal length 24-85 mm, f/1.4-f/8, focused on the depth of a
  random pixel), its f-number raised where needed so that no coc exceeds ``max_coc_px``.
* ``defocus_map`` ``(B, 1, H, W)``: ``defocus_map(1 / depth, 1 / S1, K)`` with
  ``K = blur_strength_from_lens(lens, W)`` — equal to ``lens.coc_px(depth, W)``.
* ``target`` (= ``defocused``): :func:`lensblur.render` of the AIF with that lens and aperture
  (``gamma`` decoding to linear light and back), with :data:`DEFAULT_RENDER_METHOD`.

DeblurNet trains on ``(defocused, aif)`` pairs, BokehNet on ``(aif, defocus_map, aperture,
target)`` quadruples; :class:`RefocusData` yields dicts holding both.
"""

from __future__ import annotations

import importlib.util
import math
from typing import List, Optional, Tuple

import torch

import lensblur
from lensblur import Aperture, LensBlurError, ThinLens

from ..defocus_map import blur_strength_from_lens, defocus_map
from ..common.checks import check_int

__all__ = ["DEFAULT_RENDER_METHOD", "random_aperture", "random_scene", "random_lens", "RefocusData"]

#: ``"layered"`` (occlusion-aware) once :mod:`lensblur.layered` is installed, else ``"gather"``.
DEFAULT_RENDER_METHOD = "layered" if importlib.util.find_spec("lensblur.layered") is not None else "gather"


def _u(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _star(points: int, size: int = 15) -> torch.Tensor:
    offs = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(offs, offs, indexing="ij")
    r, a = torch.sqrt(x * x + y * y), torch.atan2(y, x)
    edge = 0.55 + 0.4 * torch.cos(points * a).clamp_min(0) ** 2
    return (r <= edge).float()


def random_aperture(generator: torch.Generator) -> Aperture:
    """A random bokeh shape: disk, polygon (3-8 blades, any rotation, some roundness) or star.

    Example:
        >>> ap = random_aperture(torch.Generator().manual_seed(0))
        >>> isinstance(ap, Aperture)
        True
    """
    kind = _u(generator)
    if kind < 0.3:
        return Aperture.disk()
    if kind < 0.85:
        blades = int(torch.randint(3, 9, (), generator=generator))
        return Aperture.polygon(blades, rotation_deg=_u(generator, 0.0, 360.0 / blades),
                                roundness=_u(generator, 0.0, 0.4))
    return Aperture.from_image(_star(int(torch.randint(4, 7, (), generator=generator))))


def random_scene(height: int, width: int, generator: torch.Generator, num_shapes: int = 24,
                 near_m: float = 0.8, far_m: float = 12.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A dead-leaves scene: textured discs and boxes, each at its own depth, painted far to near.

    Returns:
        ``image`` ``(1, 3, H, W)`` in ``[0, 1]`` and ``depth`` ``(1, 1, H, W)`` in metres,
        ``near_m <= depth <= far_m`` (the background sits at ``far_m``).

    Example:
        >>> img, depth = random_scene(16, 24, torch.Generator().manual_seed(0))
        >>> img.shape, depth.shape, bool(depth.min() >= 0.8)
        (torch.Size([1, 3, 16, 24]), torch.Size([1, 1, 16, 24]), True)
    """
    check_int(height, "height")
    check_int(width, "width")
    g = generator
    ys = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    xs = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    scale = max(height, width)

    def texture(col: torch.Tensor) -> torch.Tensor:
        fx, fy = _u(g, -0.6, 0.6), _u(g, -0.6, 0.6)
        stripes = 0.5 + 0.5 * torch.sin(xs * fx + ys * fy + _u(g, 0, 6.3))
        amp = _u(g, 0.1, 0.6)
        return (col[:, None, None] * (1 - amp + amp * stripes)).clamp(0, 1)

    image = texture(torch.rand(3, generator=g))
    depth = torch.full((height, width), float(far_m))
    # disparity uniform between the far and the near plane; paint the farthest first
    disp = torch.rand(num_shapes, generator=g) * (1 / near_m - 1 / far_m) + 1 / far_m
    for d in torch.sort(disp).values.tolist():
        cx, cy = _u(g, 0, width), _u(g, 0, height)
        r = scale * _u(g, 0.05, 0.3)
        if _u(g) < 0.5:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        else:
            mask = ((xs - cx).abs() <= r) & ((ys - cy).abs() <= r * _u(g, 0.3, 1.0))
        image = torch.where(mask, texture(torch.rand(3, generator=g)), image)
        depth = torch.where(mask, torch.tensor(1.0 / d), depth)
    return image[None].contiguous(), depth[None, None].contiguous()


def random_lens(depth: torch.Tensor, generator: torch.Generator, max_coc_px: float,
                sensor_width_mm: float = 36.0, min_fraction: float = 0.25) -> ThinLens:
    """A random thin lens focused on a random pixel of ``depth`` ``(1, 1, H, W)``.

    Focal length 24-85 mm, f-number log-uniform in f/1.4-f/8; the f-number is then rescaled (the
    coc scales as ``1 / N``) so that the largest coc over ``depth`` is a random fraction
    ``min_fraction``-100 % of ``max_coc_px`` (a small training image would otherwise hardly blur;
    the result is the lens of a proportionally larger image).

    Example:
        >>> depth = torch.linspace(1.0, 6.0, 64).view(1, 1, 8, 8)
        >>> lens = random_lens(depth, torch.Generator().manual_seed(0), max_coc_px=6.0)
        >>> 1.5 <= float(lens.coc_px(depth, 8).max()) <= 6.0
        True
    """
    f_mm = _u(generator, 24.0, 85.0)
    n = math.exp(_u(generator, math.log(1.4), math.log(8.0)))
    flat = depth.reshape(-1)
    s1 = float(flat[int(torch.randint(flat.numel(), (), generator=generator))])
    s1 = max(s1, 2.0 * f_mm / 1000.0)
    lens = ThinLens(f_mm, n, s1, sensor_width_mm=sensor_width_mm)
    worst = float(lens.coc_px(depth, depth.shape[-1]).max())
    if worst <= 0:  # a flat scene focused on itself: nothing to blur
        return lens
    wanted = max_coc_px * _u(generator, min_fraction, 1.0)
    return ThinLens(f_mm, n * worst / wanted * (1 + 1e-6), s1, sensor_width_mm=sensor_width_mm)


class RefocusData:
    """On-the-fly generator of refocusing training batches.

    Args:
        height, width: image size in pixels.
        batch_size: samples per batch.
        max_coc_px: largest coc diameter in the data (pixels).
        seed: the generator seed (the stream of batches is deterministic).
        scene: ``"dead_leaves"`` (:func:`random_scene`) or ``"demo"`` (the lensblur demo scene
            with a random seed, clipped to ``[0, 1]``).
        method: render method (default :data:`DEFAULT_RENDER_METHOD`).
        gamma: display encoding of the images (blur happens in linear light).
        random_apertures: draw a random aperture per sample (else disks).

    :meth:`batch` returns a dict: ``aif``, ``defocused`` / ``target`` (the same tensor),
    ``depth``, ``disparity`` (``1 / depth``), ``defocus_map``, ``focus_disparity`` ``(B,)``,
    ``strength`` ``(B,)`` (``K``), ``aperture`` (list of B apertures).

    Example:
        >>> data = RefocusData(16, 16, batch_size=2, max_coc_px=4.0, seed=0)
        >>> b = data.batch()
        >>> b["aif"].shape, b["defocus_map"].shape, len(b["aperture"])
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 1, 16, 16]), 2)
    """

    def __init__(self, height: int = 32, width: int = 32, batch_size: int = 8, max_coc_px: float = 8.0,
                 seed: int = 0, scene: str = "dead_leaves", method: Optional[str] = None,
                 gamma: float = 2.2, random_apertures: bool = True, backend: str = "auto") -> None:
        self.height, self.width = check_int(height, "height", 8), check_int(width, "width", 8)
        self.batch_size = check_int(batch_size, "batch_size")
        if not (isinstance(max_coc_px, (int, float)) and max_coc_px > 0):
            raise LensBlurError(f"`max_coc_px` must be > 0, got {max_coc_px!r}")
        if scene not in ("dead_leaves", "demo"):
            raise LensBlurError(f"unknown `scene` {scene!r}; expected 'dead_leaves' or 'demo'")
        self.max_coc_px = float(max_coc_px)
        self.scene = scene
        self.method = method or DEFAULT_RENDER_METHOD
        self.gamma = gamma
        self.random_apertures = random_apertures
        self.backend = backend
        self.generator = torch.Generator().manual_seed(seed)

    def _scene(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.scene == "demo":
            from lensblur.scene import make_scene
            img, depth = make_scene(self.height, self.width, seed=int(torch.randint(1 << 30, (), generator=self.generator)))
            if _u(self.generator) < 0.5:
                img, depth = img.flip(-1), depth.flip(-1)
            return img.clamp(0, 1), depth
        return random_scene(self.height, self.width, self.generator)

    def sample(self) -> dict:
        """One sample (batch of 1), see :meth:`batch`."""
        g = self.generator
        aif, depth = self._scene()
        aperture = random_aperture(g) if self.random_apertures else Aperture.disk()
        lens = random_lens(depth, g, self.max_coc_px)
        k = blur_strength_from_lens(lens, self.width).to(torch.float32)
        fd = 1.0 / float(lens.focus_distance_m)
        disparity = 1.0 / depth
        dmap = defocus_map(disparity, fd, k, max_px=self.max_coc_px)
        target = lensblur.render(aif, depth, lens, aperture, method=self.method, gamma=self.gamma,
                                 backend=self.backend).clamp(0, 1)
        return dict(aif=aif, depth=depth, disparity=disparity, defocus_map=dmap, target=target,
                    focus_disparity=torch.tensor([fd]), strength=k.reshape(1), aperture=[aperture])

    def batch(self) -> dict:
        """A batch of ``batch_size`` freshly rendered samples."""
        samples = [self.sample() for _ in range(self.batch_size)]
        out = {k: torch.cat([s[k] for s in samples]) for k in samples[0] if k != "aperture"}
        out["aperture"] = [s["aperture"][0] for s in samples]
        out["defocused"] = out["target"]
        return out

    def fixed(self, num_batches: int) -> List[dict]:
        """``num_batches`` batches drawn now (a fixed training or held-out set)."""
        return [self.batch() for _ in range(check_int(num_batches, "num_batches"))]
