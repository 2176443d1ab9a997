"""The two classical approaches a user would otherwise write, used as baselines in every run.

* :func:`mpi_conv_blur` — a multi-plane (MPI-style) layered blur built from ordinary
  ``conv2d`` calls: quantise the coc into depth planes, convolve each plane's premultiplied
  colour and its alpha with the aperture kernel of that plane's size, composite back to front.
* :func:`tap_gather` — a plain tiled tap-loop gather in C++ (``benchmarks/csrc/tap_gather.cpp``,
  float32 disk, forward only): the O(radius^2) way the native gather worked before its O(radius)
  span kernels, the baseline of ``benchmarks/native_spans.py``.
* :func:`naive_gather` — a per-pixel gather over the *fixed* full max-radius square window
  (no culling of empty offsets, no tiling), written with plain tensor ops and differentiated by
  autograd, the way the "plain PyTorch offset-loop gather" of ``shared/ANCHORS.md`` is written.

Both are differentiable w.r.t. ``image`` (and :func:`naive_gather` w.r.t. ``coc``), so the
forward+backward rows compare like with like.  Neither is part of the library.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from lensblur import Aperture

__all__ = ["mpi_conv_blur", "naive_gather", "naive_gather_bytes", "tap_gather", "DEFAULT_PLANES"]

DEFAULT_PLANES = 16


def mpi_conv_blur(image: torch.Tensor, signed_coc: torch.Tensor, aperture: Optional[Aperture] = None,
                  num_planes: int = DEFAULT_PLANES) -> torch.Tensor:
    """Multi-plane blur: ``num_planes`` depth planes, one ``conv2d`` per plane, over-compositing.

    Args:
        image: ``(B, C, H, W)`` linear radiance.
        signed_coc: ``(B, 1, H, W)`` signed coc diameter in pixels (negative = nearer than the
            focus plane), which orders the planes: the most positive (farthest) is composited
            first.
        aperture: kernel shape (``None`` = disk); each plane uses ``aperture.kernel(|coc_k|)``.
        num_planes: number of planes; the coc range is cut into equal bins and each bin is
            blurred with the kernel of its centre.

    Returns:
        ``(B, C, H, W)`` blurred image, ``sum_k C_k prod_{j nearer} (1 - A_j)`` divided by the
        total coverage (so a constant image stays constant).
    """
    if aperture is None:
        aperture = Aperture.disk()
    b, c, h, w = image.shape
    lo, hi = float(signed_coc.detach().min()), float(signed_coc.detach().max())
    span = max(hi - lo, 1e-6)
    idx = ((signed_coc - lo) / span * num_planes).floor().clamp(0, num_planes - 1)
    rgba = torch.cat([image, torch.ones_like(signed_coc)], 1)
    out = torch.zeros_like(rgba)
    for k in reversed(range(num_planes)):            # farthest (largest signed coc) first
        mask = (idx == k).to(image.dtype)
        if not bool(mask.any()):
            continue
        centre = lo + (k + 0.5) * span / num_planes
        kern = aperture.kernel(abs(centre)).to(dtype=image.dtype, device=image.device)
        kh, kw = kern.shape
        plane = rgba * mask
        weight = kern.expand(c + 1, 1, kh, kw)
        blurred = F.conv2d(plane, weight, padding=(kh // 2, kw // 2), groups=c + 1)
        alpha = blurred[:, c:].clamp(0, 1)
        out = blurred + (1 - alpha) * out            # premultiplied "over"
    return out[:, :c] / out[:, c:].clamp_min(1e-6)


def _disk_weight(dx: int, dy: int, coc: torch.Tensor) -> torch.Tensor:
    return (coc * 0.5 + 0.5 - math.hypot(dx, dy)).clamp(0, 1)


def naive_gather(image: torch.Tensor, coc: torch.Tensor, aperture: Optional[Aperture] = None
                 ) -> torch.Tensor:
    """Per-pixel gather over the full ``(2R+1)^2`` window of the largest coc, autograd backward.

    Weights are the library's soft disk ``clamp(c/2 + 1/2 - |d|, 0, 1)`` (or ``aperture.weight``
    for other shapes), evaluated for every offset of the square window whatever the local coc.
    Same result as ``lensblur.defocus(method="gather")`` up to rounding; its cost is fixed by
    the largest coc, and autograd stores every offset's intermediates.
    """
    b, c, h, w = image.shape
    r = int(math.ceil(float(coc.detach().max()) / 2 + 0.5))
    ones = torch.ones(1, 1, h, w, dtype=image.dtype, device=image.device)
    img_pad = F.pad(image, (r, r, r, r))
    valid_pad = F.pad(ones, (r, r, r, r))
    num = torch.zeros_like(image)
    den = torch.zeros_like(coc)
    disk = aperture is None or (aperture.kind == "disk" and aperture.squeeze == 1.0
                                and aperture.cats_eye == 0.0)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            wgt = _disk_weight(dx, dy, coc) if disk else aperture.weight(dx, dy, coc)[0]
            wgt = wgt * valid_pad[..., r + dy:r + dy + h, r + dx:r + dx + w]
            num = num + wgt * img_pad[..., r + dy:r + dy + h, r + dx:r + dx + w]
            den = den + wgt
    return num / den


def naive_gather_bytes(shape, max_coc: float, backward: bool) -> int:
    """Rough memory of :func:`naive_gather`: autograd keeps ~``C + 3`` maps per window offset."""
    b, c, h, w = shape
    r = int(math.ceil(max_coc / 2 + 0.5))
    per_offset = (c + 3) * b * h * w * 4 if backward else 0
    return (2 * r + 1) ** 2 * per_offset + 4 * (c + 2) * b * (h + 2 * r) * (w + 2 * r) * 4


_TAP_LIB = None


def _tap_library():
    """Build (once, cached by source hash like the library's kernels) and load tap_gather.cpp."""
    global _TAP_LIB
    if _TAP_LIB is None:
        import ctypes
        import hashlib
        from pathlib import Path

        from torch.utils import cpp_extension

        from lensblur.ops import native as nat

        src = Path(__file__).resolve().parent / "csrc" / "tap_gather.cpp"
        key = hashlib.sha256(src.read_bytes() + nat._build_key(nat.source_paths()).encode()).hexdigest()[:16]
        build_dir = nat._cache_root() / f"tap_gather_{key}"
        build_dir.mkdir(parents=True, exist_ok=True)
        nat._ensure_ninja()
        path = cpp_extension.load(name=f"lensblur_tap_gather_{key}", sources=[str(src)],
                                  extra_cflags=nat._cflags(), build_directory=str(build_dir),
                                  is_python_module=False, verbose=False)
        lib = ctypes.CDLL(str(path))
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.tap_gather_f32.argtypes = [p, p, i, i, i, p, i]
        lib.tap_gather_f32.restype = i
        _TAP_LIB = lib
    return _TAP_LIB


def tap_gather(image: torch.Tensor, coc: torch.Tensor, threads: Optional[int] = None) -> torch.Tensor:
    """Plain tiled tap-loop gather (float32, disk, batch 1, forward only) in C++.

    Same result as ``lensblur.defocus(image, coc, method="gather")`` up to rounding; its cost per
    pixel grows with the square of the local blur radius.
    """
    import ctypes

    if image.dim() != 4 or image.shape[0] != 1 or coc.shape != (1, 1) + image.shape[2:]:
        raise ValueError(f"`image` must be (1, C, H, W) with `coc` (1, 1, H, W), got "
                         f"{tuple(image.shape)} and {tuple(coc.shape)}")
    lib = _tap_library()
    img = image.detach().to(torch.float32).contiguous()
    c = coc.detach().to(torch.float32).contiguous()
    out = torch.empty_like(img)
    _, ch, h, w = img.shape
    n = torch.get_num_threads() if threads is None else threads
    lib.tap_gather_f32(ctypes.c_void_p(img.data_ptr()), ctypes.c_void_p(c.data_ptr()), ch, h, w,
                       ctypes.c_void_p(out.data_ptr()), n)
    return out
