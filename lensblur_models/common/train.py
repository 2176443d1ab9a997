"""The one training loop of ``lensblur_models``, on Accelerate.

Every family hands :func:`train_loop` a :class:`TrainTask` (what to build, which data, which loss,
how to save) and gets the same loop:

* one process or many: ``python -m ...`` or ``accelerate launch [--multi_gpu] --num_processes N
  -m ...`` (DDP; NCCL on GPUs, gloo on CPUs), or an FSDP config file for FLUX-size backbones
  (``accelerate launch --config_file examples/accelerate/fsdp_flux.yaml ...``; the checkpoints
  are then Accelerate's sharded FSDP ones and the final trainable weights are gathered into
  ``OUT/trainable.safetensors``);
* ``--mixed-precision bf16|fp16`` (autocast; the trainable weights stay fp32);
* ``--gradient-checkpointing`` (``model.enable_gradient_checkpointing()``);
* ``--gradient-accumulation-steps`` (``accelerator.accumulate``);
* an LR schedule with warm-up (``diffusers.optimization.get_scheduler``: ``--lr-scheduler``,
  ``--lr-warmup-steps``) on AdamW over the parameters that require grad (LoRA by default for
  pretrained backbones: the tasks freeze the rest);
* ``--use-ema`` (``diffusers.training_utils.EMAModel`` of the trainable weights, copied into the
  model before the final save);
* ``--checkpointing-steps N``: ``accelerator.save_state`` every N steps to
  ``OUT/checkpoints/checkpoint-STEP`` (only the trainable tensors of the model, plus optimiser,
  scheduler, EMA and RNG states), ``--checkpoints-total-limit``; ``--resume latest|PATH``
  continues from one (``accelerator.load_state``) and reproduces the uninterrupted run;
* a tqdm bar on the main process, ``OUT/log.jsonl`` (losses averaged over processes) and,
  with ``--report-to tensorboard`` (needs the ``tensorboard`` package), TensorBoard logs.

Determinism: the data of sample ``i`` is a function of ``(seed, i)`` (the tasks' datasets
render or read it on demand, in ``--num-workers`` worker processes), the sampler is Accelerate's
seedable one, and the loss randomness of micro-step ``k`` on rank ``r`` comes from a generator
seeded by ``(seed, k, r)``; so a resumed run sees exactly the batches and noise of an
uninterrupted one.

Example (the tiny refocusing DiT for three steps)::

    python -m lensblur_models.refocus_dit.train --out runs/x --max-steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from lensblur import LensBlurError

__all__ = ["TrainTask", "TrainingArgs", "train_loop", "add_training_args", "latest_checkpoint",
           "unwrap_batch_collate"]

_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclasses.dataclass
class TrainingArgs:
    """Settings of :func:`train_loop` (each is a ``--flag`` of :func:`add_training_args`).

    Attributes:
        output_dir: where ``log.jsonl``, ``checkpoints/`` and the task's final save go.
        max_steps: optimiser steps.  batch_size: samples per process per micro-step.
        learning_rate, weight_decay, adam_beta1, adam_beta2: AdamW.
        lr_scheduler, lr_warmup_steps: ``diffusers.optimization.get_scheduler`` name and warm-up.
        gradient_accumulation_steps: micro-steps per optimiser step.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``.
        gradient_checkpointing: recompute activations in the backward pass.
        max_grad_norm: gradient clipping (0 = off).
        use_ema, ema_decay: EMA of the trainable weights.
        checkpointing_steps: save the training state every N steps (0 = never).
        checkpoints_total_limit: keep at most this many checkpoints (``None`` = all).
        resume: ``"latest"`` or a checkpoint directory.
        log_every: log (and print) every N steps.
        report_to: ``None`` or ``"tensorboard"``.
        seed: seeds initialisation, data order and loss noise.
        num_workers: data-loader worker processes.
        cpu: force the CPU even when a GPU is visible.
        threads: torch CPU threads per process (``None`` = torch's default).
    """

    output_dir: str
    max_steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    use_ema: bool = False
    ema_decay: float = 0.999
    checkpointing_steps: int = 0
    checkpoints_total_limit: Optional[int] = None
    resume: Optional[str] = None
    log_every: int = 25
    report_to: Optional[str] = None
    seed: int = 0
    num_workers: int = 0
    cpu: bool = False
    threads: Optional[int] = None

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LensBlurError(f"`{name}` must be a positive int, got {v!r}")
        for name in ("lr_warmup_steps", "checkpointing_steps", "num_workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise LensBlurError(f"`{name}` must be an int >= 0, got {v!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise LensBlurError(f"`mixed_precision` must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.report_to not in (None, "tensorboard"):
            raise LensBlurError(f"`report_to` must be None or 'tensorboard', got {self.report_to!r}")
        if not self.learning_rate > 0:
            raise LensBlurError(f"`learning_rate` must be > 0, got {self.learning_rate}")

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace, **overrides) -> "TrainingArgs":
        """The loop's settings from parsed :func:`add_training_args` flags (``--out`` = output_dir)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(ns).items() if k in names}
        values["output_dir"] = ns.out
        values.update(overrides)
        return cls(**values)


def add_training_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """Add the loop's flags to ``parser`` (``defaults`` overrides e.g. ``learning_rate=2e-3``)."""
    d = {f.name: f.default for f in dataclasses.fields(TrainingArgs) if f.name != "output_dir"}
    d.update(defaults)
    g = parser.add_argument_group("training loop (lensblur_models.common.train)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--max-steps", "--steps", dest="max_steps", type=int, default=d["max_steps"],
                   help="optimiser steps")
    g.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=d["batch_size"],
                   help="samples per process per micro-step")
    g.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, default=d["learning_rate"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--lr-scheduler", default=d["lr_scheduler"],
                   help="diffusers.optimization.get_scheduler name: constant, constant_with_warmup, "
                        "linear, cosine, ...")
    g.add_argument("--lr-warmup-steps", type=int, default=d["lr_warmup_steps"])
    g.add_argument("--gradient-accumulation-steps", type=int, default=d["gradient_accumulation_steps"])
    g.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=d["mixed_precision"])
    g.add_argument("--gradient-checkpointing", action="store_true", default=d["gradient_checkpointing"])
    g.add_argument("--max-grad-norm", type=float, default=d["max_grad_norm"], help="0 = no clipping")
    g.add_argument("--use-ema", action="store_true", default=d["use_ema"])
    g.add_argument("--ema-decay", type=float, default=d["ema_decay"])
    g.add_argument("--checkpointing-steps", type=int, default=d["checkpointing_steps"],
                   help="save the training state every N steps (0 = never)")
    g.add_argument("--checkpoints-total-limit", type=int, default=d["checkpoints_total_limit"])
    g.add_argument("--resume", default=d["resume"], help="'latest' or a checkpoint directory")
    g.add_argument("--log-every", type=int, default=d["log_every"])
    g.add_argument("--report-to", choices=("tensorboard",), default=d["report_to"])
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--num-workers", type=int, default=d["num_workers"], help="data-loader workers")
    g.add_argument("--cpu", action="store_true", default=d["cpu"], help="force the CPU")
    g.add_argument("--threads", type=int, default=d["threads"], help="torch CPU threads per process")
    return parser


