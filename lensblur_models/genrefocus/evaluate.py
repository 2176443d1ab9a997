"""Evaluation of refocusing: PSNR plus a perceptual metric, on a held-out synthetic set.

Perceptual metric, in order of preference:

1. ``"lpips"`` — LPIPS (AlexNet) from the ``lpips`` package, else from ``torchmetrics``; lower is
   better.  Both need their backbone weights available locally; if importing or building the
   metric fails (package missing, no weights, no network) the next option is used.
2. ``"ssim"`` — the documented fallback: mean structural similarity
   (:func:`kornia.metrics.ssim`, Gaussian window of 7 px, or the largest odd size that fits a tiny
   image), computed on values clipped to ``[0, 1]``; higher is better.  Deterministic.

The result dict always says which was used under ``"perceptual_metric"``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import torch

from lensblur import LensBlurError, ThinLens

from ..defocus_map import blur_strength_from_lens
from ..common.checks import check_pair, check_tensor4
from .data import RefocusData, random_aperture, random_scene
from .pipeline import refocus

__all__ = ["psnr", "perceptual_metric", "image_metrics", "make_refocus_set", "evaluate_refocus"]

_LPIPS_CACHE: dict = {}


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, dB: ``10 log10(range^2 / MSE)`` (``(B,)``).

    Example:
        >>> a = torch.zeros(1, 3, 4, 4)
        >>> round(float(psnr(a + 0.1, a)), 4)
        20.0
    """
    check_tensor4(pred, "pred")
    check_tensor4(target, "target")
    if pred.shape != target.shape:
        raise LensBlurError(f"`pred` {tuple(pred.shape)} and `target` {tuple(target.shape)} must have the same shape")
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(1).clamp_min(1e-20)
    return (10.0 * torch.log10(data_range ** 2 / mse)).to(pred.dtype)


def _lpips_fn() -> Optional[Callable]:
    """An LPIPS callable if one can be built offline, else None (cached)."""
    if "fn" in _LPIPS_CACHE:
        return _LPIPS_CACHE["fn"]
    fn = None
    try:
        import lpips  # type: ignore

        net = lpips.LPIPS(net="alex", verbose=False).eval()
        fn = lambda a, b: net(a * 2 - 1, b * 2 - 1).flatten()  # noqa: E731
    except Exception:
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # type: ignore

            m = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="none")
            fn = lambda a, b: m(a, b).flatten()  # noqa: E731
        except Exception:
            fn = None
    _LPIPS_CACHE["fn"] = fn
    return fn


def perceptual_metric(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, object]:
    """``{"perceptual_metric": "lpips" | "ssim", <name>: (B,) tensor}`` (see module docs).

    Example:
        >>> x = torch.rand(2, 3, 16, 16)
        >>> r = perceptual_metric(x, x)
        >>> r["perceptual_metric"] in ("lpips", "ssim")
        True
    """
    check_tensor4(pred, "pred")
    check_tensor4(target, "target")
    p, t = pred.clamp(0, 1).float(), target.clamp(0, 1).float()
    fn = _lpips_fn()
    if fn is not None and p.shape[1] == 3:
        with torch.no_grad():
            return {"perceptual_metric": "lpips", "lpips": fn(p, t).detach()}
    import kornia

    win = min(7, min(p.shape[-2:]))
    win = win if win % 2 else win - 1
    if win < 3:
        raise LensBlurError(f"images of size {tuple(p.shape[-2:])} are too small for SSIM (need >= 3 px)")
    ssim = kornia.metrics.ssim(p, t, window_size=win, max_val=1.0).flatten(1).mean(1)
    return {"perceptual_metric": "ssim", "ssim": ssim.detach()}


def image_metrics(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, object]:
    """Mean PSNR (dB) and the perceptual metric over a batch, as Python floats.

    Returns:
        ``{"psnr": float, "perceptual_metric": "lpips"|"ssim", "lpips"|"ssim": float,
        "num_images": int}``.
    """
    check_pair(pred, target, "pred", "target")
    per = perceptual_metric(pred, target)
    name = per["perceptual_metric"]
    return {"psnr": float(psnr(pred.clamp(0, 1), target.clamp(0, 1)).mean()), "perceptual_metric": name,
            name: float(per[name].mean()), "num_images": int(pred.shape[0])}


