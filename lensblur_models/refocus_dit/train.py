"""Training command for :class:`~.model.RefocusDiT` on simulated pairs (one process or DDP).

Single process (CPU, a couple of minutes for the tiny model)::

    python -m lensblur_models.refocus_dit.train --size 16 --out runs/refocus_tiny

Several processes / GPUs with PyTorch's DistributedDataParallel (``nccl`` on CUDA, ``gloo`` on
CPU)::

    torchrun --nproc_per_node 2 -m lensblur_models.refocus_dit.train --steps 300 --out runs/ddp

Data: all-in-focus images and exact depth from the procedural scene
(:func:`lensblur.scene.make_scene`), or from ``--data DIR`` holding ``NAME.png`` +
``NAME_depth.npy`` (metres) pairs.  Each rank owns a disjoint shard of the scenes (scene ``i``
goes to rank ``i % world_size``) and its own generator (``seed + 1000 * rank``), so ranks
simulate different pairs; model initialisation uses ``seed`` on every rank (DDP also broadcasts
rank 0's weights).  Images are clipped to ``[0, 1]``, sRGB-encoded and rendered with
``gamma=2.2`` (blur happens in linear light); the pixel-space codec maps them to ``[-1, 1]``.

A real checkpoint: ``--flux DIR`` trains LoRA adapters and the new conditioning modules of
:class:`~lensblur_models.refocus_dit.flux.FluxRefocusDiT` on the FLUX transformer in ``DIR/transformer`` and ``--vae DIR``
moves the training into the latent space of ``DIR/vae`` (use ``--size 512`` or more, and GPUs)::

    torchrun --nproc_per_node 8 -m lensblur_models.refocus_dit.train --flux /models/FLUX.1-dev --vae /models/FLUX.1-dev --size 512 --batch 1 --lr 1e-4 --out runs/flux_refocus

Outputs in ``--out``: ``model/`` (``RefocusDiT.save_pretrained``) or ``adapter/``
(``FluxRefocusDiT.save_adapter``), ``log.jsonl`` (rank 0's
losses averaged over ranks) and ``rank{r}.json`` (per-rank summary: its scene shard, the digest
of its first batch and a checksum of its final weights).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import List, Optional

import torch
import torch.distributed as dist

from .codec import IdentityCodec
from .model import RefocusDiT, RefocusDiTConfig
from .simulate import SimulationConfig, simulate_batch
from .training import TrainConfig, training_step

__all__ = ["build_parser", "main", "load_scenes"]

_MODELS = {"tiny": RefocusDiTConfig.tiny, "small": RefocusDiTConfig.small, "base": RefocusDiTConfig.base}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lensblur_models.refocus_dit.train",
                                description="Train the refocusing DiT on simulated pairs.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=4, help="scenes per step per rank")
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--scenes", type=int, default=8, help="procedural scenes in total (all ranks)")
    p.add_argument("--data", default=None, help="directory of NAME.png + NAME_depth.npy pairs")
    p.add_argument("--model", choices=sorted(_MODELS), default="tiny")
    p.add_argument("--patch", type=int, default=None, help="override the patch size")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--flow-weight", type=float, default=1.0)
    p.add_argument("--stack-weight", type=float, default=0.5)
    p.add_argument("--depth-dropout", type=float, default=0.1)
    p.add_argument("--planes", type=int, default=2, help="focus planes per scene (stacking)")
    p.add_argument("--max-strength", type=float, default=0.3,
                   help="blur at bokeh level 1, image widths per diopter")
    p.add_argument("--vae", default=None,
                   help="local diffusers checkpoint of an AutoencoderKL: train in its latent space")
    p.add_argument("--vae-subfolder", default="vae", help="subfolder of --vae ('' for none)")
    p.add_argument("--flux", default=None,
                   help="local FLUX checkpoint: train LoRA + conditioning on its transformer")
    p.add_argument("--flux-subfolder", default="transformer", help="subfolder of --flux ('' for none)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--log-every", type=int, default=25)
    return p


def load_scenes(indices: List[int], size: int, data: Optional[str] = None):
    """All-in-focus sRGB-encoded images in ``[0, 1]`` and depth for the given scene indices.

    Returns ``(images (n, 3, size, size), depth (n, 1, size, size))`` (float32, CPU).
    """
    import torch.nn.functional as F

    images, depths = [], []
    if data is None:
        from lensblur.scene import make_scene

        for i in indices:
            img, d = make_scene(size, size, seed=i)
            images.append(img.clamp(0, 1) ** (1 / 2.2))
            depths.append(d)
    else:
        import numpy as np

        from lensblur.io import read_image

        names = sorted(p.stem for p in Path(data).glob("*.png") if not p.stem.endswith("_depth"))
        if not names:
            raise FileNotFoundError(f"no NAME.png + NAME_depth.npy pairs in {data!r}")
        for i in indices:
            name = names[i % len(names)]
            img = read_image(Path(data) / f"{name}.png")
            d = torch.from_numpy(np.load(Path(data) / f"{name}_depth.npy")).float()[None, None]
            images.append(F.interpolate(img, size=(size, size), mode="area") ** (1 / 2.2))
            depths.append(F.interpolate(d, size=(size, size), mode="nearest"))
    return torch.cat(images), torch.cat(depths)


def main(argv: Optional[List[str]] = None) -> dict:
    """Run training; returns rank 0's (or this rank's) final summary."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(args, rank, world, device, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(args, rank: int, world: int, device: torch.device, distributed: bool) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shard = [i for i in range(args.scenes) if i % world == rank]
    if not shard:
        raise ValueError(f"--scenes {args.scenes} leaves rank {rank} of {world} without data")
    images, depths = load_scenes([args.seed * 100003 + i for i in shard], args.size, args.data)
    images, depths = images.to(device), depths.to(device)

    torch.manual_seed(args.seed)
    if args.vae:
        from .codec import AutoencoderKLCodec

        codec = AutoencoderKLCodec.from_pretrained(args.vae, subfolder=args.vae_subfolder or None).to(device)
    else:
        codec = IdentityCodec(3, shift=0.5, scale=2.0)
    if args.flux:
        from .flux import FluxRefocusDiT

        model = FluxRefocusDiT.from_pretrained(args.flux, subfolder=args.flux_subfolder or None,
                                                   lora_rank=args.lora_rank).to(device)
    else:
        config = _MODELS[args.model](in_channels=codec.channels)
        if args.patch:
            config.patch_size = args.patch
        model = RefocusDiT.from_config(config).to(device)
    ddp_model = model
    if distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=0.0)
    sim = SimulationConfig(max_strength=args.max_strength, num_focus_planes=args.planes, gamma=2.2)
    tcfg = TrainConfig(flow_weight=args.flow_weight, stack_weight=args.stack_weight,
                       depth_dropout=args.depth_dropout)
    gen = torch.Generator().manual_seed(args.seed + 1000 * rank)

    log = open(out / "log.jsonl", "w") if rank == 0 else None
    first_digest, t0, metrics = None, time.time(), {}
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(shard), (args.batch,), generator=gen)
        flip = torch.rand(args.batch, generator=gen) < 0.5
        img, dep = images[idx.to(device)], depths[idx.to(device)]
        img = torch.where(flip.view(-1, 1, 1, 1).to(device), img.flip(-1), img)
        dep = torch.where(flip.view(-1, 1, 1, 1).to(device), dep.flip(-1), dep)
        with torch.no_grad():
            batch = simulate_batch(img, dep, sim, gen)
        if first_digest is None:
            first_digest = float(batch.targets.double().sum())
        loss, metrics = training_step(ddp_model, batch, codec, tcfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            vals = torch.tensor([metrics["loss"], metrics["flow"], metrics["stack"]], device=device)
            if distributed:
                dist.all_reduce(vals)
                vals /= world
            if log is not None:
                rec = {"step": step, "loss": vals[0].item(), "flow": vals[1].item(),
                       "stack": vals[2].item(), "seconds": round(time.time() - t0, 2)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
    if log is not None:
        log.close()
        (model.save_adapter(out / "adapter") if args.flux else model.save_pretrained(out / "model"))
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    summary = {"rank": rank, "world_size": world, "scenes": shard, "first_batch_digest": first_digest,
               "param_checksum": checksum, "final": metrics}
    with open(out / f"rank{rank}.json", "w") as f:
        json.dump(summary, f)
    return summary


if __name__ == "__main__":
    main()
