"""Training of the EXIF defocus pipeline: a thin front-end of :mod:`lensblur_models.common.train`.

Two stages, both the unsupervised objective of
:meth:`~lensblur_models.exif_defocus.ExifDefocusPipeline.training_step`:

* ``stage="fdt"`` — all-in-focus images are given; only the Focus Distance Transformer trains;
* ``stage="joint"`` — the generator denoises the photo into the all-in-focus estimate; its LoRA
  adapters (the UNet's base weights and the VAE stay frozen) and the FDT train together, the
  FDT at ``fdt_lr_scale`` times the learning rate.

Real photos stream from disk (:class:`~lensblur_models.exif_defocus.data.ExifPhotoDataset`; depth
from the pipeline's depth model when there is no ``NAME_depth.npy``)::

    accelerate launch --multi_gpu --num_processes 4 -m lensblur_models.exif_defocus.train \\
        --photos /data/photos --generator /models/sd-1.5 --depth-model /models/depth-anything \\
        --stage joint --size 512 --batch 4 --mixed-precision bf16 --gradient-checkpointing \\
        --lr 1e-4 --lr-warmup-steps 500 --checkpointing-steps 1000 --num-workers 8 --out runs/exif
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import torch

from lensblur import LensBlurError

from ..common.train import TrainingArgs, TrainTask, add_training_args, train_loop
from .pipeline import ExifDefocusConfig, ExifDefocusPipeline

__all__ = ["ExifDefocusTask", "TensorDataset", "build_parser", "main"]


class TensorDataset(torch.utils.data.Dataset):
    """Item ``i`` of a dict of equally long tensors (e.g. :func:`make_focus_dataset`'s output)."""

    def __init__(self, tensors: dict, keys=None) -> None:
        keys = list(keys or tensors)
        n = {len(tensors[k]) for k in keys}
        if len(n) != 1:
            raise LensBlurError(f"`tensors` must have equal lengths, got {sorted(n)}")
        self.tensors, self.keys, self.length = tensors, keys, n.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {k: self.tensors[k][i] for k in self.keys}


class ExifDefocusTask(TrainTask):
    """The EXIF family for :func:`~lensblur_models.common.train.train_loop` (see the module docstring).

    Args:
        pipe: an :class:`ExifDefocusPipeline` (trained in place).
        dataset: items with ``target`` and ``exif`` (+ ``aif`` for ``stage="fdt"``, optional
            ``depth`` / ``has_depth``).
        stage: ``"fdt"`` or ``"joint"``.
        fdt_lr_scale: the FDT's learning rate relative to the loop's in the joint stage.
        save_dir: subdirectory of the output for ``pipe.save_pretrained`` (``None``: no save).
    """

    name = "exif_defocus"

    def __init__(self, pipe: ExifDefocusPipeline, dataset, stage: str = "fdt", fdt_lr_scale: float = 0.05,
                 save_dir: Optional[str] = "pipeline") -> None:
        if stage not in ("fdt", "joint"):
            raise LensBlurError(f"`stage` must be 'fdt' or 'joint', got {stage!r}")
        if stage == "joint" and pipe.generator is None:
            raise LensBlurError("`stage='joint'` needs a pipeline with a generator")
        self.pipe, self._dataset, self.stage = pipe, dataset, stage
        self.fdt_lr_scale, self.save_dir = float(fdt_lr_scale), save_dir
        if pipe.generator is not None:  # the generator's adapters train only in the joint stage
            for p in pipe.generator.trainable_parameters():
                p.requires_grad_(stage == "joint")

    def build_model(self):
        return self.pipe

    def dataset(self):
        return self._dataset

    def param_groups(self, net, learning_rate):
        fdt = [p for p in net.fdt.parameters() if p.requires_grad]
        if self.stage == "fdt":
            return [{"params": fdt, "lr": learning_rate}]
        gen = [p for p in net.generator.parameters() if p.requires_grad]
        return [{"params": fdt, "lr": learning_rate * self.fdt_lr_scale}, {"params": gen, "lr": learning_rate}]

    def loss(self, model, batch, generator):
        batch = dict(batch)
        has = batch.pop("has_depth", None)
        if has is not None and not bool(has.all()):
            batch.pop("depth")  # estimated on the fly by the pipeline's depth model
        if self.stage == "joint":
            batch.pop("aif", None)
        parts = model.training_step(batch, generator=generator)
        return parts["loss"], {k: float(v) for k, v in parts.items() if k != "loss"}

    def save(self, model, output_dir: Path) -> None:
        if self.save_dir is not None:
            model.save_pretrained(output_dir / self.save_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lensblur_models.exif_defocus.train",
                                description="Train the EXIF defocus pipeline on real photos.")
    add_training_args(p, max_steps=1000, batch_size=4, learning_rate=1e-4, lr_scheduler="cosine")
    p.add_argument("--photos", required=True, help="directory of photos with EXIF")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--generator", default=None, help="local diffusers pipeline directory (joint stage)")
    p.add_argument("--depth-model", default=None, help="local transformers depth model directory")
    p.add_argument("--depth-output", choices=("relative", "metric"), default="relative")
    p.add_argument("--stage", choices=("fdt", "joint"), default="joint")
    p.add_argument("--preset", choices=("tiny", "base"), default="base")
    p.add_argument("--lora-rank", type=int, default=4, help="generator UNet LoRA rank (0 = full fine-tune)")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv``, train on the photos, save ``OUT/pipeline``."""
    from ..common.depth import DepthEstimator
    from .adapters import DiffusersGenerator
    from .data import ExifPhotoDataset

    ns = build_parser().parse_args(argv)
    generator = DiffusersGenerator.from_pretrained(ns.generator, lora_rank=ns.lora_rank) if ns.generator else None
    depth = DepthEstimator.from_pretrained(ns.depth_model, output=ns.depth_output) if ns.depth_model else None
    config = getattr(ExifDefocusConfig, ns.preset)(gamma=2.2)
    pipe = ExifDefocusPipeline(config, generator=generator, depth_model=depth)
    data = ExifPhotoDataset(ns.photos, ns.size, seed=ns.seed)
    return train_loop(ExifDefocusTask(pipe, data, ns.stage), TrainingArgs.from_namespace(ns))


if __name__ == "__main__":
    main()
