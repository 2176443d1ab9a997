"""Fit a lens to a photo: recover f-number, focus distance and aperture by gradient descent.

Given an all-in-focus image, its depth and a "photo" of the same scene taken with an unknown
f-number, focus distance and aperture (here a 7-blade aperture rotated 20 degrees), find them by
gradient descent through :func:`lensblur.render` (:func:`lensblur.learnable.fit_lens`):

1. a :class:`~lensblur.learnable.LearnablePolygon` with 7 blades, jointly with the f-number and
   the focus distance (both started far off);
2. with the lens found, a free-form :class:`~lensblur.learnable.LearnableAperture` started from a
   disk, to show that the kernel image itself can be learned.

Run (about two minutes on a laptop CPU)::

    python examples/fit_lens.py --out fit_out

It prints the progress and the recovered values and writes ``target.png``, ``fit.png``,
``start.png`` and ``apertures.png`` (true, learned polygon, learned free-form kernel) into
``--out``.  The pictures of ``docs/learnable.rst`` come from ``--out docs/_static/learnable``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import lensblur
from lensblur.io import write_image
from lensblur.learnable import LearnableAperture, LearnablePolygon, fit_lens


def make_scene(height: int, width: int, seed: int = 0):
    """A slanted textured plane (1.2 m to 5 m) with bright point lights: texture tells the lens
    its blur, the lights show the aperture's shape."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, height // 4, width // 4, generator=g),
                                          size=(height, width), mode="bicubic",
                                          align_corners=True).clamp(0, 1) * 0.5
    img = img + 0.3 * torch.rand(1, 3, height, width, generator=g)
    xs = torch.linspace(0, 1, width)
    depth = (1.2 * (5.0 / 1.2) ** xs).expand(1, 1, height, width).clone()
    n_lights = max(4, height // 5)
    ys = torch.randint(2, height - 2, (n_lights,), generator=g)
    near = torch.randint(1, max(2, width // 6), (n_lights,), generator=g)
    for i, y in enumerate(ys.tolist()):
        x = int(near[i]) if i % 2 else width - 1 - int(near[i])
        img[..., y, x] = 25.0
    return img, depth


def kernel_strip(apertures, diameter: float = 31.0) -> torch.Tensor:
    """Kernels side by side, each scaled to a maximum of one, as a (1, 3, k, n k) image."""
    ks = [a.kernel(diameter) for a in apertures]
    size = max(k.shape[-1] for k in ks)
    tiles = []
    for k in ks:
        pad = (size - k.shape[-1]) // 2
        k = torch.nn.functional.pad(k / k.max(), (pad, pad, pad, pad))
        tiles.append(torch.nn.functional.pad(k, (2, 2, 2, 2)))
    return torch.cat(tiles, dim=-1).expand(1, 3, -1, -1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("fit_out"), help="output folder")
    ap.add_argument("--size", type=int, default=40, help="image height and width in pixels")
    ap.add_argument("--steps", type=int, default=120, help="steps of the joint lens+polygon fit")
    ap.add_argument("--kernel-steps", type=int, default=80, help="steps of the free-form kernel fit")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    img, depth = make_scene(args.size, args.size)
    true_aperture = lensblur.Aperture.polygon(blades=7, rotation_deg=20.0)
    camera = dict(focal_length_mm=50.0, sensor_width_mm=args.size / 12.0)
    true_lens = lensblur.ThinLens(f_number=1.4, focus_distance_m=2.0, **camera)
    target = lensblur.render(img, depth, true_lens, true_aperture, method="gather", backend="torch")
    print(f"target: f/1.4, focus 2.00 m, {true_aperture}")

    start = dict(f_number=2.0, focus_distance_m=2.6)
    polygon = LearnablePolygon(blades=7, rotation_deg=0.0, roundness=0.5)

    def report(step, loss):
        if step % 20 == 0:
            print(f"  step {step:4d}  loss {loss:.3e}  rotation {float(polygon.rotation_deg.detach()):6.1f} deg"
                  f"  roundness {float(polygon.roundness.detach()):.2f}")

    print(f"fit 1: f-number, focus distance and a 7-blade polygon (start f/{start['f_number']}, "
          f"{start['focus_distance_m']} m, rotation 0, roundness 0.5)")
    fit = fit_lens(img, depth, target, aperture=polygon, steps=args.steps, lr=0.08,
                   aperture_lr=0.2, method="gather", callback=report, **start, **camera)
    period = 360.0 / 7
    rot = float(fit.aperture.rotation_deg) % period
    print(f"  found f/{fit.f_number:.3f} (true 1.4), focus {fit.focus_distance_m:.3f} m (true 2.0), "
          f"rotation {rot:.1f} deg mod {period:.1f} (true 20.0), roundness {float(fit.aperture.roundness):.2f}")

    print("fit 2: a free-form kernel image, started from a disk, with the lens found above")
    free = LearnableAperture(size=15)
    kfit = fit_lens(img, depth, target, aperture=free, f_number=fit.f_number,
                    focus_distance_m=fit.focus_distance_m, fit_f_number=False, fit_focus=False,
                    steps=args.kernel_steps, lr=0.1, method="gather",
                    callback=lambda s, l: print(f"  step {s:4d}  loss {l:.3e}") if s % 20 == 0 else None,
                    **camera)

    def corr(a, b):
        a, b = a.kernel(15.0), b.kernel(15.0)
        n = max(a.shape[-1], b.shape[-1])
        a, b = (torch.nn.functional.pad(k, [(n - k.shape[-1]) // 2] * 4) for k in (a, b))
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    print(f"  kernel correlation with the true aperture: learned {corr(kfit.aperture, true_aperture):.3f}, "
          f"polygon fit {corr(fit.aperture, true_aperture):.3f}, plain disk "
          f"{corr(lensblur.Aperture.disk(), true_aperture):.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    start_lens = lensblur.ThinLens(**start, **camera)
    fitted_lens = lensblur.ThinLens(f_number=fit.f_number, focus_distance_m=fit.focus_distance_m, **camera)
    up = dict(scale_factor=4, mode="nearest")
    pictures = {
        "target.png": target,
        "start.png": lensblur.render(img, depth, start_lens, lensblur.Aperture.polygon(7, 0.0, 0.5),
                                     method="gather"),
        "fit.png": lensblur.render(img, depth, fitted_lens, fit.aperture, method="gather"),
    }
    for name, x in pictures.items():
        write_image(args.out / name, torch.nn.functional.interpolate(x.detach(), **up))
    write_image(args.out / "apertures.png",
                torch.nn.functional.interpolate(kernel_strip([true_aperture, fit.aperture, kfit.aperture]),
                                                scale_factor=3, mode="nearest"))
    print(f"wrote {', '.join(list(pictures) + ['apertures.png'])} to {args.out}")
    ok = abs(fit.f_number / 1.4 - 1) < 0.05 and abs(fit.focus_distance_m / 2.0 - 1) < 0.02
    return 0 if ok and math.isfinite(kfit.losses[-1]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
