"""Command line: ``lensblur demo``, ``lensblur render IMAGE DEPTH ...``, ``lensblur bench``.

Exit codes scripts can rely on:

* ``0`` — success;
* ``2`` — bad usage or bad input: unknown options, missing or unreadable files, images and depth
  maps of different sizes, invalid values (a one-line ``lensblur <command>: error: ...`` on
  stderr);
* ``1`` — anything unexpected (a one-line message; ``lensblur --debug ...`` shows the traceback).

Progress bars (tqdm, on stderr) appear on long work when stderr is a terminal; ``--no-progress``
turns them off.
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

__all__ = ["main", "build_parser", "parse_aperture", "IMAGE_SUFFIXES", "OUTPUT_SUFFIXES"]

#: Image formats ``lensblur render`` reads (sRGB, 8 bit).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
#: Output formats: 8-bit sRGB images, or linear radiance as ``.npy`` (float32 ``(H, W, 3)``) or
#: ``.exr`` (float32 R, G, B; ZIP compressed).
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".npy", ".exr")
DEPTH_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".exr")


class UsageError(LensBlurError):
    """A bad command line value (exit code 2)."""


def parse_aperture(text: str) -> Aperture:
    """Parse ``--aperture``: ``disk``, ``polygon:BLADES``, ``polygon:BLADES:ROTATION_DEG``,
    ``polygon:BLADES:ROTATION_DEG:ROUNDNESS`` or ``image:PATH`` (a custom bokeh shape: the
    image's luminance, any size, bright = open; e.g. a heart cut out of black card).

    Example:
        >>> parse_aperture("polygon:6:15")
        Aperture.polygon(blades=6, rotation_deg=15, roundness=0)
    """
    if text.strip().lower().startswith("image:"):
        return _aperture_from_image(text.strip()[len("image:"):])
    parts = text.strip().lower().split(":")
    if parts[0] == "disk" and len(parts) == 1:
        return Aperture.disk()
    if parts[0] == "polygon" and 2 <= len(parts) <= 4:
        try:
            blades = int(parts[1])
            rot = float(parts[2]) if len(parts) > 2 else 0.0
            rnd = float(parts[3]) if len(parts) > 3 else 0.0
        except ValueError as exc:
            raise UsageError(f"bad --aperture {text!r}: {exc}") from exc
        try:
            return Aperture.polygon(blades=blades, rotation_deg=rot, roundness=rnd)
        except LensBlurError as exc:
            raise UsageError(f"bad --aperture {text!r}: {exc}") from exc
    raise UsageError(f"bad --aperture {text!r}; use disk, polygon:BLADES[:ROTATION_DEG[:ROUNDNESS]] "
                     "or image:PATH")


def _aperture_from_image(path: str) -> Aperture:
    """``--aperture image:PATH``: the greyscale image (8/16 bit, values / max) as the kernel."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"bad --aperture image:{path}: file not found")
    try:
        with Image.open(p) as im:
            if im.width * im.height > 1024 * 1024:
                raise UsageError(f"bad --aperture image:{path}: {im.width}x{im.height} is larger than "
                                 "1024x1024 pixels (the shape is resampled to the blur size anyway)")
            arr = np.asarray(im.convert("F" if im.mode in ("I", "I;16", "F") else "L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"bad --aperture image:{path}: not a readable image ({exc})") from exc
    if not arr.size or float(arr.max()) <= 0:
        raise UsageError(f"bad --aperture image:{path}: the image is black (no open aperture)")
    try:
        return Aperture.from_image(torch.from_numpy(arr / float(arr.max())))
    except LensBlurError as exc:
        raise UsageError(f"bad --aperture image:{path}: {exc}") from exc


def _progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (shown only on a terminal), or the bare iterable."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, disable=None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"bad --device {name!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: lensblur renders on 'cpu' or 'cuda' devices")
    return device


#: Largest demo frame (pixels): the scene and a few renders of it must fit in memory.
MAX_DEMO_PIXELS = 8192 * 8192


def _check_out(out: Path, inputs, overwrite: bool, what: str = "--out") -> None:
    """Refuse an output (``--out``) that is one of the inputs, or an existing file without ``--overwrite``."""
    for path in inputs:
        if path is None:
            continue
        if out.resolve() == path.resolve() or (out.exists() and out.samefile(path)):
            raise UsageError(f"{what} {out} is also an input file; choose another output path")
    if out.exists() and not overwrite:
        raise UsageError(f"{what} {out} already exists; pass --overwrite to replace it")


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    import math

    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value:g}")
    return value


def _check_suffix(path: str, allowed, what: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in allowed:
        raise UsageError(f"{what} {p}: unsupported format {p.suffix or '(no suffix)'!r}; "
                         f"use one of {', '.join(allowed)}")
    return p


def _write_output(path: Path, linear: torch.Tensor) -> Path:
    from .io import write_image

    try:
        suffix = path.suffix.lower()
        if suffix in (".npy", ".exr"):
            import numpy as np

            path.parent.mkdir(parents=True, exist_ok=True)
            hwc = linear[0].detach().float().cpu().permute(1, 2, 0).numpy()
            if suffix == ".npy":
                np.save(path, hwc)
            else:
                from .exr import write_exr

                write_exr(path, {"R": hwc[..., 0], "G": hwc[..., 1], "B": hwc[..., 2]})
            return path
        return write_image(path, linear)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    import numpy as np
    from PIL import Image, ImageDraw

    from . import ThinLens, render
    from .io import to_srgb_uint8, write_image
    from .scene import SCENE_FOCAL_LENGTH_MM, make_scene

    device = _device(args.device)
    h, w = args.height, args.width
    if h < 8 or w < 8:
        raise UsageError(f"--height and --width must be >= 8, got {h}x{w}")
    if h * w > MAX_DEMO_PIXELS:
        raise UsageError(f"--height x --width must be at most {MAX_DEMO_PIXELS} pixels "
                         f"(8192 x 8192), got {h}x{w}")
    for n in args.f_numbers:
        _positive("--f-numbers", n)
    for s in args.focus:
        if not s > SCENE_FOCAL_LENGTH_MM / 1000:
            raise UsageError(f"--focus must be > the focal length ({SCENE_FOCAL_LENGTH_MM / 1000:g} m), got {s:g}")
    _positive("--highlight-boost", args.highlight_boost, allow_zero=True)
    _positive("--highlight-threshold", args.highlight_threshold)
    aperture = parse_aperture(args.aperture)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from exc

    image, depth = make_scene(h, w, seed=args.seed, device=device)
    _write_output(out_dir / "all_in_focus.png", image)
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
                         highlight_boost=args.highlight_boost,
                         highlight_threshold=args.highlight_threshold)
        _sync(device)
        ms = (time.perf_counter() - t0) * 1e3
        name = f"focus{s:g}m_f{n:g}.png"
        _write_output(out_dir / name, out)
        cmax = float(lens.coc_px(depth, w).max())
        print(f"{s:9.2f} {n:8.1f} {cmax:12.1f} {ms:10.1f}  {name}", flush=True)
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
    print(f"wrote {len(tiles)} renders, all_in_focus.png, depth.png and contact_sheet.png to {out_dir}/")
    return 0


# ---------------------------------------------------------------------------------- render
def cmd_render(args) -> int:
    from . import ThinLens, render
    from .io import read_depth, read_image

    # cheap checks first, so a typo never waits for a render
    image_path = _check_suffix(args.image, IMAGE_SUFFIXES, "image")
    if (args.depth is None) == (args.depth_model is None):
        raise UsageError("give a depth file or --depth-model PATH (exactly one of them)")
    if (args.focus is None) == (args.focus_at is None):
        raise UsageError("give --focus M or --focus-at X,Y (exactly one of them)")
    depth_path = None if args.depth is None else _check_suffix(args.depth, DEPTH_SUFFIXES, "depth")
    out_path = _check_suffix(args.out, OUTPUT_SUFFIXES, "--out")
    save_depth = None if args.save_depth is None else _check_suffix(args.save_depth, (".npy", ".exr", ".png"),
                                                                    "--save-depth")
    for path, what in ((image_path, "image"), (depth_path, "depth")):
        if path is not None and not path.is_file():
            raise UsageError(f"{what} file not found: {path}")
    _check_out(out_path, (image_path, depth_path), args.overwrite)
    if save_depth is not None:
        _check_out(save_depth, (image_path, depth_path, out_path), args.overwrite, "--save-depth")
    _positive("--depth-scale", args.depth_scale)
    _positive("--highlight-boost", args.highlight_boost, allow_zero=True)
    _positive("--highlight-threshold", args.highlight_threshold)
    device = _device(args.device)
    aperture = parse_aperture(args.aperture)
    lens_args = dict(focal_length_mm=args.focal_length, f_number=args.f_number, sensor_width_mm=args.sensor_width)
    if args.focus is not None:   # else --focus-at: the lens is made once the depth is known
        lens = ThinLens(focus_distance_m=args.focus, **lens_args)

    steps = ["read", "render", "write"]
    bar = _progress(steps, len(steps), "lensblur render", not args.no_progress)
    t0 = time.perf_counter()
    out = None
    for step in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(step)
        if step == "read":
            try:
                image = read_image(image_path)
                depth = None if depth_path is None else read_depth(depth_path, depth_scale=args.depth_scale)
            except OSError as exc:
                raise UsageError(f"cannot read input: {exc}") from exc
            if depth is None:
                depth = _photo_depth(args, image)
            elif args.disparity:
                depth = 1.0 / depth
            if args.focus_at is not None:
                focus = _focus_at(args, depth)
                lens = ThinLens(focus_distance_m=focus, **lens_args)
                print(f"focus at {args.focus_at}: {focus:.4g} m", file=sys.stderr)
            if save_depth is not None:
                _save_depth(save_depth, depth, args.depth_scale)
            if image.shape[-2:] != depth.shape[-2:]:
                raise UsageError(f"image is {image.shape[-1]}x{image.shape[-2]} but depth is "
                                 f"{depth.shape[-1]}x{depth.shape[-2]}: they must have the same size")
        elif step == "render":
            with torch.no_grad():
                out = render(image.to(device), depth.to(device), lens, aperture, method=args.method,
                             backend=args.backend, highlight_boost=args.highlight_boost,
                             highlight_threshold=args.highlight_threshold)
            _sync(device)
        else:
            path = _write_output(out_path, out)
    cmax = float(lens.coc_px(depth, image.shape[-1]).max())
    print(f"wrote {path} ({image.shape[-1]}x{image.shape[-2]}, max coc {cmax:.1f} px, "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms)")
    return 0


# ---------------------------------------------------------------------------------- bench
def cmd_bench(args) -> int:
    from .bench import format_table, run_bench

    rows = run_bench(sizes=args.size, max_cocs=args.max_coc, methods=args.methods.split(","),
                     backends=None if args.backends is None else args.backends.split(","),
                     modes=args.modes.split(","), device=args.device, min_time_s=args.min_time,
                     progress=None if args.no_progress else
                     (lambda r: print(f"  {r.height}x{r.width} coc {r.max_coc:g} {r.method} {r.backend} "
                                      f"{r.mode}: {r.ms:.4g} ms", file=sys.stderr)))
    print(f"lensblur bench on {args.device} (medians; speed-up over backend 'torch' in this run; "
          f"the full suite is `python -m benchmarks` in a source checkout)")
    print(format_table(rows))
    return 0


# ---------------------------------------------------------------------------------- photos
FOCUS_WINDOW_PX = 5


def _add_photo_options(r) -> None:
    g = r.add_argument_group("photos without a depth map")
    g.add_argument("--depth-model", default=None, metavar="PATH",
                   help="estimate the depth with this local transformers depth checkpoint (e.g. a "
                        "Depth Anything model directory) when no depth file is given")
    g.add_argument("--depth-range", default=None, metavar="NEAR,FAR",
                   help="metres of the nearest and farthest points, which fix the scale and shift of "
                        "a relative (non-metric) depth model; default 1,20 (metric models ignore it)")


def _parse_pair(text: str, option: str, kind=float) -> tuple:
    try:
        a, b = (kind(v) for v in text.split(","))
    except ValueError as exc:
        raise UsageError(f"bad {option} {text!r}: expected two numbers A,B") from exc
    return a, b


def _photo_depth(args, image: torch.Tensor) -> torch.Tensor:
    """The depth of ``--depth-model`` for the linear ``image`` (1, 3, H, W), metres."""
    from kornia.color import linear_rgb_to_rgb

    from .depth_model import DEFAULT_DEPTH_RANGE_M, DepthModel

    rng = DEFAULT_DEPTH_RANGE_M if args.depth_range is None else _parse_pair(args.depth_range, "--depth-range")
    model = DepthModel.from_pretrained(args.depth_model)
    if model.kind == "relative" and args.depth_range is None:
        print(f"note: {args.depth_model} is a relative depth model: its inverse depth is mapped to "
              f"{rng[0]:g}-{rng[1]:g} m (set --depth-range NEAR,FAR for the scene)", file=sys.stderr)
    try:
        return model(linear_rgb_to_rgb(image.clamp(0, 1)), depth_range_m=rng)
    except LensBlurError as exc:
        raise UsageError(f"bad --depth-range {args.depth_range!r}: {exc}") from exc


def _focus_at(args, depth: torch.Tensor) -> float:
    from .depth_model import focus_depth_at

    x, y = _parse_pair(args.focus_at, "--focus-at", int)
    h, w = depth.shape[-2:]
    if not (0 <= x < w and 0 <= y < h):
        raise UsageError(f"--focus-at {x},{y} lies outside the {w}x{h} image")
    return focus_depth_at(depth, x, y, FOCUS_WINDOW_PX)


def _save_depth(path: Path, depth: torch.Tensor, depth_scale: float) -> None:
    import numpy as np

    arr = depth[0, 0].detach().float().cpu().numpy()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".npy":
            np.save(path, arr)
        elif path.suffix.lower() == ".exr":
            from .exr import write_exr

            write_exr(path, {"Z": arr})
        else:
            from PIL import Image

            scaled = np.round(arr * depth_scale)
            if scaled.max() > 65535:
                raise UsageError(f"cannot write {path}: depth {arr.max():.4g} m x --depth-scale {depth_scale:g} "
                                 "exceeds 16 bits; use .npy or .exr, or a smaller --depth-scale")
            Image.fromarray(np.clip(scaled, 1, 65535).astype(np.uint16)).save(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks; appends "(default: X)" where a default is worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default is not argparse.SUPPRESS \
                and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The ``lensblur`` argument parser (sub-commands ``demo``, ``render``, ``bench``)."""
    p = argparse.ArgumentParser(
        prog="lensblur", formatter_class=_Formatter,
        description="Physically based, differentiable depth of field: render lens blur from an "
                    "all-in-focus image and its depth map.",
        epilog="exit codes: 0 success, 2 bad usage or input, 1 unexpected error.\n"
               "examples:\n"
               "  lensblur demo --out demo_out\n"
               "  lensblur render photo.jpg depth.npy --focal-length 50 --f-number 1.8 --focus 2 --out out.png\n"
               "  lensblur bench --quick")
    p.add_argument("--version", action="version", version=f"lensblur {_version()}")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp, threshold):
        g = sp.add_argument_group("rendering")
        g.add_argument("--method", default="layered", choices=["layered", "gather", "scatter"],
                       help="blur method; layered is occlusion aware")
        g.add_argument("--backend", default="auto", choices=["auto", "triton", "native", "torch"],
                       help="kernel backend (auto: triton on CUDA, native C++ on CPU)")
        g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device")
        g.add_argument("--aperture", default="polygon:6",
                       help="bokeh shape: disk | polygon:BLADES[:ROTATION_DEG[:ROUNDNESS]] | image:PATH "
                            "(a greyscale picture of the aperture, bright = open)")
        g.add_argument("--highlight-boost", type=float, default=0.0, metavar="B",
                       help="amplify the luminance above --highlight-threshold by (1 + B) before "
                            "blurring, so highlights bloom into bright bokeh")
        g.add_argument("--highlight-threshold", type=float, default=threshold, metavar="Y",
                       help="linear luminance where the boost starts" + (
                           " (8-bit photos clip at 1, so it must lie below 1)" if threshold < 1 else ""))
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", formatter_class=_Formatter,
                       help="render the built-in scene at several f-numbers and focus distances",
                       description="Render the built-in procedural scene (no download) at every "
                                   "combination of --f-numbers and --focus, print the time of each "
                                   "render and write the images and a contact sheet.")
    d.add_argument("--out", default="demo_out", help="output folder")
    d.add_argument("--height", type=int, default=400, help="image height in pixels")
    d.add_argument("--width", type=int, default=640, help="image width in pixels")
    d.add_argument("--seed", type=int, default=0, help="scene layout seed")
    d.add_argument("--f-numbers", type=float, nargs="+", default=[1.4, 2.8, 8.0], metavar="N",
                   help="f-numbers to render")
    d.add_argument("--focus", type=float, nargs="+", default=[1.2, 2.6, 9.5], metavar="M",
                   help="focus distances in metres")
    common(d, 1.0)      # the demo scene has true radiance: its lights reach 12
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("render", formatter_class=_Formatter,
                       help="render depth of field for an image and its depth map",
                       description="Render the depth of field of a thin lens for an all-in-focus "
                                   "image and its metric depth map.")
    r.add_argument("image", help=f"all-in-focus sRGB image ({', '.join(IMAGE_SUFFIXES)})")
    r.add_argument("depth", nargs="?", default=None,
                   help="depth map in metres: .npy (float, metres), 8/16-bit .png/.tif "
                        "(metres x --depth-scale), .exr (metres); omit it with --depth-model")
    g = r.add_argument_group("lens")
    g.add_argument("--focal-length", type=float, required=True, metavar="MM", help="focal length in mm")
    g.add_argument("--f-number", type=float, required=True, metavar="N", help="f-number (aperture)")
    g.add_argument("--focus", type=float, default=None, metavar="M",
                   help="focus distance in metres (or --focus-at)")
    g.add_argument("--focus-at", default=None, metavar="X,Y",
                   help="focus on the pixel at column X, row Y: the median depth of the 5x5 pixels "
                        "around it")
    _add_photo_options(r)
    g.add_argument("--sensor-width", type=float, default=36.0, metavar="MM",
                   help="sensor width in mm (36 = full frame); the image spans it")
    g = r.add_argument_group("input and output")
    g.add_argument("--depth-scale", type=float, default=1000.0,
                   help="PNG/TIFF depth units per metre (1000: millimetres)")
    g.add_argument("--disparity", action="store_true",
                   help="the depth file holds inverse depth (1/metres) instead of metres")
    g.add_argument("--out", required=True,
                   help=f"output path ({', '.join(OUTPUT_SUFFIXES)}); .npy and .exr keep float32 "
                        "linear radiance, the others are 8-bit sRGB")
    g.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists (it may never be one of the inputs)")
    g.add_argument("--save-depth", default=None, metavar="PATH",
                   help="also write the depth map used (metres) to PATH: .npy, .exr (float32) or "
                        ".png (16 bit, metres x --depth-scale)")
    common(r, 0.9)
    r.set_defaults(func=cmd_render)

    b = sub.add_parser("bench", formatter_class=_Formatter,
                       help="print a throughput table of the blur backends on this machine",
                       description="Time every available backend on the workload of the performance "
                                   "anchors and print a table with the speed-up over the PyTorch "
                                   "reference measured in the same run (lensblur.bench).  The full "
                                   "suite (sweeps, baselines, memory, plots) is `python -m benchmarks` "
                                   "in a source checkout.")
    b.add_argument("--size", type=int, nargs="+", default=[256], help="square image sizes (pixels)")
    b.add_argument("--max-coc", type=float, nargs="+", default=[17.0], help="maximum coc diameters (pixels)")
    b.add_argument("--methods", default="gather,scatter,layered", help="comma-separated methods")
    b.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    b.add_argument("--modes", default="fwd", help="comma-separated modes: fwd, fwd+bwd")
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    b.add_argument("--min-time", type=float, default=0.5, metavar="S",
                   help="time each row for at least S seconds (median of the calls)")
    b.add_argument("--no-progress", action="store_true", help="no per-row progress lines")
    b.set_defaults(func=cmd_bench)
    return p


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad usage/input, 1 unexpected)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)   # exits 2 with argparse's message on bad usage
    try:
        return int(args.func(args) or 0)
    except LensBlurError as exc:
        print(f"lensblur {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lensblur {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the documented exit code 1
        if args.debug:
            raise
        print(f"lensblur {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              f"(run with `lensblur --debug ...` for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
