"""Train the tiny EXIF-conditioned defocus pipeline end to end on CPU and watch the FDT learn focus.

One command (one to three minutes on a laptop CPU; no downloads)::

    python examples/train_exif_defocus.py --out exif_defocus_out

What it does:

1. builds synthetic *real photos*: crops of the procedural demo scene, rendered with a thin lens
   focused like a centre autofocus point, at random f-numbers and world scales
   (:func:`lensblur_models.exif_defocus.make_focus_dataset`); the focus distances are kept for
   evaluation only — training never sees them;
2. writes a tiny random diffusers ``DDPMPipeline`` checkpoint to ``OUT/checkpoints/generator`` and
   loads it back through :class:`DiffusersGenerator`, exactly as a real local checkpoint would be
   (``--generator PATH`` uses yours; ``--depth-model PATH`` a local transformers depth model
   instead of the scene's exact depth);
3. **stage 1** (``--fdt-steps``): trains the Focus Distance Transformer through the lens blur on
   (all-in-focus, photo) pairs — the reconstruction loss is the only signal;
4. **stage 2** (``--joint-steps``): trains the generator's UNet LoRA adapters and the FDT jointly,
   end to end: the generator denoises the noised photo into an all-in-focus estimate, depth ->
   FDT -> blur re-renders the photo, and the loss flows back into both;

Both stages run the shared Accelerate loop (:func:`lensblur_models.common.train.train_loop`
with :class:`lensblur_models.exif_defocus.train.ExifDefocusTask`); the real-photo command is
``python -m lensblur_models.exif_defocus.train`` (or under ``accelerate launch``).
5. prints the FDT's held-out focus error (mean ``|log focus - log true|``) next to the constant
   predictor's, Blur Monotonicity for the pipeline and for an f-number-blind baseline, saves the
   trained pipeline to ``OUT/pipeline`` and reloads it to check the round trip.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lensblur
from lensblur_models import DepthEstimator, blur_monotonicity
from lensblur_models.common.train import TrainingArgs, train_loop
from lensblur_models.exif_defocus import (DEFAULT_BLUR_METHOD, DiffusersGenerator, ExifDefocusConfig,
                                          ExifDefocusPipeline, log_focus_error,
                                          make_focus_dataset, make_tiny_diffusers_generator)
from lensblur_models.exif_defocus.train import ExifDefocusTask, TensorDataset

SWEEP = (1.8, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, 22.0)


def focus_error(pipe, data):
    pred = pipe.predict_focus(data["aif"], data["depth"], data["exif"])
    return log_focus_error(pred, data["focus_distance_m"])


def monotonicity(pipe, data):
    """Blur Monotonicity of the pipeline's f-number control and of an f-number-blind baseline.

    Focus comes from the FDT; the region is the area still defocused by >= 1 px at f/22, eroded
    by 2 px so that the Laplacian stencil stays off the border with the in-focus area (scenes
    without such an area are left out: nothing in them can change across the sweep).
    """
    with torch.no_grad():
        out = pipe(data["exif"], images=data["aif"], depth=data["depth"])
        lens = lensblur.ThinLens(out.focal_length_mm, max(SWEEP), out.focus_distance_m, out.sensor_width_mm)
        region = (lens.coc_px(out.depth_m, out.image.shape[-1]) >= 1.0).float()
        region = 1 - F.max_pool2d(1 - region, 5, stride=1, padding=2)
        keep = region.flatten(1).sum(1) > 0
        if not bool(keep.any()):
            return float("nan"), float("nan"), 0
        out = pipe.refocus(out)  # plain tensors below
        renders = pipe.f_number_sweep(out, SWEEP)[:, keep]
        baseline = torch.stack([pipe.refocus(out).image for _ in SWEEP])[:, keep]  # ignores the f-number
    region = region[keep]
    return (blur_monotonicity(renders, SWEEP, region), blur_monotonicity(baseline, SWEEP, region),
            int(keep.sum()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="exif_defocus_out", help="output directory")
    ap.add_argument("--size", type=int, default=32, help="photo side in pixels (multiple of 4)")
    ap.add_argument("--train", type=int, default=96, help="training photos")
    ap.add_argument("--fdt-steps", type=int, default=150, help="stage 1 steps (FDT through the blur)")
    ap.add_argument("--joint-steps", type=int, default=100, help="stage 2 steps (generator + FDT)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--generator", default=None, help="local diffusers pipeline directory (default: tiny random)")
    ap.add_argument("--depth-model", default=None, help="local transformers depth model directory "
                    "(default: the synthetic scene's exact depth)")
    ap.add_argument("--depth-output", default="relative", choices=("relative", "metric"),
                    help="what --depth-model returns: relative depth (the FDT learns the scale) or metres")
    ap.add_argument("--blur-method", default=DEFAULT_BLUR_METHOD, choices=("layered", "gather", "scatter"),
                    help="renderer of the pipeline (the training photos are always rendered 'layered')")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny ops: 1 is fastest)")
    ap.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out_dir = Path(args.out)
    t0 = time.time()

    train = make_focus_dataset(args.train, args.size, seed=args.seed, scene_size=3 * args.size, method="layered")
    test = make_focus_dataset(32, args.size, seed=args.seed + 1, scene_size=3 * args.size, method="layered")
    # same lens and field of view at 3x the resolution: blur large enough for an f/1.8-f/22 sweep
    sweep_set = make_focus_dataset(8, 3 * args.size, seed=args.seed + 2, scene_size=9 * args.size)
    gen_path = args.generator or make_tiny_diffusers_generator(out_dir / "checkpoints" / "generator", size=args.size)
    generator = DiffusersGenerator.from_pretrained(gen_path, num_inference_steps=4)
    depth_model = (DepthEstimator.from_pretrained(args.depth_model, output=args.depth_output)
                   if args.depth_model else None)
    pipe = ExifDefocusPipeline(ExifDefocusConfig.tiny(blur_method=args.blur_method), generator=generator,
                               depth_model=depth_model)
    keys = ("aif", "exif", "target") + (() if depth_model else ("depth",))
    const = train["focus_distance_m"].log().mean().exp().expand_as(test["focus_distance_m"])
    base_err = log_focus_error(const, test["focus_distance_m"])
    print(f"data: {args.train} training photos, 32 held out, {args.size}x{args.size} px  ({time.time() - t0:.1f}s)")
    print(f"held-out focus error  constant predictor: {base_err:.3f}   untrained FDT: {focus_error(pipe, test):.3f}")

    loop = dict(batch_size=args.batch, max_grad_norm=0.0, lr_scheduler="cosine", seed=args.seed,
                threads=args.threads, mixed_precision=args.mixed_precision, log_every=25)
    losses = []

    def report(kind):
        def callback(step, m):
            losses.append(m["loss"] if kind == "loss" else m["reconstruction"])
            if step % 25 == 0 or step == total[0]:
                extra = f"  AIF prior {m['aif_prior']:.3f}" if kind == "reconstruction" else ""
                print(f"  step {step:4d}  {kind} {sum(losses[-25:]) / len(losses[-25:]):.4f}{extra}  held-out focus "
                      f"error {focus_error(pipe, test):.3f}  ({time.time() - t0:.1f}s)", flush=True)
        return callback

    total = [args.fdt_steps]
    print("stage 1: FDT through the lens blur (reconstruction loss only, no focus labels)")
    train_loop(ExifDefocusTask(pipe, TensorDataset(train, keys), "fdt", save_dir=None),
               TrainingArgs(output_dir=str(out_dir / "stage1"), max_steps=args.fdt_steps, learning_rate=args.lr, **loop),
               progress=False, callback=report("loss"))

    if args.joint_steps:
        print("stage 2: generator + FDT end to end (generator denoises the photo, blur re-renders it)")
        # the FDT already knows focus: a small learning rate keeps it from chasing the young generator
        losses.clear()
        total[0] = args.joint_steps
        joint = tuple(k for k in keys if k != "aif")
        train_loop(ExifDefocusTask(pipe, TensorDataset(train, joint), "joint", fdt_lr_scale=args.lr * 0.05 / 1e-3,
                                   save_dir=None),
                   TrainingArgs(output_dir=str(out_dir / "stage2"), max_steps=args.joint_steps, learning_rate=1e-3,
                                **loop),
                   progress=False, callback=report("reconstruction"))

    learned = focus_error(pipe, test)
    print(f"held-out focus error  constant predictor: {base_err:.3f}   trained FDT: {learned:.3f}  "
          f"(ratio {learned / base_err:.2f})")
    mono, mono_base, used = monotonicity(pipe, sweep_set)
    if not used:
        print(f"Blur Monotonicity: no scene at {3 * args.size} px stays defocused at f/22 (use a larger --size)")
    else:
        print(f"Blur Monotonicity f/1.8-f/22 ({used} scenes at {3 * args.size} px)  pipeline: {mono:.1f}   "
              f"f-number-blind baseline: {mono_base:.1f}")

    path = pipe.save_pretrained(out_dir / "pipeline")
    back = ExifDefocusPipeline.from_pretrained(path)
    same = torch.allclose(back.predict_focus(test["aif"], test["depth"], test["exif"]),
                          pipe.predict_focus(test["aif"], test["depth"], test["exif"]))
    print(f"saved to {path} (reload reproduces the FDT: {same})  total {time.time() - t0:.1f}s")
    return learned, base_err


if __name__ == "__main__":
    main()
