"""Train the tiny refocusing DiT on CPU and refocus the demo scene with it — one command.

    python examples/train_refocus_dit.py --out runs/refocus_tiny

A thin front-end of the shared Accelerate loop (``python -m lensblur_models.refocus_dit.train``,
:mod:`lensblur_models.common.train`): every option of that command is accepted (``--steps``,
``--size``, ``--stack-weight``, ``--depth-dropout``, ``--mixed-precision``, ``--resume latest``
...), and ``accelerate launch --multi_gpu --num_processes N examples/train_refocus_dit.py ...``
trains with DDP.  Afterwards the main process refocuses a held-out demo scene (seed 999) at a
near and a far focus point, with and without depth, and writes ``reference.png``,
``refocus_*.png`` next to the physical renders ``truth_*.png``, printing the PSNR of each.

Measured with this command (1500 steps of the tiny model at 16x16; 165 CPU-seconds, 18 minutes
wall on a 2-core machine shared with other jobs): the held-out scene refocused to a near / far
focus reaches 24.6 / 25.1 dB PSNR against the physical render with the depth map and
24.3 / 24.9 dB without it (the unrefocused input: 19.6 / 21.5 dB); ``--seed 1``: 23.7 / 25.8 dB.
"""


from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from lensblur.io import write_image
from lensblur_models.refocus_dit import (AutoencoderKLCodec, RefocusDiTPipeline, SimulationConfig,
                                         render_condition)
from lensblur_models.refocus_dit.codec import IdentityCodec
from lensblur_models.refocus_dit.train import build_parser, load_scenes, main as train_main


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a - b).square().mean().clamp_min(1e-12)))


def run(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_main(argv)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    codec = (AutoencoderKLCodec.from_pretrained(args.vae, subfolder=args.vae_subfolder or None)
             if args.vae else IdentityCodec(3, shift=0.5, scale=2.0))
    if args.flux:  # LoRA + conditioning on a local FLUX checkpoint
        from lensblur_models.refocus_dit.flux import FluxRefocusDiT

        pipe = RefocusDiTPipeline(FluxRefocusDiT.load_adapter(out / "adapter").eval(), codec)
    else:
        pipe = RefocusDiTPipeline.from_pretrained(out / "model", codec=codec)
    image, depth = load_scenes([999], args.size, args.data)  # sRGB-encoded all-in-focus
    sim = SimulationConfig(max_strength=args.max_strength, gamma=2.2)
    ref_cond = torch.tensor([[0.5, 0.5, 0.0]])  # the input photo: everything sharp
    reference = render_condition(image, depth, ref_cond, sim)
    write_image(out / "reference.png", reference ** 2.2)
    for name, xy in (("near", (0.3, 0.9)), ("far", (0.5, 0.1))):
        cond = torch.tensor([[xy[0], xy[1], 1.0]])
        truth = render_condition(image, depth, cond, sim)
        write_image(out / f"truth_{name}.png", truth ** 2.2)
        for with_depth in (True, False):
            pred = pipe.refocus(reference, depth if with_depth else None, xy, 1.0, steps=16,
                                generator=torch.Generator().manual_seed(0)).clamp(0, 1)
            tag = f"{name}_{'depth' if with_depth else 'nodepth'}"
            write_image(out / f"refocus_{tag}.png", pred ** 2.2)
            print(f"refocus {tag}: PSNR vs physical render {psnr(pred, truth):.2f} dB "
                  f"(input vs render {psnr(reference, truth):.2f} dB)")


if __name__ == "__main__":
    run()
