"""Training command for the refocusing DiT: a thin front-end of :mod:`lensblur_models.common.train`.

One CPU process (the tiny model, a couple of CPU-minutes)::

    python -m lensblur_models.refocus_dit.train --size 16 --out runs/refocus_tiny

Several processes or GPUs (DDP; gloo on CPUs, NCCL on GPUs) — the same command under Accelerate::

    accelerate launch --multi_gpu --num_processes 2 -m lensblur_models.refocus_dit.train --out runs/ddp

A real checkpoint: ``--flux DIR`` trains LoRA adapters and the new conditioning modules of
:class:`~lensblur_models.refocus_dit.flux.FluxRefocusDiT` on the FLUX transformer in
``DIR/transformer`` (loaded in ``--flux-dtype``, bf16 by default; the adapters stay fp32), and
``--vae DIR`` moves the training into the latent space of the frozen ``DIR/vae``::

    accelerate launch --multi_gpu --num_processes 8 -m lensblur_models.refocus_dit.train \\
        --flux /models/FLUX.1-dev --vae /models/FLUX.1-dev --size 512 --batch 1 --lr 1e-4 \\
        --mixed-precision bf16 --gradient-checkpointing --lr-scheduler cosine --lr-warmup-steps 500 \\
        --checkpointing-steps 1000 --num-workers 4 --data /data/photos --depth-model /models/depth-anything \\
        --out runs/flux_refocus

Data: the procedural scene (:func:`lensblur.scene.make_scene`, ``--scenes`` of them, made on
demand) or ``--data DIR`` of photos streamed from disk
(:class:`~lensblur_models.common.data.ImageFolderDataset`: shorter side resized to ``--size``,
random square crops; ``NAME_depth.npy``
in metres when present, else depth from ``--depth-model`` — relative depth, used as metres up
to scale).  Pairs are simulated on the device for every batch (:func:`~.simulate.simulate_batch`,
``gamma=2.2``: blur happens in linear light).  Every loop flag (``--mixed-precision``,
``--resume``, ``--use-ema`` ...) is described in :mod:`lensblur_models.common.train`.

Outputs in ``--out``: ``model/`` (``RefocusDiT.save_pretrained``) or ``adapter/``
(``FluxRefocusDiT.save_adapter``), ``log.jsonl``, ``checkpoints/`` and ``rank{r}.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import torch

from ..common.train import TrainingArgs, TrainTask, add_training_args, train_loop
from .codec import IdentityCodec
from .model import RefocusDiT, RefocusDiTConfig
from .simulate import SimulationConfig, simulate_batch
from .training import TrainConfig, training_step

__all__ = ["build_parser", "main", "load_scenes", "RefocusDiTTask", "ProceduralScenes"]

_MODELS = ("tiny", "small", "base")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lensblur_models.refocus_dit.train",
                                description="Train the refocusing DiT on simulated pairs.")
    add_training_args(p, max_steps=1500, batch_size=4, learning_rate=2e-3, max_grad_norm=0.0, log_every=25)
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--scenes", type=int, default=8, help="procedural scenes")
    p.add_argument("--data", default=None, help="directory of photos (+ optional NAME_depth.npy in metres)")
    p.add_argument("--depth-model", default=None,
                   help="local transformers depth model for --data photos without a depth file")
    p.add_argument("--model", choices=_MODELS, default="tiny")
    p.add_argument("--patch", type=int, default=None, help="override the patch size")
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
    p.add_argument("--flux-dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="dtype of the frozen FLUX weights")
    p.add_argument("--lora-rank", type=int, default=16)
    return p


def _scene(index: int, size: int):
    from lensblur.scene import make_scene

    img, d = make_scene(size, size, seed=index)
    return img.clamp(0, 1) ** (1 / 2.2), d


def load_scenes(indices: List[int], size: int, data: Optional[str] = None):
    """All-in-focus sRGB-encoded images in ``[0, 1]`` and depth for the given scene indices.

    Procedural scenes (``data=None``) or the centre crops of the photos of ``data`` (which need
    ``NAME_depth.npy`` files).  Returns ``(images (n, 3, size, size), depth (n, 1, size, size))``.
    """
    if data is None:
        pairs = [_scene(i, size) for i in indices]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    from ..common.data import ImageFolderDataset

    ds = ImageFolderDataset(data, size, crop="center")
    items = [ds[i % len(ds)] for i in indices]
    if not all(bool(it["has_depth"]) for it in items):
        raise FileNotFoundError(f"photos in {data!r} need NAME_depth.npy files here")
    return torch.stack([it["image"] for it in items]), torch.stack([it["depth"] for it in items])


class ProceduralScenes(torch.utils.data.Dataset):
    """``length`` items drawn from ``num_scenes`` procedural scenes, each flipped at random.

    Item ``i``: scene ``randint(num_scenes)`` and the flip from a generator seeded by
    ``(seed, i)``; scenes are made on demand (and cached per worker).
    """

    def __init__(self, num_scenes: int, size: int, seed: int = 0, length: int = 1 << 20) -> None:
        self.num_scenes, self.size, self.seed, self.length = int(num_scenes), int(size), int(seed), int(length)
        self._cache = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        k = int(torch.randint(self.num_scenes, (), generator=g))
        if k not in self._cache:
            self._cache[k] = _scene(self.seed * 100003 + k, self.size)
        img, d = self._cache[k]
        if float(torch.rand((), generator=g)) < 0.5:
            img, d = img.flip(-1), d.flip(-1)
        return {"image": img[0], "depth": d[0], "has_depth": torch.tensor(True), "index": torch.tensor(i)}


class RefocusDiTTask(TrainTask):
    """The refocusing family for :func:`~lensblur_models.common.train.train_loop` (see the module docstring)."""

    name = "refocus_dit"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.vae:
            from .codec import AutoencoderKLCodec

            self.codec = AutoencoderKLCodec.from_pretrained(args.vae, subfolder=args.vae_subfolder or None)
        else:
            self.codec = IdentityCodec(3, shift=0.5, scale=2.0)
        self.depth_estimator = None
        if args.depth_model:
            from ..common.depth import DepthEstimator

            self.depth_estimator = DepthEstimator.from_pretrained(args.depth_model, output="relative")
        self.sim = SimulationConfig(max_strength=args.max_strength, num_focus_planes=args.planes, gamma=2.2)
        self.tcfg = TrainConfig(flow_weight=args.flow_weight, stack_weight=args.stack_weight,
                                depth_dropout=args.depth_dropout)

    def build_model(self):
        a = self.args
        if a.flux:
            from .flux import FluxRefocusDiT

            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.flux_dtype]
            return FluxRefocusDiT.from_pretrained(a.flux, subfolder=a.flux_subfolder or None,
                                                  lora_rank=a.lora_rank, torch_dtype=dtype)
        config = RefocusDiTConfig.preset(a.model, in_channels=self.codec.channels)
        if a.patch:
            config = config.replace(patch_size=a.patch)
        return RefocusDiT.from_config(config)

    def dataset(self):
        a = self.args
        length = max(a.max_steps * a.batch_size * a.gradient_accumulation_steps, a.batch_size) * 8
        if a.data is None:
            return ProceduralScenes(a.scenes, a.size, a.seed, length)
        from ..common.data import ImageFolderDataset

        return ImageFolderDataset(a.data, a.size, seed=a.seed, length=length)

    def helpers(self):
        return {"codec": self.codec, **({"depth": self.depth_estimator} if self.depth_estimator else {})}

    def loss(self, model, batch, generator):
        img, depth, has = batch["image"], batch["depth"], batch["has_depth"]
        with torch.no_grad(), torch.autocast(img.device.type, enabled=False):
            if not bool(has.all()):
                if self.depth_estimator is None:
                    raise FileNotFoundError("photos without NAME_depth.npy need --depth-model")
                depth = torch.where(has.view(-1, 1, 1, 1), depth, self.depth_estimator(img))
            rb = simulate_batch(img, depth, self.sim, generator)
        return training_step(model, rb, self.codec, self.tcfg, generator)

    def save(self, model, output_dir: Path) -> None:
        if self.args.flux:
            model.save_adapter(output_dir / "adapter")
        else:
            model.save_pretrained(output_dir / "model")


def main(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv``, train, return this process's summary (see :func:`~lensblur_models.common.train.train_loop`)."""
    ns = build_parser().parse_args(argv)
    return train_loop(RefocusDiTTask(ns), TrainingArgs.from_namespace(ns))


if __name__ == "__main__":
    main()
