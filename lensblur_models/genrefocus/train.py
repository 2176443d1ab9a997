"""A small training loop for :class:`DeblurNet` and :class:`BokehNet` (CPU friendly)."""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Union

import torch

from lensblur import LensBlurError

from ..common.checks import check_int
from .data import RefocusData
from .models import BokehNet, DeblurNet, bridge_loss

__all__ = ["train", "eval_loss"]

Batches = Union[RefocusData, List[dict]]


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


def train(net: Union[DeblurNet, BokehNet], data: Batches, steps: int, lr: float = 2e-3,
          weight_decay: float = 0.0, seed: int = 0, progress: bool = False,
          callback: Optional[Callable[[int, float], None]] = None) -> List[float]:
    """Train ``net`` for ``steps`` AdamW steps on the bridge-matching loss.

    Args:
        net: a :class:`DeblurNet` or :class:`BokehNet` (trained in place).
        data: a :class:`RefocusData` (a fresh batch every step) or a list of fixed batches
            (cycled; e.g. to overfit).
        steps: optimisation steps.  lr: AdamW learning rate (cosine decay to 10 %).
        seed: seeds the bridge times and noise.
        progress: show a tqdm bar.  callback: called as ``callback(step, loss)``.

    Returns:
        the training loss of every step.
    """
    if not isinstance(net, (DeblurNet, BokehNet)):
        raise TypeError(f"`net` must be a DeblurNet or a BokehNet, got {type(net).__name__}")
    check_int(steps, "steps")
    if not isinstance(data, (RefocusData, list)) or (isinstance(data, list) and not data):
        raise LensBlurError("`data` must be a RefocusData or a non-empty list of batches")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.1)
    net.train()
    losses = []
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"train {type(net).__name__}")
    for step in it:
        batch = data.batch() if isinstance(data, RefocusData) else data[step % len(data)]
        loss = bridge_loss(net, batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            it.set_postfix(loss=f"{losses[-1]:.4g}")
        if callback is not None:
            callback(step, losses[-1])
    net.eval()
    return losses
