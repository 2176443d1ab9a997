"""Line charts drawn with Pillow (matplotlib is not a dependency).

:func:`line_chart` draws one or more series on linear or logarithmic axes with ticks, grid,
axis labels, a title and a legend, and saves a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

__all__ = ["line_chart", "PALETTE"]

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (23, 190, 207)]
MARKERS = ["circle", "square", "triangle", "diamond"]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 6) -> List[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def _marker(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, color) -> None:
    if kind == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=color)
    elif kind == "triangle":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=color)
    elif kind == "diamond":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=color)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def line_chart(path, series: Dict[str, Sequence[Tuple[float, float]]], *, title: str,
               xlabel: str, ylabel: str, log_y: bool = True, log_x: bool = False,
               size: Tuple[int, int] = (760, 480)) -> Path:
    """Draw ``series`` (name -> [(x, y), ...]) as a line chart and save it to ``path`` (PNG).

    Points with ``y`` None or <= 0 on a log axis are left out.  Returns the path.
    """
    pts = {k: [(float(x), float(y)) for x, y in v if y is not None and (y > 0 or not log_y)]
           for k, v in series.items()}
    pts = {k: sorted(v) for k, v in pts.items() if v}
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    f_title, f_label, f_tick = _font(18), _font(14), _font(12)
    left, right, top, bottom = 82, 190, 44, 62
    x0, x1, y0, y1 = left, width - right, top, height - bottom   # plot box (y0 top)
    draw.text(((x0 + x1) / 2, 12), title, fill="black", font=f_title, anchor="mt")
    draw.text(((x0 + x1) / 2, height - 18), xlabel, fill="black", font=f_label, anchor="mb")
    ylab = Image.new("RGB", (y1 - y0, 22), "white")
    ImageDraw.Draw(ylab).text(((y1 - y0) / 2, 11), ylabel, fill="black", font=f_label, anchor="mm")
    img.paste(ylab.rotate(90, expand=True), (8, y0))
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if not pts:
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill="gray", font=f_label, anchor="mm")
        img.save(path)
        return Path(path)

    xs = [x for v in pts.values() for x, _ in v]
    ys = [y for v in pts.values() for _, y in v]
    tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xlo, xhi = tx(min(xs)), tx(max(xs))
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    pad = 0.04 * (xhi - xlo)
    xlo, xhi = xlo - pad, xhi + pad
    if log_y:
        ylo, yhi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        if yhi == ylo:
            yhi += 1
        yticks = [10.0 ** e for e in range(ylo, yhi + 1)]
    else:
        yticks = _nice_ticks(0.0 if min(ys) >= 0 else min(ys), max(ys))
        ylo, yhi = yticks[0], yticks[-1]

    def px(x: float) -> float:
        return x0 + (tx(x) - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (ty(y) - ylo) / (yhi - ylo) * (y1 - y0)

    for yt in yticks:
        y = py(yt)
        draw.line([x0, y, x1, y], fill=(225, 225, 225))
        draw.line([x0 - 5, y, x0, y], fill="black")
        draw.text((x0 - 8, y), _fmt(yt), fill="black", font=f_tick, anchor="rm")
        if log_y:
            for m in range(2, 10):
                if yt * m < 10.0 ** yhi:
                    ym = py(yt * m)
                    draw.line([x0 - 3, ym, x0, ym], fill="black")
    for xt in sorted(set(xs)):
        x = px(xt)
        draw.line([x, y0, x, y1], fill=(235, 235, 235))
        draw.line([x, y1, x, y1 + 5], fill="black")
        draw.text((x, y1 + 8), _fmt(xt), fill="black", font=f_tick, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline="black")

    for i, (name, v) in enumerate(pts.items()):
        color = PALETTE[i % len(PALETTE)]
        xy = [(px(x), py(y)) for x, y in v]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=3)
        for x, y in xy:
            _marker(draw, MARKERS[i % len(MARKERS)], x, y, 4, color)
        ly = y0 + 8 + 22 * i
        draw.line([x1 + 14, ly + 7, x1 + 40, ly + 7], fill=color, width=3)
        _marker(draw, MARKERS[i % len(MARKERS)], x1 + 27, ly + 7, 4, color)
        draw.text((x1 + 46, ly), name, fill="black", font=f_tick)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)
