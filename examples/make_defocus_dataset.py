"""Build a (defocused, sharp, coc) training set from any folder of images.

Every image of ``--images`` is resized (shorter side) and centre-cropped to ``--size`` pixels and
blurred ``--samples`` times by :class:`lensblur.augment.RandomDefocus`, with a thin lens drawn per
sample from the given ranges.  For each sample the script writes, under ``--out``::

    <stem>_<k>_defocused.png   the blurred image (8-bit sRGB)
    <stem>_<k>_sharp.png       the sharp input at the same size (8-bit sRGB)
    <stem>_<k>_coc.npy         (H, W) float32 circle-of-confusion diameter in pixels, as rendered
    metadata.jsonl             one JSON line per sample: file names and lens parameters

Depth: with ``--depth DIR``, a depth map ``<stem>.npy`` (metres), ``<stem>.png`` (16-bit, metres x
``--depth-scale``) or ``<stem>.exr`` for each image is used (resized and cropped with it).  Images
without one get the ``--prior``: ``ramp`` (a ground plane: inverse depth linear from the top row at
the far end of ``--depth-range`` to the bottom row at its near end; spatially varying blur) or
``plane`` (a fronto-parallel plane at a random distance in ``--depth-range``; uniform blur).

Colour: images are read as linear radiance and blurred in linear light (physically right for
photographs); the PNGs are written back in sRGB.

Example::

    python examples/make_defocus_dataset.py --images photos/ --out defocus_set/ --size 256 \\
        --samples 4 --f-number 1.4 4 --focus 0.8 5 --prior ramp --seed 0

Runs on the GPU when there is one (``--device``), in batches of ``--batch-size`` samples, with a
progress bar.  The same ``--seed`` gives the same data set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lensblur.augment import RandomDefocus
from lensblur.io import read_depth, read_image, write_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DEPTH_SUFFIXES = (".npy", ".png", ".exr", ".tif", ".tiff")


def resize_crop(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """``(1, C, H, W)`` -> ``(1, C, size, size)``: shorter side to ``size``, centre crop."""
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if mode == "nearest":
        x = F.interpolate(x, size=(nh, nw), mode="nearest")
    else:
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def find_depth(depth_dir: Optional[Path], stem: str) -> Optional[Path]:
    if depth_dir is None:
        return None
    for suffix in DEPTH_SUFFIXES:
        p = depth_dir / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Build a (defocused, sharp, coc) training set from a folder of images.")
    ap.add_argument("--images", type=Path, required=True, help="folder of input images (searched recursively)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--depth", type=Path, default=None, help="optional folder of depth maps named like the images")
    ap.add_argument("--depth-scale", type=float, default=1000.0, help="PNG depth units per metre (default: mm)")
    ap.add_argument("--size", type=int, default=256, help="output size in pixels (square)")
    ap.add_argument("--samples", type=int, default=2, help="defocused samples per image")
    ap.add_argument("--focal-length", type=float, nargs=2, default=(35.0, 135.0), metavar=("LO", "HI"),
                    help="focal length range, mm")
    ap.add_argument("--f-number", type=float, nargs=2, default=(1.4, 4.0), metavar=("LO", "HI"))
    ap.add_argument("--focus", type=float, nargs=2, default=(0.8, 5.0), metavar=("LO", "HI"),
                    help="focus distance range, m (with --focus-point: the range the focus is clamped to)")
    ap.add_argument("--focus-point", action="store_true",
                    help="focus on the depth of a random pixel instead of a random distance")
    ap.add_argument("--prior", choices=("ramp", "plane"), default="ramp", help="depth prior without a depth map")
    ap.add_argument("--depth-range", type=float, nargs=2, default=(1.0, 30.0), metavar=("NEAR", "FAR"),
                    help="depth prior range, m")
    ap.add_argument("--aperture", nargs="+", choices=("disk", "polygon"), default=["disk", "polygon"])
    ap.add_argument("--blades", type=int, nargs=2, default=(5, 9), metavar=("LO", "HI"))
    ap.add_argument("--sensor-width", type=float, default=36.0, help="sensor width, mm")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not args.images.is_dir():
        print(f"error: --images {args.images} is not a folder", file=sys.stderr)
        return 2
    if args.size < 8 or args.samples < 1 or args.batch_size < 1:
        print("error: --size must be >= 8, --samples and --batch-size >= 1", file=sys.stderr)
        return 2
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {args.images}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)

    def augmenter(prior: str) -> RandomDefocus:
        # Bad ranges raise here, with the name of the argument.
        return RandomDefocus(focal_length_mm=tuple(args.focal_length), f_number=tuple(args.f_number),
                             focus_distance_m=tuple(args.focus), focus_point=True if args.focus_point else None,
                             aperture=tuple(args.aperture), blades=tuple(args.blades), depth_prior=prior,
                             depth_range_m=tuple(args.depth_range), sensor_width_mm=args.sensor_width,
                             generator=generator, p=1.0)

    aug = augmenter(args.prior)
    args.out.mkdir(parents=True, exist_ok=True)
    # one job per (image, sample); jobs are batched by whether they have a depth map
    jobs = [(f, k) for f in files for k in range(args.samples)]
    with (args.out / "metadata.jsonl").open("w") as meta, tqdm(total=len(jobs), unit="sample") as bar:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start:start + args.batch_size]
            cache = {}
            for f, _ in chunk:
                if f not in cache:
                    img = resize_crop(read_image(f), args.size, "bilinear")
                    dpath = find_depth(args.depth, f.stem)
                    depth = None if dpath is None else resize_crop(read_depth(dpath, args.depth_scale),
                                                                   args.size, "nearest")
                    cache[f] = (img, depth)
            for has_depth in (True, False):
                part = [(f, k) for f, k in chunk if (cache[f][1] is not None) == has_depth]
                if not part:
                    continue
                sharp = torch.cat([cache[f][0] for f, _ in part]).to(device)
                depth = torch.cat([cache[f][1] for f, _ in part]).to(device) if has_depth else None
                with torch.no_grad():
                    out, coc, params = aug(sharp, depth, return_coc=True, return_params=True)
                for i, (f, k) in enumerate(part):
                    base = f"{f.stem}_{k}"
                    write_image(args.out / f"{base}_defocused.png", out[i:i + 1])
                    write_image(args.out / f"{base}_sharp.png", sharp[i:i + 1])
                    np.save(args.out / f"{base}_coc.npy", coc[i, 0].float().cpu().numpy())
                    ap = aug.aperture_for(params, i)
                    meta.write(json.dumps({
                        "source": str(f), "defocused": f"{base}_defocused.png", "sharp": f"{base}_sharp.png",
                        "coc": f"{base}_coc.npy", "depth": "map" if has_depth else args.prior,
                        "focal_length_mm": float(params["focal_length_mm"][i]),
                        "f_number": float(params["f_number"][i]),
                        "focus_distance_m": float(params["focus_distance_m"][i]),
                        "sensor_width_mm": args.sensor_width,
                        "aperture": ap.kind, "blades": ap.blades if ap.kind == "polygon" else None,
                        **({"plane_distance_m": float(params["plane_distance_m"][i])}
                           if "plane_distance_m" in params and not has_depth else {}),
                    }) + "\n")
                bar.update(len(part))
    print(f"wrote {len(jobs)} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
