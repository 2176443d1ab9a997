"""Render the documentation's picture gallery from the built-in demo scene.

    python docs/gallery.py                 # writes docs/_static/gallery/*.png (a few minutes on a CPU)
    python docs/gallery.py --scale 0.5 --out /tmp/gallery    # quicker, smaller

The PNGs are committed, so building the docs never re-renders them.  Every picture is listed in
:data:`PICTURES` (name -> how it is made); ``docs/gallery.rst`` shows them all and
``tests/test_docs.py`` checks that the two agree.  Renders use ``method="layered"`` (occlusion
aware) unless a picture compares methods, and ``backend="auto"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lensblur  # noqa: E402
from lensblur import Aperture, ThinLens  # noqa: E402
from lensblur.io import write_image  # noqa: E402
from lensblur.scene import SCENE_FOCAL_LENGTH_MM, make_scene  # noqa: E402

OUT_DIR = ROOT / "docs" / "_static" / "gallery"


def star_kernel(n: int = 31, points: int = 5) -> torch.Tensor:
    """A filled star on an ``n x n`` grid, for :meth:`Aperture.from_image`."""
    ax = torch.linspace(-1, 1, n)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    r, t = torch.hypot(x, y), torch.atan2(y, x) + torch.pi / 2
    return (r <= 0.5 + 0.45 * torch.cos(points * t).clamp_min(0) ** 1.5).float()


@dataclasses.dataclass(frozen=True)
class Picture:
    """One gallery picture: a render of the demo scene (or its inputs) and an optional crop."""

    caption: str
    size: Tuple[int, int] = (200, 320)           # (H, W) of the render at scale 1
    f_number: float = 1.4
    focus_m: float = 2.6
    aperture: str = "hexagon"
    method: str = "layered"
    highlight_boost: float = 0.0
    highlight_threshold: float = 1.0
    clip: bool = False                            # clip radiance at 1 first (an 8-bit photo)
    crop: Optional[Tuple[float, float, float, float]] = None   # (top, left, bottom, right) fractions
    show: str = "render"                          # "render", "input" or "depth"


APERTURES = {
    "disk": lambda: Aperture.disk(),
    "hexagon": lambda: Aperture.polygon(blades=6),
    "pentagon": lambda: Aperture.polygon(blades=5, rotation_deg=18.0, roundness=0.2),
    "nine blades": lambda: Aperture.polygon(blades=9, roundness=0.6),
    "star": lambda: Aperture.from_image(star_kernel()),
    "anamorphic": lambda: Aperture.disk(squeeze=1.8),
    "cat's eye": lambda: Aperture.polygon(blades=8, roundness=0.5, cats_eye=0.8),
}

LIGHTS = (0.22, 0.0, 0.47, 1.0)      # the band of fairy lights across the frame
BOKEH = dict(size=(300, 480), f_number=1.2, focus_m=1.0, crop=LIGHTS)

PICTURES: Dict[str, Picture] = {
    "hero": Picture("focus on the near sphere (1.4 m), f/1.4, hexagonal aperture", size=(300, 480),
                    focus_m=1.4),
    "input": Picture("the all-in-focus input (linear radiance, shown in sRGB)", show="input"),
    "depth": Picture("its exact depth, 1.2 m (bright) to 12 m (dark)", show="depth"),
    # f-number sweep at a fixed focus
    **{f"fnumber_{n:g}": Picture(f"f/{n:g}, focus 2.6 m", f_number=n) for n in (1.4, 2.8, 5.6, 11.0)},
    # focus sweep at a fixed aperture
    **{f"focus_{s:g}m": Picture(f"focus {s:g} m, f/1.4", focus_m=s) for s in (1.4, 2.6, 4.5, 9.5)},
    # bokeh shapes: the fairy lights far behind the focus plane
    **{f"aperture_{name.replace(' ', '_').replace(chr(39), '')}": Picture(name, aperture=name, **BOKEH)
       for name in APERTURES},
    # highlights: an 8-bit (clipped) photograph with and without highlight_boost, and true radiance
    "highlight_clipped": Picture("clipped at 1 (an 8-bit photo), no boost", clip=True, **BOKEH),
    "highlight_boost": Picture("clipped at 1, highlight_boost=40 above luminance 0.9", clip=True,
                               highlight_boost=40.0, highlight_threshold=0.9, **BOKEH),
    "highlight_hdr": Picture("true radiance (lights at 12)", **BOKEH),
    # methods at an occlusion edge: sharp near sphere over a blurred background
    **{f"method_{m}": Picture(f'method="{m}"', method=m, focus_m=1.4, size=(300, 480),
                              crop=(0.45, 0.1, 0.95, 0.55))
       for m in ("gather", "scatter", "layered")},
}


def render_picture(pic: Picture, scale: float = 1.0, device="cpu") -> torch.Tensor:
    """The ``(1, 3, h, w)`` linear image of one picture."""
    h, w = max(16, round(pic.size[0] * scale)), max(16, round(pic.size[1] * scale))
    image, depth = make_scene(h, w, seed=0, device=device)
    if pic.show == "input":
        out = image
    elif pic.show == "depth":
        logd = depth.log()
        out = (1 - (logd - logd.min()) / (logd.max() - logd.min())).expand(-1, 3, -1, -1)
        out = out ** 2.2          # shown through the sRGB curve: make the ramp look even
    else:
        src = image.clamp(max=1.0) if pic.clip else image
        lens = ThinLens(focal_length_mm=SCENE_FOCAL_LENGTH_MM, f_number=pic.f_number,
                        focus_distance_m=pic.focus_m)
        with torch.no_grad():
            out = lensblur.render(src, depth, lens, APERTURES[pic.aperture](), method=pic.method,
                                  highlight_boost=pic.highlight_boost,
                                  highlight_threshold=pic.highlight_threshold)
    if pic.crop is not None:
        t, l, b, r = pic.crop
        out = out[..., round(t * h):round(b * h), round(l * w):round(r * w)]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(OUT_DIR), help=f"output folder (default {OUT_DIR})")
    p.add_argument("--scale", type=float, default=1.0, help="image size factor (default 1)")
    p.add_argument("--only", nargs="*", default=None, help="names of pictures to render (default all)")
    args = p.parse_args(argv)
    names = args.only or list(PICTURES)
    unknown = [n for n in names if n not in PICTURES]
    if unknown:
        p.error(f"unknown picture(s): {', '.join(unknown)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    for name in tqdm(names, desc="gallery", file=sys.stderr):
        t0 = time.perf_counter()
        img = render_picture(PICTURES[name], args.scale)
        write_image(out_dir / f"{name}.png", img)
        tqdm.write(f"{name}.png  {tuple(img.shape[-2:])}  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
