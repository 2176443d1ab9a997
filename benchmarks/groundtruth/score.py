"""Score depth-of-field methods against the Mitsuba 3 thin-lens references.

    python -m benchmarks.groundtruth.score                      # every method, prints the table
    python -m benchmarks.groundtruth.score --methods layered    # only layered/* rows
    python -m benchmarks.groundtruth.score --scenes plane,lights --report   # + RESULTS.md, docs table, figures

Reads only the committed data (``benchmarks/groundtruth/data/``: no Mitsuba needed).  Every
method renders the pinhole image with the pinhole depth through the :class:`lensblur.ThinLens`
matched to the reference's aperture (:func:`lens_for`), and is compared with the thin-lens
truth on the frame less a margin of :data:`~benchmarks.groundtruth.scenes.MARGIN_PX` pixels:

* ``psnr_lin``: PSNR of linear radiance, peak 1 (the surfaces' white; lights reach 40);
* ``psnr_srgb``: PSNR after clipping to [0, 1] and sRGB encoding;
* ``psnr_edge`` / ``psnr_int``: linear PSNR inside the edge band (pixels within the largest blur
  radius + 2 px of a depth discontinuity, :func:`edge_band`) and in the rest (the interior);
* ``ssim``: SSIM (kornia, 11 px Gaussian window) on the sRGB images;
* ``energy``: total radiance of the method over total radiance of the truth;
* ``ms``: wall time of one call (CPU, shared machine: compare rows of one run only).

The truth's own noise (from its two independently seeded halves) bounds every PSNR: it is
reported as ``noise_psnr_*`` per scene and aperture.  :func:`score` is the reusable entry point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, asdict
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import lensblur

from . import scenes as sc

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "data")
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
#: every method row: ``method/backend`` of :func:`lensblur.render`, then the baselines
ALL_METHODS = ("layered/torch", "layered/native", "gather/torch", "gather/native",
               "scatter/torch", "scatter/native", "mpi16", "none")
#: log-depth jump between 4-neighbours that counts as a depth discontinuity
EDGE_LOG_DEPTH_STEP = 0.05


# --------------------------------------------------------------------------------------------
# regions and metrics (numpy in, floats out; images are (H, W, 3) linear radiance)


def crop(x: np.ndarray, margin: int = sc.MARGIN_PX) -> np.ndarray:
    """``x`` without ``margin`` pixels on every side (first two axes are H, W)."""
    return x[margin:x.shape[0] - margin, margin:x.shape[1] - margin]


def edge_band(depth: np.ndarray, max_coc_px: float) -> np.ndarray:
    """``(H, W)`` bool: pixels within ``max_coc_px / 2 + 2`` px (square neighbourhood) of a depth
    discontinuity (a log-depth step of more than :data:`EDGE_LOG_DEPTH_STEP` to a 4-neighbour)."""
    lz = np.log(depth)
    jump = np.zeros(depth.shape, bool)
    dy = np.abs(np.diff(lz, axis=0)) > EDGE_LOG_DEPTH_STEP
    dx = np.abs(np.diff(lz, axis=1)) > EDGE_LOG_DEPTH_STEP
    jump[1:] |= dy
    jump[:-1] |= dy
    jump[:, 1:] |= dx
    jump[:, :-1] |= dx
    r = int(math.ceil(max_coc_px / 2)) + 2
    t = torch.from_numpy(jump.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * r + 1, stride=1, padding=r)[0, 0].numpy() > 0


def regions(depth: np.ndarray, max_coc_px: float) -> Dict[str, np.ndarray]:
    """The scored regions as bool ``(H, W)`` masks: ``all`` (the crop), ``edge``, ``int``."""
    inside = np.zeros(depth.shape, bool)
    inside[sc.MARGIN_PX:-sc.MARGIN_PX, sc.MARGIN_PX:-sc.MARGIN_PX] = True
    band = edge_band(depth, max_coc_px)
    return {"all": inside, "edge": inside & band, "int": inside & ~band}


def srgb(x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and apply the sRGB transfer curve."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def mse(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    return float(d[mask].mean()) if mask is not None else float(d.mean())


def psnr(m: float) -> float:
    """PSNR in dB for peak 1 of a mean squared error (``inf`` for 0, ``nan`` for an empty region)."""
    if m != m:
        return float("nan")
    return float("inf") if m <= 0 else -10.0 * math.log10(m)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (kornia, window 11) of the sRGB images over ``mask``."""
    from kornia.metrics import ssim as kssim
    ta = torch.from_numpy(srgb(a).astype(np.float32)).permute(2, 0, 1)[None]
    tb = torch.from_numpy(srgb(b).astype(np.float32)).permute(2, 0, 1)[None]
    m = kssim(ta, tb, 11, max_val=1.0)[0].mean(0).numpy()
    return float(m[mask].mean())