class TrainTask:
    """What a family gives :func:`train_loop`; subclass and override the methods.

    ``build_model`` returns the network to train (frozen parts already have
    ``requires_grad=False``); ``dataset`` a map-style dataset whose item ``i`` depends only on
    ``i`` and the task's seed; ``loss`` the differentiable loss of one batch (the network, not
    a DDP wrapper, is passed: the loop runs ``loss`` inside the wrapper's forward) and float
    metrics; ``save`` the final export (on the main process).  ``helpers`` are frozen
    modules the loss needs (a VAE codec, a depth estimator) that the loop moves to the device.
    """

    name = "lensblur"

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def dataset(self) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def collate(self, items: List[Any]) -> Any:
        """Batch items (default: ``torch.utils.data.default_collate``)."""
        return torch.utils.data.default_collate(items)

    def helpers(self) -> Dict[str, nn.Module]:
        return {}

    def param_groups(self, net: nn.Module, learning_rate: float) -> List[Dict[str, Any]]:
        """AdamW parameter groups (default: every parameter that requires grad, at ``learning_rate``)."""
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": learning_rate}]

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def save(self, model: nn.Module, output_dir: Path) -> None:
        raise NotImplementedError


class _TaskModule(nn.Module):
    """The network with its task's loss as ``forward``: DDP / FSDP wrap this, so every loss (a
    sampler's bridge loss, a pipeline's training step) runs inside the wrapper's forward."""

    def __init__(self, task: TrainTask, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._task = task

    def forward(self, batch, generator):
        return self._task.loss(self.net, batch, generator)


def unwrap_batch_collate(items: List[Any]) -> Any:
    """Collate for datasets whose items are already batches of one: concatenate along dim 0."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(items)
    if isinstance(first, dict):
        return {k: unwrap_batch_collate([it[k] for it in items]) for k in first}
    if dataclasses.is_dataclass(first):
        return type(first)(**{f.name: unwrap_batch_collate([getattr(it, f.name) for it in items])
                              for f in dataclasses.fields(first)})
    if isinstance(first, list):
        return [x for it in items for x in it]
    return items


def latest_checkpoint(output_dir) -> Optional[Path]:
    """The ``checkpoint-STEP`` directory with the largest step under ``OUT/checkpoints``, or None."""
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := _CKPT.match(p.name))] \
        if root.is_dir() else []
    return max(found)[1] if found else None


def _trainable_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k in names}


def _noise_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step * 1009 + rank) % (2 ** 63))


def train_loop(task: TrainTask, args: TrainingArgs, progress: bool = True,
               callback: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Dict[str, Any]:
    """Train ``task`` with the settings ``args`` (see the module docstring).

    Args:
        task: the family's :class:`TrainTask`.
        args: :class:`TrainingArgs`.
        progress: show the tqdm bar (main process only).
        callback: called on the main process as ``callback(step, metrics)`` after each step.

    Returns:
        this process's summary: ``step``, ``losses`` (per step, averaged over processes),
        ``final`` (last metrics), ``world_size``, ``rank``, ``param_checksum`` (sum of the
        trainable weights) and ``seconds``; also written to ``OUT/rank{r}.json``.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from safetensors.torch import load_file, save_file

    if not isinstance(task, TrainTask):
        raise TypeError(f"`task` must be a TrainTask, got {type(task).__name__}")
    if not isinstance(args, TrainingArgs):
        raise TypeError(f"`args` must be a TrainingArgs, got {type(args).__name__}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    if args.report_to == "tensorboard":
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise LensBlurError("`report_to='tensorboard'` needs the tensorboard package (pip install tensorboard)")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=args.report_to, cpu=args.cpu or not torch.cuda.is_available(),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    rank, world = accelerator.process_index, accelerator.num_processes
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)  # same initialisation on every process
    net = task.build_model()
    if args.gradient_checkpointing:
        if not hasattr(net, "enable_gradient_checkpointing"):
            raise LensBlurError(f"{type(net).__name__} does not support gradient checkpointing")
        net.enable_gradient_checkpointing()
    model = _TaskModule(task, net)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise LensBlurError(f"{type(net).__name__} has no trainable parameters")
    if any(p.dtype != torch.float32 for p in trainable):
        raise LensBlurError("trainable weights must be fp32 (mixed precision keeps them so); "
                            "load frozen backbones in bf16 and keep adapters fp32")
    groups = task.param_groups(net, args.learning_rate)
    if sum(len(g["params"]) for g in groups) != len(trainable):
        raise LensBlurError("`param_groups` must cover every trainable parameter exactly once")
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.weight_decay)
    # a prepared scheduler steps once per process per optimiser step (diffusers' convention)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * world,
                              num_training_steps=args.max_steps * world)
    loader = torch.utils.data.DataLoader(
        task.dataset(), batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=task.collate,
        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(args.seed))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if len(loader) == 0:
        raise LensBlurError("the dataset is smaller than one batch per process")
    for helper in task.helpers().values():  # frozen modules the loss uses (moved in place)
        helper.to(accelerator.device)
    ema = None
    if args.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([p for p in model.parameters() if p.requires_grad], decay=args.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # checkpoints hold only the trainable tensors of the model (a frozen 12 B backbone is not
    # copied); under FSDP the parameters are sharded and Accelerate's own FSDP saving is used
    from accelerate.utils import DistributedType

    fsdp = accelerator.distributed_type == DistributedType.FSDP

    def save_hook(models, weights, output_dir):
        if fsdp:
            return
        for i, m in enumerate(models):
            save_file(_trainable_state(accelerator.unwrap_model(m)), str(Path(output_dir) / f"trainable_{i}.safetensors"))
        weights.clear()

    def load_hook(models, input_dir):
        if fsdp:
            return
        for i in range(len(models)):
            m = models.pop()
            state = load_file(str(Path(input_dir) / f"trainable_{len(models)}.safetensors"))
            missing = set(_trainable_state(accelerator.unwrap_model(m))) - set(state)
            if missing:
                raise LensBlurError(f"checkpoint {input_dir} lacks trainable tensors {sorted(missing)[:3]}")
            accelerator.unwrap_model(m).load_state_dict(state, strict=False)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    step = 0
    if args.resume:
        path = latest_checkpoint(out) if args.resume == "latest" else Path(args.resume)
        if path is None or not path.is_dir():
            raise LensBlurError(f"`resume` {args.resume!r}: no checkpoint found (looked in {out / 'checkpoints'})")
        accelerator.load_state(str(path))
        step = int(_CKPT.match(path.name).group(1))
    if args.report_to:
        accelerator.init_trackers(task.name, config={k: v for k, v in dataclasses.asdict(args).items()
                                                     if isinstance(v, (int, float, str, bool))})

    log = open(out / "log.jsonl", "a" if args.resume else "w") if accelerator.is_main_process else None
    bar = None
    if progress and accelerator.is_local_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=args.max_steps, initial=step, desc=f"train {task.name}")
    accum = args.gradient_accumulation_steps
    micro = step * accum
    epoch, skip = divmod(micro, len(loader))
    losses: List[float] = []
    metrics: Dict[str, float] = {}
    t0 = time.time()
    model.train()
    while step < args.max_steps:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, metrics = model(batch, _noise_generator(args.seed, micro, rank))
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.step([p for p in model.parameters() if p.requires_grad])
            mean = accelerator.reduce(loss.detach().float().reshape(1), reduction="mean")
            losses.append(float(mean))
            metrics = {**metrics, "loss": float(mean), "lr": scheduler.get_last_lr()[0]}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4g}")
            if step % args.log_every == 0 or step == args.max_steps:
                if log is not None:
                    log.write(json.dumps({"step": step, **metrics, "seconds": round(time.time() - t0, 2)}) + "\n")
                    log.flush()
                if args.report_to:
                    accelerator.log(metrics, step=step)
            if callback is not None and accelerator.is_main_process:
                callback(step, metrics)
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                _save_checkpoint(accelerator, out, step, args.checkpoints_total_limit)
            if step >= args.max_steps:
                break
        epoch += 1
    if bar is not None:
        bar.close()
    if log is not None:
        log.close()
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model).net
    if ema is not None:
        ema.copy_to([p for p in unwrapped.parameters() if p.requires_grad])
    unwrapped.eval()
    if fsdp:  # gather the full weights; the trainable ones are written next to the output
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        state = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            save_file({k: v.contiguous().cpu() for k, v in state.items() if k in names},
                      str(out / "trainable.safetensors"))
    elif accelerator.is_main_process:
        task.save(unwrapped, out)
    checksum = float(sum(p.detach().double().sum() for p in unwrapped.parameters() if p.requires_grad))
    summary = {"step": step, "losses": losses, "final": metrics, "world_size": world, "rank": rank,
               "param_checksum": checksum, "seconds": round(time.time() - t0, 2)}
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    accelerator.end_training()
    if world == 1:  # let a later loop in this process choose another precision (accelerate's test idiom)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return summary


def _save_checkpoint(accelerator, out: Path, step: int, total_limit: Optional[int]) -> None:
    root = out / "checkpoints"
    if accelerator.is_main_process and total_limit is not None:
        found = sorted((int(m.group(1)), p) for p in root.glob("checkpoint-*") if (m := _CKPT.match(p.name))) \
            if root.is_dir() else []
        for _, p in found[: max(0, len(found) - total_limit + 1)]:
            shutil.rmtree(p)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(root / f"checkpoint-{step}"))
