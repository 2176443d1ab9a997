"""Render the pictures of ``docs/layered.rst`` (two occlusion scenes, three methods each).

    python docs/layered_figures.py            # writes docs/_static/layered/*.png (seconds)

The PNGs are committed, so building the docs never re-renders them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lensblur  # noqa: E402
from lensblur.io import to_srgb_uint8  # noqa: E402

OUT_DIR = ROOT / "docs" / "_static" / "layered"
SIZE = 64
ZOOM = 3
LENS = lensblur.ThinLens(50.0, 1.4, 2.0, sensor_width_mm=2.0)   # ~23 px of blur at 10 m on 64 px


def scene(fg_depth: float, bg_depth: float):
    """A textured background (stripes and checks) and a red disc in front of it."""
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")
    checks = ((yy // 8 + xx // 8) % 2)
    stripes = (torch.sin(xx / 2.0) > 0).float()
    bg = torch.stack([0.15 + 0.5 * checks, 0.25 + 0.35 * stripes, 0.7 - 0.3 * checks])[None]
    disc = ((yy - 32) ** 2 + (xx - 30) ** 2 <= 14 ** 2)[None, None]
    img = torch.where(disc, torch.tensor([0.9, 0.08, 0.05]).view(1, 3, 1, 1), bg)
    depth = torch.where(disc, torch.tensor(fg_depth), torch.tensor(bg_depth))
    return img, depth


def panel_row(img, depth, title: str) -> Image.Image:
    panels = [("all in focus", img)]
    for method in ("scatter", "gather", "layered"):
        with torch.no_grad():
            out = lensblur.render(img, depth, LENS, method=method)
        panels.append((f'method="{method}"', out))
    w = SIZE * ZOOM
    sheet = Image.new("RGB", (len(panels) * (w + 4), w + 34), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill="black")
    for i, (label, x) in enumerate(panels):
        tile = Image.fromarray(np.ascontiguousarray(to_srgb_uint8(x))).resize((w, w), Image.NEAREST)
        sheet.paste(tile, (i * (w + 4), 30))
        draw.text((i * (w + 4) + 4, 16), label, fill="black")
    return sheet


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    img, depth = scene(2.0, 10.0)
    panel_row(img, depth, "in-focus disc (2 m) over a background at 10 m").save(OUT_DIR / "sharp_foreground.png")
    img, depth = scene(1.0, 2.0)
    panel_row(img, depth, "disc at 1 m over an in-focus background (2 m)").save(OUT_DIR / "blurred_foreground.png")
    print(f"wrote {OUT_DIR}/sharp_foreground.png and blurred_foreground.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
