"""Generate the picture grids of :doc:`augment` (``docs/_static/augment/*.png``).

Run from the repository root (CPU is enough, about a minute)::

    python docs/augment_gallery.py

Every sample is drawn by :class:`lensblur.augment.RandomDefocus` from a fixed seed, so the pictures
are reproducible.  The input is the built-in procedural scene (:func:`lensblur.scene.make_scene`),
which comes with exact metric depth, so the same image is shown with its true depth and with the
depth priors used when no depth is known.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from lensblur.augment import RandomDefocus
from lensblur.io import to_srgb_uint8
from lensblur.scene import SCENE_FOCAL_LENGTH_MM, make_scene

OUT = Path(__file__).resolve().parent / "_static" / "augment"
LABEL_H = 14


def _tile(linear: torch.Tensor, label: str) -> Image.Image:
    im = Image.fromarray(to_srgb_uint8(linear))
    canvas = Image.new("RGB", (im.width, im.height + LABEL_H), "white")
    canvas.paste(im, (0, LABEL_H))
    ImageDraw.Draw(canvas).text((2, 1), label, fill="black")
    return canvas


def _coc_tile(coc: torch.Tensor, label: str, vmax: float) -> Image.Image:
    v = (coc[0].float().cpu() / vmax).clamp(0, 1)
    # a simple perceptual ramp: dark blue (in focus) -> yellow (most blurred)
    rgb = torch.stack([v, v.sqrt() * 0.9, (1 - v) * 0.6 + 0.1], dim=-1)
    arr = (rgb.numpy() * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(arr)
    canvas = Image.new("RGB", (im.width, im.height + LABEL_H), "white")
    canvas.paste(im, (0, LABEL_H))
    ImageDraw.Draw(canvas).text((2, 1), label, fill="black")
    return canvas


def _grid(rows, path: Path) -> None:
    w = max(sum(t.width for t in r) + 2 * (len(r) - 1) for r in rows)
    h = sum(r[0].height for r in rows) + 2 * (len(rows) - 1)
    grid = Image.new("RGB", (w, h), "white")
    y = 0
    for r in rows:
        x = 0
        for t in r:
            grid.paste(t, (x, y))
            x += t.width + 2
        y += r[0].height + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    print("wrote", path)


def _label(params, i: int, aug: RandomDefocus) -> str:
    ap = aug.aperture_for(params, i)
    shape = f"{ap.blades} blades" if ap.kind == "polygon" else ap.kind
    return (f"f/{float(params['f_number'][i]):.1f} @ {float(params['focus_distance_m'][i]):.1f} m, {shape}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    image, depth = make_scene(args.height, args.width, seed=0)
    n = args.samples
    batch, depth_b = image.expand(n, -1, -1, -1), depth.expand(n, -1, -1, -1)

    # 1. with the scene's true depth: a random pixel becomes the focus
    with_depth = RandomDefocus(focal_length_mm=SCENE_FOCAL_LENGTH_MM, f_number=(1.0, 2.0),
                               focus_distance_m=(0.5, 20.0), focus_point=((0.15, 0.85), (0.4, 0.9)),
                               aperture=("disk", "polygon"), blades=(5, 7), rotation_deg=(0.0, 30.0),
                               generator=torch.Generator().manual_seed(0), p=1.0)
    with torch.no_grad():
        out_d, coc_d, p_d = with_depth(batch, depth_b, return_coc=True, return_params=True)

    # 2. no depth: a ground-plane ramp prior (near at the bottom, far at the top)
    ramp = RandomDefocus(focal_length_mm=(50.0, 100.0), f_number=(1.4, 2.8), focus_distance_m=(1.0, 3.0),
                         depth_prior="ramp", depth_range_m=(1.0, 30.0), aperture="disk",
                         generator=torch.Generator().manual_seed(1), p=1.0)
    # 3. no depth: a fronto-parallel plane (uniform blur with the aperture's shape)
    plane = RandomDefocus(focal_length_mm=(50.0, 85.0), f_number=(1.4, 4.0), focus_distance_m=(1.0, 2.0),
                          depth_prior="plane", depth_range_m=(4.0, 20.0), aperture="polygon", blades=(5, 8),
                          generator=torch.Generator().manual_seed(2), p=1.0)
    with torch.no_grad():
        out_r, coc_r, p_r = ramp(batch, return_coc=True, return_params=True)
        out_p, coc_p, p_p = plane(batch, return_coc=True, return_params=True)

    sharp = _tile(image, "sharp input")
    vmax = float(coc_d.max())
    _grid([
        [sharp] + [_tile(out_d[i:i + 1], _label(p_d, i, with_depth)) for i in range(n)],
        [_coc_tile(depth[0] / depth.max() * vmax, "depth (bright = far)", vmax)]
        + [_coc_tile(coc_d[i], f"coc, max {float(coc_d[i].max()):.1f} px", vmax) for i in range(n)],
    ], args.out / "with_depth.png")
    vmax = float(coc_r.max())
    ramp_depth = ramp.prior_depth(batch, p_r)[0].float()
    _grid([
        [sharp] + [_tile(out_r[i:i + 1], "ramp: " + _label(p_r, i, ramp)) for i in range(n)],
        [_coc_tile(ramp_depth / ramp_depth.max() * vmax, "ramp depth (bright = far)", vmax)]
        + [_coc_tile(coc_r[i], f"coc, max {float(coc_r[i].max()):.1f} px", vmax) for i in range(n)],
        [sharp] + [_tile(out_p[i:i + 1], "plane: " + _label(p_p, i, plane)) for i in range(n)],
    ], args.out / "priors.png")


if __name__ == "__main__":
    main()
