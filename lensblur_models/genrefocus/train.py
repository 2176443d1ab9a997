"""Training of :class:`DeblurNet` and :class:`BokehNet`: a thin front-end of :mod:`lensblur_models.common.train`.

One network per run, on data rendered on the fly by :mod:`lensblur` (:class:`RefocusSamples`:
sample ``i`` is drawn from a generator seeded by ``(seed, i)``, in the loader's workers)::

    python -m lensblur_models.genrefocus.train --net bokeh --out runs/bokeh --steps 400
    accelerate launch --multi_gpu --num_processes 8 -m lensblur_models.genrefocus.train --net bokeh \\
        --preset base --size 256 --batch 8 --mixed-precision bf16 --gradient-checkpointing \\
        --lr 2e-4 --lr-scheduler cosine --lr-warmup-steps 1000 --use-ema --checkpointing-steps 2000 \\
        --num-workers 8 --out runs/bokeh_base

``--flux DIR`` trains :class:`~lensblur_models.genrefocus.flux.FluxBridgeAdapter` (LoRA on the
local FLUX transformer ``DIR/transformer``, loaded in bf16) instead of the native network.
:func:`train` is the same loop for a network already built in Python (tests, the example).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Union

import torch

from lensblur import LensBlurError

from ..common.checks import check_int
from ..common.train import TrainingArgs, TrainTask, add_training_args, train_loop, unwrap_batch_collate
from .data import RefocusData
from .models import BokehNet, BokehNetConfig, DeblurNet, DeblurNetConfig, bridge_loss

__all__ = ["train", "eval_loss", "RefocusSamples", "GenRefocusTask", "build_parser", "main"]


def eval_loss(net, batches: Iterable[dict], ts=(0.0, 0.5)) -> float:
    """Deterministic bridge loss: mean over ``batches`` and the fixed times ``ts`` (no grad)."""
    was = net.training
    net.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            for t in ts:
                total += float(bridge_loss(net, b, t=t))
                n += 1
    net.train(was)
    if n == 0:
        raise LensBlurError("`batches` must not be empty")
    return total / n


class RefocusSamples(torch.utils.data.Dataset):
    """``length`` samples of :class:`RefocusData` (the same arguments), sample ``i`` seeded by ``(seed, i)``."""

    def __init__(self, length: int, seed: int = 0, **data_kwargs) -> None:
        self.length, self.seed = check_int(length, "length"), int(seed)
        self.data = RefocusData(batch_size=1, seed=seed, **data_kwargs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        self.data.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return self.data.sample()


class _FixedBatches(torch.utils.data.Dataset):
    def __init__(self, batches: List[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _collate(items: List[dict]) -> dict:
    out = unwrap_batch_collate(items)
    out["defocused"] = out["target"]
    return out


class GenRefocusTask(TrainTask):
    """DeblurNet or BokehNet (or a FLUX adapter) on the bridge-matching loss."""

    def __init__(self, net, dataset: torch.utils.data.Dataset, collate=_collate,
                 save_dir: Optional[str] = None) -> None:
        self.net, self._dataset, self._collate, self.save_dir = net, dataset, collate, save_dir
        self.name = type(net).__name__

    def build_model(self):
        return self.net

    def dataset(self):
        return self._dataset

    def collate(self, items):
        return self._collate(items)

    def loss(self, model, batch, generator):
        if isinstance(model, (DeblurNet, BokehNet)):
            loss = bridge_loss(model, batch, generator=generator)
        elif model.task == "bokeh":  # FluxBridgeAdapter
            loss = model.loss(batch["aif"], batch["defocus_map"], target=batch["target"],
                              aperture=batch["aperture"], generator=generator)
        else:
            loss = model.loss(batch["defocused"], target=batch["aif"], generator=generator)
        return loss, {}

    def save(self, model, output_dir: Path) -> None:
        if self.save_dir is None:
            return
        target = output_dir / self.save_dir
        model.save_adapter(target) if hasattr(model, "save_adapter") else model.save_pretrained(target)


def train(net: Union[DeblurNet, BokehNet], data: Union[RefocusData, List[dict]], steps: int, lr: float = 2e-3,
          weight_decay: float = 0.0, seed: int = 0, progress: bool = False,
          callback: Optional[Callable[[int, float], None]] = None, output_dir: Optional[str] = None,
          **loop_args) -> List[float]:
    """Train ``net`` in place for ``steps`` steps of :func:`~lensblur_models.common.train.train_loop`.

    Args:
        net: a :class:`DeblurNet` or :class:`BokehNet`.
        data: a :class:`RefocusData` (its settings; a stream of fresh samples, batches of its
            ``batch_size``) or a list of fixed batches (cycled; e.g. to overfit).
        steps: optimisation steps.  lr: AdamW learning rate (cosine decay).
        seed: seeds the data order and the bridge times and noise.
        progress: show the tqdm bar.  callback: called as ``callback(step, loss)``.
        output_dir: where the loop writes its log and checkpoints (default: a temporary directory).
        loop_args: further :class:`~lensblur_models.common.train.TrainingArgs` (``mixed_precision``,
            ``gradient_accumulation_steps`` ...).

    Returns:
        the training loss of every step.
    """
    if not isinstance(net, (DeblurNet, BokehNet)):
        raise TypeError(f"`net` must be a DeblurNet or a BokehNet, got {type(net).__name__}")
    check_int(steps, "steps")
    if isinstance(data, RefocusData):
        batch_size = data.batch_size
        dataset = RefocusSamples(max(steps * batch_size, batch_size) * 4, seed=seed, height=data.height,
                                 width=data.width, max_coc_px=data.max_coc_px, scene=data.scene, method=data.method,
                                 gamma=data.gamma, random_apertures=data.random_apertures, backend=data.backend)
        collate = _collate
    elif isinstance(data, list) and data:
        batch_size, dataset, collate = 1, _FixedBatches(data), (lambda items: items[0])
    else:
        raise LensBlurError("`data` must be a RefocusData or a non-empty list of batches")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(output_dir=output_dir or tmp, max_steps=steps, batch_size=batch_size, learning_rate=lr,
                            weight_decay=weight_decay, lr_scheduler="cosine", seed=seed, log_every=max(1, steps),
                            **loop_args)
        cb = None if callback is None else (lambda step, m: callback(step - 1, m["loss"]))
        summary = train_loop(GenRefocusTask(net, dataset, collate), args, progress=progress, callback=cb)
    return summary["losses"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lensblur_models.genrefocus.train",
                                description="Train DeblurNet or BokehNet on data rendered on the fly.")
    add_training_args(p, max_steps=400, batch_size=8, learning_rate=2e-3, lr_scheduler="cosine", log_every=25)
    p.add_argument("--net", choices=("deblur", "bokeh"), required=True)
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="tiny")
    p.add_argument("--size", type=int, default=32, help="training image side in pixels")
    p.add_argument("--max-coc", type=float, default=6.0, help="largest blur diameter in the data (px)")
    p.add_argument("--flux", default=None, help="local FLUX checkpoint: train LoRA on its transformer instead")
    p.add_argument("--flux-subfolder", default="transformer")
    p.add_argument("--lora-rank", type=int, default=16)
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv``, train, save ``OUT/deblurnet`` / ``OUT/bokehnet`` (or ``OUT/adapter``)."""
    ns = build_parser().parse_args(argv)
    if ns.flux:
        from .flux import FluxBridgeAdapter

        net = FluxBridgeAdapter.from_pretrained(ns.flux, subfolder=ns.flux_subfolder or None, task=ns.net,
                                                lora_rank=ns.lora_rank, max_coc_px=ns.max_coc,
                                                torch_dtype=torch.bfloat16)
        save_dir = "adapter"
    elif ns.net == "deblur":
        net, save_dir = DeblurNet.from_config(DeblurNetConfig.preset(ns.preset)), "deblurnet"
    else:
        net, save_dir = BokehNet.from_config(BokehNetConfig.preset(ns.preset, max_coc_px=ns.max_coc)), "bokehnet"
    args = TrainingArgs.from_namespace(ns)
    dataset = RefocusSamples(max(args.max_steps * args.batch_size * args.gradient_accumulation_steps, 1) * 8,
                             seed=ns.seed, height=ns.size, width=ns.size, max_coc_px=ns.max_coc)
    return train_loop(GenRefocusTask(net, dataset, save_dir=save_dir), args)


if __name__ == "__main__":
    main()