def noise_stats(half_a: np.ndarray, half_b: np.ndarray, depth: np.ndarray, max_coc_px: float) -> dict:
    """Noise of the mean of two independent halves, per region: the mean's error variance is a
    quarter of the mean squared difference of the halves.  Returns ``noise_mse_*`` and
    ``noise_psnr_*`` for linear radiance (``lin``, ``edge``, ``int``) and sRGB (``srgb``)."""
    reg = regions(depth, max_coc_px)
    out = {}
    for key, mask in (("lin", reg["all"]), ("edge", reg["edge"]), ("int", reg["int"])):
        m = mse(half_a, half_b, mask) / 4.0 if mask.any() else float("nan")
        out[f"noise_mse_{key}"], out[f"noise_psnr_{key}"] = m, psnr(m)
    m = mse(srgb(half_a), srgb(half_b), reg["all"]) / 4.0
    out["noise_mse_srgb"], out["noise_psnr_srgb"] = m, psnr(m)
    return out


# --------------------------------------------------------------------------------------------
# data and methods


@dataclass
class Reference:
    """One scene at one aperture: the input, its depth, the truth and the matched lens."""
    scene: str
    aperture: int
    image: np.ndarray          # (H, W, 3) float32, pinhole, linear
    depth: np.ndarray          # (H, W) float32, metres
    truth: np.ndarray          # (H, W, 3) float32, thin lens, linear
    meta: dict                 # the aperture's entry of meta.json (lens, noise)
    frame_width_px: int = sc.WIDTH   # width of the rendered frame (the arrays may be a window of it)

    @property
    def lens(self) -> lensblur.ThinLens:
        """The matched lens, its sensor cut to the arrays' width so the pixel pitch is the frame's."""
        return lens_for(self.meta, sensor_mm=sc.SENSOR_MM * self.image.shape[1] / self.frame_width_px)

    @property
    def max_coc_px(self) -> float:
        return float(self.meta["max_coc_px"])


def load_meta(data_dir: str = DATA_DIR) -> dict:
    with open(os.path.join(data_dir, "meta.json")) as f:
        return json.load(f)


def lens_for(aperture_meta: dict, focal_mm: float = sc.FOCAL_MM, sensor_mm: float = sc.SENSOR_MM
             ) -> lensblur.ThinLens:
    """The :class:`lensblur.ThinLens` that blurs like the reference's Mitsuba ``thinlens``."""
    n = sc.f_number_for(aperture_meta["aperture_radius_m"], aperture_meta["focus_distance_m"], focal_mm)
    return lensblur.ThinLens(focal_length_mm=focal_mm, f_number=n,
                             focus_distance_m=aperture_meta["focus_distance_m"], sensor_width_mm=sensor_mm)


def load_references(scenes: Optional[Iterable[str]] = None, data_dir: str = DATA_DIR) -> List[Reference]:
    """Every (scene, aperture) reference of the committed data, in scene order."""
    meta = load_meta(data_dir)
    names = list(meta["scenes"]) if scenes is None else list(scenes)
    refs = []
    for name in names:
        if name not in meta["scenes"]:
            raise KeyError(f"no reference data for scene {name!r}; have {list(meta['scenes'])}")
        with np.load(os.path.join(data_dir, f"{name}.npz")) as z:
            image, depth, truth = (z["image"].astype(np.float32), z["depth"].astype(np.float32),
                                   z["truth"].astype(np.float32))
        for k, ap in enumerate(meta["scenes"][name]["apertures"]):
            refs.append(Reference(name, k, image, depth, truth[k], ap))
    return refs


def run_method(method: str, ref: Reference) -> np.ndarray:
    """Render ``ref``'s input with ``method`` (``"layered/native"``, ``"mpi16"``, ``"none"``, ...)
    and return the ``(H, W, 3)`` float32 result."""
    img = torch.from_numpy(ref.image).permute(2, 0, 1)[None].contiguous()
    depth = torch.from_numpy(ref.depth)[None, None].contiguous()
    with torch.no_grad():
        if method == "none":
            out = img
        elif method.startswith("mpi"):
            from benchmarks.baselines import mpi_conv_blur
            planes = int(method[3:] or 16)
            coc = ref.lens.coc_px(depth, img.shape[-1], signed=True).float()
            out = mpi_conv_blur(img, coc, num_planes=planes)
        else:
            name, _, backend = method.partition("/")
            out = lensblur.render(img, depth, ref.lens, method=name, backend=backend or "auto")
    return out[0].permute(1, 2, 0).float().numpy()


def metrics(out: np.ndarray, ref: Reference) -> dict:
    """Every score of one result against its reference (see the module docstring)."""
    reg = regions(ref.depth, ref.max_coc_px)
    t, a = ref.truth, reg["all"]
    res = {"psnr_lin": psnr(mse(out, t, a)),
           "psnr_srgb": psnr(mse(srgb(out), srgb(t), a)),
           "psnr_edge": psnr(mse(out, t, reg["edge"])) if reg["edge"].any() else float("nan"),
           "psnr_int": psnr(mse(out, t, reg["int"])) if reg["int"].any() else float("nan"),
           "ssim": ssim(out, t, a),
           "energy": float(np.asarray(out, np.float64)[a].sum() / np.asarray(t, np.float64)[a].sum())}
    return res


