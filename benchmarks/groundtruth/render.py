"""Render the ground-truth references with Mitsuba 3 and write ``benchmarks/groundtruth/data/``.

    python -m benchmarks.groundtruth.render [--scenes plane,lights] [--spp-scale 0.5]

For every scene of :mod:`benchmarks.groundtruth.scenes`:

* a pinhole render (the all-in-focus input) and its z-depth: the ``z`` of the first intersection
  of each pixel-centre ray (the quantity Mitsuba's ``position`` AOV reports, taken at the pixel
  centre so an edge pixel gets the depth of one surface rather than an average of two; the
  ``depth`` AOV is a ray distance, not z);
* one ``thinlens`` render per aperture (the ground truth), as two halves with independent seeds;
  their mean is stored and their difference measures the noise of that mean.

Data: ``<scene>.npz`` (``image`` (H, W, 3) and ``truth`` (K, H, W, 3) linear radiance as float16
rounded to 8-10 mantissa bits (:func:`quantize`),
``depth`` (H, W) float32 metres) and ``meta.json`` (lens of every aperture, noise, samples,
render time, Mitsuba version).  Uses the ``llvm_ad_rgb`` variant when an LLVM that Dr.Jit accepts
is found (Debian's ``libllvm19``), otherwise ``scalar_rgb`` (about 10x slower).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np

from . import scenes as sc
from .score import DATA_DIR, noise_stats

_LLVM_GLOBS = ("/usr/lib/x86_64-linux-gnu/libLLVM.so.19*", "/usr/lib/x86_64-linux-gnu/libLLVM-19.so*",
               "/usr/lib/llvm-19/lib/libLLVM*.so*", "/usr/lib/aarch64-linux-gnu/libLLVM.so.19*")


def set_variant(prefer: str = "llvm_ad_rgb") -> str:
    """Pick the Mitsuba variant: ``llvm_ad_rgb`` with LLVM 19 when present, else ``scalar_rgb``.
    (Dr.Jit crashes with the LLVM 14/15 that Debian also ships, so those are never picked.)"""
    if prefer.startswith("llvm") and "DRJIT_LIBLLVM_PATH" not in os.environ:
        found = [p for g in _LLVM_GLOBS for p in sorted(glob.glob(g))]
        if found:
            os.environ["DRJIT_LIBLLVM_PATH"] = os.path.realpath(found[0])
        else:
            prefer = "scalar_rgb"
    import mitsuba as mi
    try:
        mi.set_variant(prefer)
    except Exception:                                   # noqa: BLE001 - no usable LLVM
        prefer = "scalar_rgb"
        mi.set_variant(prefer)
    return prefer


def _render(scene_dict) -> tuple:
    """Render; returns the ``(H, W, 3)`` image and the sample count actually used (the
    ``multijitter`` sampler rounds it up to a product of two near-equal factors)."""
    import mitsuba as mi
    scene = mi.load_dict(scene_dict)
    spp = int(scene.sensors()[0].sampler().sample_count())
    return np.array(mi.render(scene), dtype=np.float32), spp


def pixel_centre_depth(scene_dict) -> np.ndarray:
    """``(H, W)`` z-depth of the first surface hit by each pixel-centre ray of the pinhole
    (``inf`` where the ray escapes)."""
    import mitsuba as mi
    import drjit as dr
    scene = mi.load_dict(scene_dict)
    w, h = sc.WIDTH, sc.HEIGHT
    idx = np.arange(w * h)
    uv = mi.Point2f(mi.Float(((idx % w) + 0.5) / w), mi.Float(((idx // w) + 0.5) / h))
    ray, _ = scene.sensors()[0].sample_ray(0.0, 0.0, uv, mi.Point2f(0.5, 0.5))
    si = scene.ray_intersect(ray)
    z = np.array(dr.select(si.is_valid(), si.p.z, dr.inf), dtype=np.float64)
    return z.reshape(h, w)


#: mantissa bits kept of float16's 10, fewest first (8: relative step 2^-9): the dropped bits are
#: the references' noise, which does not compress.  Each scene keeps the fewest whose rounding
#: error (recorded as ``storage_mse_lin``) is at most :data:`STORAGE_NOISE_RATIO` of the noise
STORED_MANTISSA_BITS = (8, 9, 10)
STORAGE_NOISE_RATIO = 0.04


def quantize(x: np.ndarray, bits: int = 10) -> np.ndarray:
    """``x`` as float16 rounded (to nearest) to ``bits`` mantissa bits."""
    u = np.ascontiguousarray(x, dtype=np.float16).view(np.uint16).astype(np.uint32)
    drop = 10 - bits
    if drop > 0:
        u = ((u + (1 << (drop - 1))) >> drop) << drop
    return u.astype(np.uint16).view(np.float16)


def render_scene(scene: sc.Scene, spp_scale: float = 1.0) -> tuple:
    """Render one scene: returns ``(arrays, meta)`` for :func:`save`."""
    t0 = time.perf_counter()
    spp_in = max(4, int(round(scene.spp_input * spp_scale)))
    spp_truth = max(4, int(round(scene.spp_truth * spp_scale)))
    image, spp_in = _render(sc.mitsuba_dict(scene, "pinhole", spp_in, seed=0))
    depth = pixel_centre_depth(sc.mitsuba_dict(scene, "pinhole", 1))
    if not np.isfinite(depth).all():
        raise RuntimeError(f"scene {scene.name!r}: some pixel-centre rays hit nothing; add a wall")
    z_lo, z_hi = float(depth.min()), float(depth.max())
    truths, apertures = [], []
    for k, target in enumerate(scene.coc_targets_px):
        a = sc.aperture_radius_for(target, z_lo, z_hi, scene.focus_distance_m)
        rendered = [_render(sc.mitsuba_dict(scene, "thinlens", spp_truth, seed=1000 * (k + 1) + j,
                                            aperture_radius_m=a)) for j in (1, 2)]
        halves, spp_used = [r[0] for r in rendered], rendered[0][1]
        truth = 0.5 * (halves[0] + halves[1])
        max_coc = float(sc.mitsuba_coc_px(np.array([z_lo, z_hi]), a, scene.focus_distance_m).max())
        stats = noise_stats(halves[0], halves[1], depth, max_coc)
        apertures.append({"aperture_radius_m": a, "focus_distance_m": scene.focus_distance_m,
                          "f_number": sc.f_number_for(a, scene.focus_distance_m),
                          "max_coc_px": max_coc, "coc_target_px": target,
                          **stats})
        truths.append(truth)
    crop = slice(sc.MARGIN_PX, -sc.MARGIN_PX)
    for bits in STORED_MANTISSA_BITS:                        # what the storage costs
        q_mse = [float(np.mean((quantize(t, bits).astype(np.float32)[crop, crop] - t[crop, crop]) ** 2))
                 for t in truths]
        if all(q <= STORAGE_NOISE_RATIO * a["noise_mse_lin"] for q, a in zip(q_mse, apertures)):
            break
    for q, a in zip(q_mse, apertures):
        a["storage_mse_lin"] = q
    meta = {"title": scene.title, "focus_distance_m": scene.focus_distance_m,
            "depth_range_m": [z_lo, z_hi], "spp_input": spp_in, "spp_truth_per_half": spp_used,
            "apertures": apertures, "mantissa_bits": bits, "render_s": time.perf_counter() - t0}
    arrays = {"image": quantize(image, bits), "depth": depth.astype(np.float32),
              "truth": quantize(np.stack(truths), bits)}
    return arrays, meta


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", default=",".join(sc.SCENE_NAMES), help="comma-separated scene names")
    p.add_argument("--spp-scale", type=float, default=1.0, help="scale every sample count")
    p.add_argument("--variant", default="llvm_ad_rgb")
    p.add_argument("--out", default=DATA_DIR)
    args = p.parse_args(argv)
    variant = set_variant(args.variant)
    import mitsuba as mi
    os.makedirs(args.out, exist_ok=True)
    meta_path = os.path.join(args.out, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {"scenes": {}}
    meta.update({"mitsuba": mi.__version__, "variant": variant, "width": sc.WIDTH, "height": sc.HEIGHT,
                 "focal_mm": sc.FOCAL_MM, "sensor_mm": sc.SENSOR_MM, "fov_deg": sc.FOV_DEG,
                 "fov_axis": "x", "margin_px": sc.MARGIN_PX})
    wanted = args.scenes.split(",")
    unknown = set(wanted) - set(sc.SCENE_NAMES)
    if unknown:
        raise SystemExit(f"unknown scenes {sorted(unknown)}; known: {sc.SCENE_NAMES}")
    for scene in sc.build_scenes():
        if scene.name not in wanted:
            continue
        arrays, m = render_scene(scene, args.spp_scale)
        np.savez_compressed(os.path.join(args.out, f"{scene.name}.npz"), **arrays)
        meta["scenes"][scene.name] = m
        worst = min(a["noise_psnr_lin"] for a in m["apertures"])
        print(f"{scene.name:14s} {m['render_s']:6.1f} s  depth {m['depth_range_m'][0]:.2f}-"
              f"{m['depth_range_m'][1]:.2f} m  max coc "
              + ", ".join(f"{a['max_coc_px']:.1f}" for a in m["apertures"])
              + f" px  noise PSNR >= {worst:.1f} dB", flush=True)
    meta["scenes"] = {k: meta["scenes"][k] for k in sc.SCENE_NAMES if k in meta["scenes"]}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {args.out} ({variant})")


if __name__ == "__main__":
    main()
