"""Command line: ``lensblur demo``, ``lensblur render IMAGE DEPTH ...``, ``lensblur bench``.

Exit codes: 0 success, 2 bad arguments or input files (a one-line error on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

from .apertures import Aperture
from .validation import LensBlurError

__all__ = ["main", "parse_aperture"]


def parse_aperture(text: str) -> Aperture:
    """``disk``, ``polygon:6``, ``polygon:6:15`` (blades, rotation in degrees) or
    ``polygon:6:15:0.3`` (+ roundness)."""
    parts = text.split(":")
    if parts[0] == "disk" and len(parts) == 1:
        return Aperture.disk()
    if parts[0] == "polygon" and 2 <= len(parts) <= 4:
        try:
            blades = int(parts[1])
            rot = float(parts[2]) if len(parts) > 2 else 0.0
            rnd = float(parts[3]) if len(parts) > 3 else 0.0
        except ValueError as exc:
            raise LensBlurError(f"bad --aperture {text!r}: {exc}") from exc
        return Aperture.polygon(blades=blades, rotation_deg=rot, roundness=rnd)
    raise LensBlurError(f"bad --aperture {text!r}; use disk, polygon:BLADES[:ROTATION[:ROUNDNESS]]")


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cmd_demo(args) -> int:
    from . import ThinLens, render
    from .io import write_image
    from .scene import SCENE_FOCAL_LENGTH_MM, make_scene
    from PIL import Image, ImageDraw
    import numpy as np
    from .io import to_srgb_uint8

    device = torch.device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = args.height, args.width
    image, depth = make_scene(h, w, seed=args.seed, device=device)
    aperture = parse_aperture(args.aperture)
    write_image(out_dir / "all_in_focus.png", image)
    d = depth[0, 0].cpu()
    vis = (1 - (d.log() - d.log().min()) / (d.log().max() - d.log().min()))
    write_image(out_dir / "depth.png", vis.expand(3, -1, -1)[None])
    combos = [(n, s) for s in args.focus for n in args.f_numbers]
    tiles, labels = [], []
    print(f"lensblur demo: {w}x{h} scene, {aperture!r}, method={args.method}, device={device}")
    print(f"{'focus (m)':>9} {'f-number':>8} {'max coc (px)':>12} {'time (ms)':>10}  file")
    for n, s in _progress(combos, len(combos), "rendering", not args.no_progress):
        lens = ThinLens(focal_length_mm=SCENE_FOCAL_LENGTH_MM, f_number=n, focus_distance_m=s)
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = render(image, depth, lens, aperture, method=args.method, backend=args.backend,
                         highlight_boost=args.highlight_boost)
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        name = f"focus{s:g}m_f{n:g}.png"
        write_image(out_dir / name, out)
        cmax = float(lens.coc_px(depth, w).max())
        print(f"{s:9.2f} {n:8.1f} {cmax:12.1f} {ms:10.1f}  {name}")
        tiles.append(to_srgb_uint8(out))
        labels.append(f"focus {s:g} m, f/{n:g}")
    cols = len(args.f_numbers)
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * (h + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x, y = (i % cols) * w, (i // cols) * (h + 16)
        sheet.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y + 16))
        draw.text((x + 4, y + 2), label, fill="black")
    sheet.save(out_dir / "contact_sheet.png")
    print(f"wrote {len(tiles)} renders and contact_sheet.png to {out_dir}/")
    return 0


def cmd_render(args) -> int:
    from . import ThinLens, render
    from .io import read_depth, read_image, write_image

    image = read_image(args.image)
    depth = read_depth(args.depth, depth_scale=args.depth_scale)
    if image.shape[-2:] != depth.shape[-2:]:
        raise LensBlurError(f"image is {image.shape[-1]}x{image.shape[-2]} but depth is "
                            f"{depth.shape[-1]}x{depth.shape[-2]}: they must have the same size")
    device = torch.device(args.device)
    lens = ThinLens(focal_length_mm=args.focal_length, f_number=args.f_number,
                    focus_distance_m=args.focus, sensor_width_mm=args.sensor_width)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = render(image.to(device), depth.to(device), lens, parse_aperture(args.aperture),
                     method=args.method, backend=args.backend, highlight_boost=args.highlight_boost)
    _sync(device)
    path = write_image(args.out, out)
    cmax = float(lens.coc_px(depth, image.shape[-1]).max())
    print(f"wrote {path} ({image.shape[-1]}x{image.shape[-2]}, max coc {cmax:.1f} px, "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms)")
    return 0


def cmd_bench(args) -> int:
    from benchmarks.__main__ import main as bench_main  # noqa: F401  (installed with the repo)

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lensblur", description="Physically based, differentiable lens blur.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--method", default="layered", choices=["layered", "gather", "scatter"],
                        help="blur method (default: layered, occlusion aware)")
        sp.add_argument("--backend", default="auto", choices=["auto", "triton", "native", "torch"])
        sp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        sp.add_argument("--aperture", default="polygon:6",
                        help="disk | polygon:BLADES[:ROTATION_DEG[:ROUNDNESS]] (default polygon:6)")
        sp.add_argument("--highlight-boost", type=float, default=0.0,
                        help="amplify highlights above luminance 1 by (1 + this) before blurring")

    d = sub.add_parser("demo", help="render the built-in procedural scene at several apertures and focus distances")
    d.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    d.add_argument("--height", type=int, default=400)
    d.add_argument("--width", type=int, default=640)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--f-numbers", type=float, nargs="+", default=[1.4, 2.8, 8.0])
    d.add_argument("--focus", type=float, nargs="+", default=[1.2, 2.6, 9.5], help="focus distances in metres")
    d.add_argument("--no-progress", action="store_true")
    common(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("render", help="render depth of field for an image and its depth map")
    r.add_argument("image", help="all-in-focus sRGB image (PNG/JPEG)")
    r.add_argument("depth", help="metric depth map (.npy in metres, 16-bit PNG with --depth-scale, .exr)")
    r.add_argument("--focal-length", type=float, required=True, help="focal length in mm")
    r.add_argument("--f-number", type=float, required=True)
    r.add_argument("--focus", type=float, required=True, help="focus distance in metres")
    r.add_argument("--sensor-width", type=float, default=36.0, help="sensor width in mm (default 36)")
    r.add_argument("--depth-scale", type=float, default=1000.0,
                   help="PNG depth units per metre (default 1000: millimetres)")
    r.add_argument("--out", required=True, help="output image path (.png/.jpg)")
    common(r)
    r.set_defaults(func=cmd_render)

    b = sub.add_parser("bench", help="print a throughput table (see python -m benchmarks --help)")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark runner")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LensBlurError, TypeError) as exc:
        print(f"lensblur {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