def score(methods: Optional[Sequence[str]] = None, scenes: Optional[Iterable[str]] = None,
          data_dir: str = DATA_DIR, keep_images: bool = False, torch_all: bool = False) -> List[dict]:
    """Score ``methods`` on ``scenes`` (default: all of both).

    ``methods`` entries are full names (``"layered/native"``) or prefixes (``"layered"`` = every
    backend of it).  The ``torch`` backend (the plain reference, minutes per call at 40 px blur on
    two CPU cores) runs on the smallest aperture of each scene only, unless ``torch_all``.  Returns one dict per (scene, aperture, method) with the keys of
    :func:`metrics`, ``ms``, ``scene``, ``aperture``, ``max_coc_px``, ``f_number``, the
    reference's ``noise_psnr_*`` and, with ``keep_images``, the result under ``"image"``.
    """
    chosen = expand_methods(methods)
    rows = []
    warmed = set()
    for ref in load_references(scenes, data_dir):
        for m in chosen:
            if m.endswith("/torch") and ref.aperture > 0 and not torch_all:
                continue
            if m not in warmed:                       # first call builds kernels / compiles
                run_method(m, ref)
                warmed.add(m)
            t0 = time.perf_counter()
            out = run_method(m, ref)
            ms = (time.perf_counter() - t0) * 1000.0
            row = {"scene": ref.scene, "aperture": ref.aperture, "max_coc_px": ref.max_coc_px,
                   "f_number": float(ref.lens.f_number), "method": m, **metrics(out, ref), "ms": ms,
                   **{k: v for k, v in ref.meta.items() if k.startswith("noise_psnr")}}
            if keep_images:
                row["image"] = out
            rows.append(row)
    return rows


def expand_methods(methods: Optional[Sequence[str]]) -> List[str]:
    if methods is None:
        return list(ALL_METHODS)
    out = []
    for m in methods:
        hits = [a for a in ALL_METHODS if a == m or a.split("/")[0] == m]
        if not hits and ("/" in m or m.startswith("mpi")):
            hits = [m]                               # e.g. "gather/triton", "mpi32"
        if not hits:
            raise ValueError(f"unknown method {m!r}; known: {ALL_METHODS}")
        out += [h for h in hits if h not in out]
    return out


# --------------------------------------------------------------------------------------------
# tables

_COLS = (("psnr_lin", "PSNR lin", "{:.1f}"), ("psnr_srgb", "PSNR sRGB", "{:.1f}"),
         ("psnr_edge", "edge", "{:.1f}"), ("psnr_int", "interior", "{:.1f}"),
         ("ssim", "SSIM", "{:.4f}"), ("energy", "energy", "{:.3f}"), ("ms", "ms", "{:.0f}"))


def _fmt(v, f):
    return "—" if (isinstance(v, float) and v != v) else f.format(v)


def table_rows(rows: List[dict]) -> List[List[str]]:
    head = ["scene", "max coc", "method"] + [c[1] for c in _COLS]
    body = [head]
    for r in rows:
        body.append([r["scene"], f"{r['max_coc_px']:.0f} px", r["method"]]
                    + [_fmt(r[k], f) for k, _, f in _COLS])
    return body


def noise_rows(meta: dict) -> List[List[str]]:
    body = [["scene", "max coc", "f-number", "spp", "noise PSNR lin", "sRGB", "edge", "interior", "render s"]]
    for name, s in meta["scenes"].items():
        for ap in s["apertures"]:
            body.append([name, f"{ap['max_coc_px']:.0f} px", f"{ap['f_number']:.2f}",
                         f"{2 * s['spp_truth_per_half']}"]
                        + [_fmt(ap[f"noise_psnr_{k}"], "{:.1f}") for k in ("lin", "srgb", "edge", "int")]
                        + [f"{s['render_s']:.0f}" if ap is s["apertures"][0] else ""])
    return body


def markdown(body: List[List[str]]) -> str:
    lines = ["| " + " | ".join(body[0]) + " |", "|" + "|".join("---" for _ in body[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body[1:]]
    return "\n".join(lines)


def rst(body: List[List[str]]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in body:
        lines.append("   * - " + row[0])
        lines += [f"     - {c}" for c in row[1:]]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Score methods against the Mitsuba references.")
    p.add_argument("--methods", default=None, help=f"comma-separated, names or prefixes of {ALL_METHODS}")
    p.add_argument("--scenes", default=None, help="comma-separated scene names (default all)")
    p.add_argument("--report", action="store_true",
                   help="also write benchmarks/groundtruth/RESULTS.md, the docs table and the figures")
    p.add_argument("--torch-all", action="store_true", help="run the torch backend on every aperture (slow)")
    p.add_argument("--json", default=None, help="write the rows as JSON to this path")
    args = p.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    scenes = args.scenes.split(",") if args.scenes else None
    rows = score(methods, scenes, keep_images=args.report, torch_all=args.torch_all)
    print(markdown(table_rows(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "image"} for r in rows], f, indent=1)
    if args.report:
        from .report import write_report
        write_report(rows, load_meta())


if __name__ == "__main__":
    main()