def make_refocus_set(num: int, height: int = 32, width: int = 32, max_coc_px: float = 6.0,
                     seed: int = 1234, method: Optional[str] = None, gamma: float = 2.2) -> List[dict]:
    """A held-out refocusing set: each item is one scene shot twice with different focus.

    Item keys: ``input`` (``(1, 3, H, W)`` photo focused on one pixel), ``target`` (the same
    scene, same lens, focused on ``focus_xy``, a pixel whose disparity differs from the first
    focus by at least 30 % of the scene's disparity range), ``focus_xy`` ``(x, y)``, ``K`` (0-d, pixels per
    1/m), ``aperture``, ``aif``, ``disparity`` (``1 / depth``, for an oracle depth estimator).
    """
    data = RefocusData(height, width, batch_size=1, max_coc_px=max_coc_px, seed=seed, method=method,
                       gamma=gamma)
    import lensblur

    gen = data.generator
    items = []
    for _ in range(num):
        aif, depth = random_scene(height, width, gen)
        aperture = random_aperture(gen)
        flat = depth.reshape(-1)
        i0, i1 = _two_focus_pixels(1.0 / flat, gen)
        lens0 = _scaled_lens(depth, float(flat[i0]), max_coc_px)
        lens1 = ThinLens(lens0.focal_length_mm, lens0.f_number, float(flat[i1]))
        shot = lambda lens: lensblur.render(aif, depth, lens, aperture, method=data.method,  # noqa: E731
                                            gamma=gamma).clamp(0, 1)
        items.append(dict(input=shot(lens0), target=shot(lens1), focus_xy=(i1 % width, i1 // width),
                          K=blur_strength_from_lens(lens1, width).float(), aperture=aperture, aif=aif,
                          disparity=1.0 / depth))
    return items


def _two_focus_pixels(disp: torch.Tensor, gen: torch.Generator, min_separation: float = 0.3):
    """Two random pixel indices whose disparities differ by >= ``min_separation`` of the range.

    (Otherwise both shots of a dead-leaves scene often focus on the same large background.)
    """
    i0 = int(torch.randint(disp.numel(), (), generator=gen))
    span = float(disp.max() - disp.min())
    far_enough = ((disp - disp[i0]).abs() >= min_separation * span).nonzero().flatten()
    if span == 0 or far_enough.numel() == 0:
        return i0, int(torch.randint(disp.numel(), (), generator=gen))
    return i0, int(far_enough[int(torch.randint(far_enough.numel(), (), generator=gen))])


def _scaled_lens(depth: torch.Tensor, s1: float, max_coc_px: float) -> ThinLens:
    """A 50 mm lens focused at ``s1`` whose f-number makes the worst coc ``max_coc_px`` at most.

    The worst coc over any focus plane inside the scene's depth range is bounded by the range
    itself, so the same f-number is used for both shots.
    """
    near, far = float(depth.min()), float(depth.max())
    probe = ThinLens(50.0, 1.0, max(near, 0.06))
    worst = float(probe.coc_px(torch.tensor([far], dtype=torch.float64), depth.shape[-1]).max())
    n = max(worst / max_coc_px, 1e-3)
    return ThinLens(50.0, n, max(s1, 0.06))


def evaluate_refocus(items: List[dict], *, deblur: Union[None, str, Callable] = None,
                     bokeh: Optional[Callable] = None, depth_estimator: Optional[Callable] = None,
                     focus_window: int = 1) -> Dict[str, object]:
    """Refocus every item's ``input`` on its ``focus_xy`` and compare with its ``target``.

    ``depth_estimator=None`` uses the item's true disparity and ``deblur="oracle"`` its true
    all-in-focus image, so that one stage can be scored at a time (``deblur=None`` treats the
    input as sharp).  Returns :func:`image_metrics` of the whole set, plus ``"input_psnr"`` (the
    un-refocused input against the target: the score to beat).
    """
    if not items:
        raise LensBlurError("`items` must not be empty")
    if isinstance(deblur, str) and deblur != "oracle":
        raise LensBlurError(f"`deblur` must be a callable, None or 'oracle', got {deblur!r}")
    preds, targets, inputs = [], [], []
    with torch.no_grad():
        for it in items:
            est = depth_estimator or (lambda aif, d=it["disparity"]: d)
            deb = (lambda img, a=it["aif"]: a) if deblur == "oracle" else deblur
            preds.append(refocus(it["input"], it["focus_xy"], it["K"], it["aperture"], depth_estimator=est,
                                 deblur=deb, bokeh=bokeh, focus_window=focus_window))
            targets.append(it["target"])
            inputs.append(it["input"])
    pred, target = torch.cat(preds), torch.cat(targets)
    out = image_metrics(pred, target)
    out["input_psnr"] = float(psnr(torch.cat(inputs), target).mean())
    return out


