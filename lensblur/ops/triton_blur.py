r"""Triton kernels for the gather and scatter blur operators, forward and backward.

The math is exactly that of :mod:`lensblur.ops.reference` (read it first); this file only
changes *how* the sums are evaluated.  Layout of the file: the ``@triton.jit`` kernels, then
the host launchers (tile sizes, grids, small tile-bound pre-passes), then the operator
registered through :func:`lensblur.ops._wiring.define_defocus_op` and the backend entry
:func:`defocus`.

Design
------
* **One output tile per program, all channels.**  A program owns a ``BY x BX`` tile of one
  image (``16 x 16``, 4 warps on a GPU) and loops over channel chunks of ``BLOCK_C <= 4``
  (one chunk for C <= 4), so the per-pixel aperture weight of a tap is computed once and used
  for every channel.  ``H`` and ``W`` are runtime arguments (not specialised).
* **Tile max-coc culling.**  A pre-pass takes the maximum coc of every tile; a program's
  offset loop only covers the window of *its* tile's largest blur, row by row: for disk and
  polygon apertures (a polygon lies inside the disk of the same radius) row ``dy`` needs
  ``|dx| <= sqrt((R+1/2)^2 - dy^2) / squeeze``; image apertures use their rectangle.
* **Neighbourhood bounds without a host sync.**  Terms that sum over *neighbours' kernels*
  (the gather's image gradient, the scatter forward) need the largest coc of any pixel whose
  footprint can reach the tile.  A tiny kernel dilates the tile-max map: tile ``T'`` counts
  for tile ``T`` when the pixel gap between them fits in the support of ``T'``'s own maximum.
  The global maximum only bounds that search and never leaves the device, so no call
  synchronises with the host.
* **Analytic apertures.**  Disk and polygon weights are ``clamp(R + 1/2 - n(d), 0, 1)``; without
  cat's eye the norm ``n(d)`` is a per-tap scalar, so a tap costs one add and one clamp per
  pixel.  Image apertures sample their small (``(h+2) x (w+2)``) table bilinearly.  Cat's-eye
  vignetting intersects with a per-pixel shifted disk.
* **O(radius) disk path.**  For the disk without cat's eye (any squeeze), tiles whose largest
  coc radius is at least :data:`PREFIX_MIN_RADIUS` px evaluate the gather forward row by row:
  the weight-1 span of each kernel row is two lookups in float64 row prefix sums of the image
  (computed once per call, ``(B, C, H, W + 1)``), and only the one-pixel rim is visited tap by
  tap, with exact weights.  The coc gradient of the gather needs only the rim (``W' = 0``
  inside it), so those tiles visit only the rim there too.  Other tiles, and the terms that
  sum over neighbours' kernels, use the tap loop.
* **Gather backward without atomics** (gather form): ``dL/dI(q) = sum_d W(d; c(q-d), q-d)
  gn(q-d)`` is a gather over neighbours using their own kernels; ``dL/dc(p)`` is a gather over
  ``p``'s own window.  **Scatter forward as scatter-as-gather**: a pre-pass computes ``1/Z(q)``
  per pixel, then each output pixel gathers ``W(d; c(p-d)) / Z(p-d) I(p-d)``.  The **scatter
  backward** is a gather over ``q``'s own window that also accumulates ``Z`` and ``Z'``.
  Nothing anywhere uses atomics, so every result is bitwise deterministic (run to run and
  under ``torch.use_deterministic_algorithms(True)``); there is no separate deterministic mode.
* **Precision.**  fp16/bf16/fp32 images are read in their own dtype and accumulated in fp32;
  fp64 images accumulate in fp64 (every float parameter reaches the kernels through a small
  tensor in the accumulation dtype, never as a 32-bit kernel argument).

CPU and the Triton interpreter
------------------------------
When this module is imported on a machine without CUDA it sets ``TRITON_INTERPRET=1`` (only if
the variable is unset) *before* importing Triton, so the same kernels run on CPU tensors under
the interpreter; that is how CI checks them against the reference.  The interpreter is slow
(about 0.5 ms per program instance), so it is only offered for CPU tensors when it is active
(:func:`is_available`), and ``backend="auto"`` never picks it for CPU tensors.  One pinned
config (no autotuning) is used everywhere, with larger tiles under the interpreter.

Example:
    >>> import torch, lensblur
    >>> img, coc = torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3.0)
    >>> if is_available(img.device):
    ...     out = lensblur.defocus(img, coc, backend="triton")
"""

from __future__ import annotations

import math
import os
import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..apertures import Aperture
from ..validation import LensBlurError
from ._wiring import check_op_inputs, define_defocus_op

__all__ = ["defocus", "is_available", "unavailable_reason", "INTERPRET", "TILE_GPU", "TILE_INTERPRET",
           "PREFIX_MIN_RADIUS"]

name = "triton"

try:  # decide about the interpreter before Triton reads the environment
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except Exception:  # pragma: no cover - a broken CUDA setup must not break ``import lensblur``
    pass

try:
    import triton
    import triton.language as tl
    _TRITON_ERROR: Optional[BaseException] = None
except Exception as exc:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    _TRITON_ERROR = exc

#: True when the kernels run under the Triton interpreter (CPU tensors).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _interpreter_broken() -> Optional[str]:
    """Why ``TRITON_INTERPRET=1`` is set but the interpreter is not really active, else ``None``.

    Triton decides at decoration time whether a ``@triton.jit`` function is interpreted, so if
    ``triton.language`` was imported before the variable was set (by the user's code, or by
    ``torch._dynamo``), its own helpers stay compiled and every interpreted kernel fails."""
    if not INTERPRET or triton is None:
        return None
    try:
        from triton.language import standard
        from triton.runtime.interpreter import InterpretedFunction
        helper = standard.cdiv
    except Exception:  # pragma: no cover - another Triton layout: trust the variable
        return None
    if isinstance(helper, InterpretedFunction):
        return None
    return ("the Triton interpreter is not active: triton was imported before TRITON_INTERPRET=1 "
            "was set; set TRITON_INTERPRET=1 in the environment (or import lensblur before "
            "triton and torch._dynamo) to run the Triton backend on CPU")


#: Why the interpreter cannot run (``None``: it can, or it is not needed).
_INTERPRETER_BROKEN: Optional[str] = _interpreter_broken()

#: ``(BY, BX, num_warps)`` of the output tile on a GPU (16x16 / 4 warps beat larger tiles on H100).
TILE_GPU = (16, 16, 4)
#: ``(BY, BX, num_warps)`` under the interpreter: few, large programs (each costs ~0.5 ms).
TILE_INTERPRET = (16, 32, 1)
#: Channels handled together by one program (the rest loop in chunks of this size).
MAX_BLOCK_C = 4
#: Gather forward with a disk (no cat's eye): tiles whose largest coc *radius* is at least this
#: many pixels use the O(radius) row-prefix-sum path (``None``: never).  Not tuned on a GPU yet.
PREFIX_MIN_RADIUS: Optional[float] = 8.0

# Layout of the per-call parameter tensor (accumulation dtype).
_P_SQUEEZE, _P_ROUND, _P_KAPPA, _P_REACH, _P_HALF_TW, _P_HALF_TH, _P_NORMALS = 0, 1, 2, 3, 4, 5, 8

# =====================================================================================
# Kernels
# =====================================================================================
if triton is not None:

    @triton.jit
    def _positions(x, y, H, W, ACC: tl.constexpr):
        """Cat's-eye frame position ``v`` of pixel ``(x, y)`` (``|v| = 1`` in the corners)."""
        wf = tl.cast(W, ACC)
        hf = tl.cast(H, ACC)
        inv_half_diag = 2.0 / tl.sqrt(wf * wf + hf * hf)
        vx = (x.to(ACC) - 0.5 * (wf - 1.0)) * inv_half_diag
        vy = (y.to(ACC) - 0.5 * (hf - 1.0)) * inv_half_diag
        return vx, vy

    @triton.jit
    def _shape_norm(ex, ey, prm, rnd, KIND: tl.constexpr, BLADES: tl.constexpr):
        """Norm ``n(e)`` of disk / polygon apertures at shape coordinates ``e = (sq dx, dy)``
        (a per-tap scalar: the same for every pixel of the tile)."""
        r = tl.sqrt(ex * ex + ey * ey)
        if KIND == 1:
            # normals are stored pre-scaled by (1 - roundness) / cos(pi / B)
            m = ex * tl.load(prm + 8) + ey * tl.load(prm + 9)
            for k in tl.static_range(1, BLADES):
                m = tl.maximum(m, ex * tl.load(prm + 8 + 2 * k) + ey * tl.load(prm + 9 + 2 * k))
            r = m + rnd * r
        return r

    @triton.jit
    def _weight(dxf, dyf, radius, vx, vy, prm, tab, tab_h, tab_w, sq, rnd, kap, hw1, hh1,
                KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                NEED_DW: tl.constexpr, ACC: tl.constexpr):
        """``(W, dW/dc)`` of offset ``d`` for kernels of radius ``radius`` (one per pixel).

        With ``NEED_DW=False`` (forward passes) the derivative is not computed and the second
        value is ``W`` again (unused by the caller)."""
        ex = dxf * sq
        ey = dyf
        if KIND == 2:
            scale = 1.0 / (radius + 0.5)
            xt = (ex * scale + 1.0) * hw1 + 1.0
            yt = (ey * scale + 1.0) * hh1 + 1.0
            x0f = tl.floor(xt)
            y0f = tl.floor(yt)
            fx = xt - x0f
            fy = yt - y0f
            x0 = x0f.to(tl.int32)
            y0 = y0f.to(tl.int32)
            wp = tab_w + 2
            hp = tab_h + 2
            inx0 = (x0 >= 0) & (x0 < wp)
            inx1 = (x0 >= -1) & (x0 < wp - 1)
            iny0 = (y0 >= 0) & (y0 < hp)
            iny1 = (y0 >= -1) & (y0 < hp - 1)
            base = y0 * wp + x0
            t00 = tl.load(tab + base, mask=iny0 & inx0, other=0.0).to(ACC)
            t01 = tl.load(tab + base + 1, mask=iny0 & inx1, other=0.0).to(ACC)
            t10 = tl.load(tab + base + wp, mask=iny1 & inx0, other=0.0).to(ACC)
            t11 = tl.load(tab + base + wp + 1, mask=iny1 & inx1, other=0.0).to(ACC)
            top = t00 + fx * (t01 - t00)
            bot = t10 + fx * (t11 - t10)
            w = top + fy * (bot - top)
            w = w + ((dxf == 0.0) & (dyf == 0.0)).to(ACC) * 1e-6   # positive mass for all c
            if NEED_DW:
                dval_dx = (1.0 - fy) * (t01 - t00) + fy * (t11 - t10)
                dval_dy = bot - top
                s2 = scale * scale
                dw = 0.5 * (dval_dx * (-hw1 * ex * s2) + dval_dy * (-hh1 * ey * s2))
            else:
                dw = w
        else:
            t = radius + 0.5 - _shape_norm(ex, ey, prm, rnd, KIND, BLADES)
            w = tl.minimum(tl.maximum(t, 0.0), 1.0)
            if NEED_DW:
                dw = tl.where((t > 0.0) & (t < 1.0), 0.5, 0.0).to(ACC)
            else:
                dw = w
        if CATSEYE:
            rx = ex - kap * radius * vx
            ry = ey - kap * radius * vy
            rho = tl.sqrt(tl.maximum(rx * rx + ry * ry, 1e-24))
            t2 = radius + 0.5 - rho
            w2 = tl.minimum(tl.maximum(t2, 0.0), 1.0)
            use2 = w2 < w
            if NEED_DW:
                dt2 = 1.0 + kap * (rx * vx + ry * vy) / tl.maximum(rho, 1e-12)
                dw2 = tl.where((t2 > 0.0) & (t2 < 1.0), 0.5 * dt2, 0.0)
                dw = tl.where(use2, dw2, dw)
                w = tl.where(use2, w2, w)
            else:
                w = tl.where(use2, w2, w)
                dw = w
        return w, dw

    @triton.jit
    def _half_height(rm, reach, H, CLAMP: tl.constexpr):
        """Largest |dy| with weight for kernels of radius <= ``rm`` (clamped to the frame)."""
        ky = tl.floor((rm + 0.5) * reach).to(tl.int32)
        if CLAMP:
            ky = tl.minimum(ky, H - 1)
        return ky

    @triton.jit
    def _half_width(rm, dyf, sq, reach, W, KIND: tl.constexpr, CLAMP: tl.constexpr):
        """Largest |dx| with weight in row ``dy`` for kernels of radius <= ``rm``."""
        if KIND == 2:
            kx = tl.floor((rm + 0.5) * reach / sq).to(tl.int32)
        else:
            e = rm + 0.5
            h2 = tl.maximum(e * e - dyf * dyf, 0.0)
            kx = tl.floor(tl.sqrt(h2) / sq).to(tl.int32)
        if CLAMP:
            kx = tl.minimum(kx, W - 1)
        return kx

    @triton.jit
    def _tile_coords(H, W, BY: tl.constexpr, BX: tl.constexpr):
        pid_t = tl.program_id(0)
        ntx = tl.cdiv(W, BX)
        offs = tl.arange(0, BY * BX)
        y = (pid_t // ntx) * BY + offs // BX
        x = (pid_t % ntx) * BX + offs % BX
        inside = (y < H) & (x < W)
        return pid_t, y, x, inside

    @triton.jit
    def _dilate_kernel(tmax, gmax, tnbr, prm, n_ty, n_tx,
                       BY: tl.constexpr, BX: tl.constexpr, BLOCK_T: tl.constexpr):
        """``tnbr[T] = max tmax[T']`` over tiles ``T'`` whose footprints can reach tile ``T``."""
        b = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        n_t = n_ty * n_tx
        ok = offs < n_t
        ty = offs // n_tx
        tx = offs % n_tx
        base = tmax + b.to(tl.int64) * n_t
        sq = tl.load(prm + 0).to(tl.float32)
        reach = tl.load(prm + 3).to(tl.float32)
        g = 0.5 * tl.load(gmax).to(tl.float32)
        ext = (g + 0.5) * reach
        rty = (tl.floor(ext).to(tl.int32) + BY - 1) // BY
        rtx = (tl.floor(ext / sq).to(tl.int32) + BX - 1) // BX
        best = tl.load(base + offs, mask=ok, other=0.0)
        for j in range(-rty, rty + 1):
            gy = tl.maximum((tl.abs(j) - 1) * BY + 1, 0)
            for i in range(-rtx, rtx + 1):
                gx = tl.maximum((tl.abs(i) - 1) * BX + 1, 0)
                ny = ty + j
                nx = tx + i
                nok = ok & (ny >= 0) & (ny < n_ty) & (nx >= 0) & (nx < n_tx)
                m = tl.load(base + ny * n_tx + nx, mask=nok, other=0.0)
                e = (0.5 * m.to(tl.float32) + 0.5) * reach
                ky = tl.floor(e).to(tl.int32)
                kx = tl.floor(e / sq).to(tl.int32)
                hit = nok & (gy <= ky) & (gx <= kx)
                best = tl.where(hit, tl.maximum(best, m), best)
        tl.store(tnbr + b.to(tl.int64) * n_t + offs, best, mask=ok)

    @triton.jit
    def _gather_rows_direct(img_c, cm, y, x, inside, radius, vx, vy, rm, prm, tab, tab_h, tab_w,
                            sq, rnd, kap, reach, hw1, hh1, H, W,
                            KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                            BLOCK_C: tl.constexpr, NPIX: tl.constexpr, ACC: tl.constexpr,
                            DERIV: tl.constexpr = False):
        """``(num, den) = (sum_d W valid I(p+d), sum_d W valid)`` over p's own window, one tap
        at a time; with ``DERIV`` the same sums of ``W' = dW/dc`` (the gather's coc gradient)."""
        num = tl.zeros([BLOCK_C, NPIX], dtype=ACC)
        den = tl.zeros([NPIX], dtype=ACC)
        ky = _half_height(rm, reach, H, True)
        for dy in range(-ky, ky + 1):
            dyf = tl.cast(dy, ACC)
            kx = _half_width(rm, dyf, sq, reach, W, KIND, True)
            ys = y + dy
            row_ok = inside & (ys >= 0) & (ys < H)
            row_c = img_c + (ys * W)[None, :]
            for dx in range(-kx, kx + 1):
                dxf = tl.cast(dx, ACC)
                xs = x + dx
                ok = row_ok & (xs >= 0) & (xs < W)
                w, dw = _weight(dxf, dyf, radius, vx, vy, prm, tab, tab_h, tab_w, sq, rnd,
                                kap, hw1, hh1, KIND, BLADES, CATSEYE, DERIV, ACC)
                if DERIV:
                    w = dw
                w = tl.where(ok, w, 0.0)
                v = tl.load(row_c + xs[None, :], mask=cm & ok[None, :], other=0.0).to(ACC)
                num += w[None, :] * v
                den += w
        return num, den

    @triton.jit
    def _disk_row_spans(radius, dyf, sq):
        """Per pixel, in kernel row ``dy`` of a disk of radius ``radius``: taps with
        ``|dx| <= a`` have weight exactly 1, taps with ``a < |dx| <= b`` form the soft rim
        (``a = -1``: no weight-1 taps; ``b = -1``: the row is empty)."""
        e_in = radius - 0.5
        e_out = radius + 0.5
        h_in = e_in * e_in - dyf * dyf
        h_out = e_out * e_out - dyf * dyf
        a = tl.where((e_in >= 0.0) & (h_in >= 0.0),
                     tl.floor(tl.sqrt(tl.maximum(h_in, 0.0)) / sq).to(tl.int32), -1)
        b = tl.where(h_out > 0.0, tl.floor(tl.sqrt(tl.maximum(h_out, 0.0)) / sq).to(tl.int32), -1)
        return a, b

    @triton.jit
    def _gather_rows_prefix(img_c, pre_c, cm, y, x, inside, radius, rm, sq, H, W,
                            BLOCK_C: tl.constexpr, NPIX: tl.constexpr, ACC: tl.constexpr):
        """``(num, den)`` of the disk gather in O(radius) per pixel: per kernel row, the
        weight-1 span is two lookups in the row prefix sums ``pre`` (float64, ``W + 1`` per
        row) and only the rim taps are visited one by one."""
        num = tl.zeros([BLOCK_C, NPIX], dtype=ACC)
        den = tl.zeros([NPIX], dtype=ACC)
        ky = _half_height(rm, 1.0, H, True)
        e_out = radius + 0.5
        for dy in range(-ky, ky + 1):
            dyf = tl.cast(dy, ACC)
            ys = y + dy
            row_ok = inside & (ys >= 0) & (ys < H)
            a, b = _disk_row_spans(radius, dyf, sq)
            # the weight-1 span [x - a, x + a], cut by the frame
            lo = tl.maximum(x - a, 0)
            hi = tl.minimum(x + a, W - 1)
            has = row_ok & (a >= 0) & (hi >= lo)
            pre_row = pre_c + (ys * (W + 1))[None, :]
            s_hi = tl.load(pre_row + (hi + 1)[None, :], mask=cm & has[None, :], other=0.0)
            s_lo = tl.load(pre_row + lo[None, :], mask=cm & has[None, :], other=0.0)
            num += (s_hi - s_lo).to(ACC)
            den += tl.where(has, (hi - lo + 1).to(ACC), 0.0)
            # the rim a < |dx| <= b, both sides, exact weights
            row_c = img_c + (ys * W)[None, :]
            n_rim = tl.max(tl.where(row_ok, b - a, 0), axis=0)
            for k in range(0, n_rim):
                dxr = a + 1 + k
                on = row_ok & (dxr <= b)
                ex = sq * dxr.to(ACC)
                w = tl.minimum(tl.maximum(e_out - tl.sqrt(ex * ex + dyf * dyf), 0.0), 1.0)
                xr = x + dxr
                ok_r = on & (xr < W)
                w_r = tl.where(ok_r, w, 0.0)
                v = tl.load(row_c + xr[None, :], mask=cm & ok_r[None, :], other=0.0).to(ACC)
                num += w_r[None, :] * v
                xl = x - dxr
                ok_l = on & (dxr > 0) & (xl >= 0)           # dx = 0 is counted once
                w_l = tl.where(ok_l, w, 0.0)
                v = tl.load(row_c + xl[None, :], mask=cm & ok_l[None, :], other=0.0).to(ACC)
                num += w_l[None, :] * v
                den += w_r + w_l
        return num, den

    @triton.jit
    def _gather_fwd_kernel(img, pre, coc, tmax, prm, tab, out, den_out, C, H, W, tab_h, tab_w,
                           KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                           PREFIX: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr,
                           BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """out(p) = sum_d W(d; c(p), p) valid I(p+d) / den(p),  den(p) = sum_d W valid.

        ``PREFIX`` (disk without cat's eye): tiles whose largest radius reaches
        ``prm[6]`` px use the O(radius) row-prefix-sum path, the others the tap loop."""
        pid_t, y, x, inside = _tile_coords(H, W, BY, BX)
        b = tl.program_id(1)
        hw = H * W
        n_t = tl.cdiv(H, BY) * tl.cdiv(W, BX)
        img_b = img + b.to(tl.int64) * C * hw
        out_b = out + b.to(tl.int64) * C * hw
        map_off = b.to(tl.int64) * hw
        pix = y * W + x
        sq = tl.load(prm + 0).to(ACC)
        rnd = tl.load(prm + 1).to(ACC)
        kap = tl.load(prm + 2).to(ACC)
        reach = tl.load(prm + 3).to(ACC)
        hw1 = tl.load(prm + 4).to(ACC)
        hh1 = tl.load(prm + 5).to(ACC)
        radius = 0.5 * tl.load(coc + map_off + pix, mask=inside, other=0.0).to(ACC)
        if CATSEYE:
            vx, vy = _positions(x, y, H, W, ACC)
        else:
            vx = radius
            vy = radius
        rm = 0.5 * tl.load(tmax + b * n_t + pid_t).to(ACC)
        chan = tl.arange(0, BLOCK_C)
        den = tl.zeros([BY * BX], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            cm = ((c0 + chan) < C)[:, None]
            ch_off = ((c0 + chan) * hw)[:, None]
            img_c = img_b + ch_off
            if PREFIX:
                if rm >= tl.load(prm + 6).to(ACC):
                    pre_c = pre + (b.to(tl.int64) * C + (c0 + chan)[:, None]) * (H * (W + 1))
                    num, den = _gather_rows_prefix(img_c, pre_c, cm, y, x, inside, radius, rm,
                                                   sq, H, W, BLOCK_C, BY * BX, ACC)
                else:
                    num, den = _gather_rows_direct(img_c, cm, y, x, inside, radius, vx, vy, rm,
                                                   prm, tab, tab_h, tab_w, sq, rnd, kap, reach,
                                                   hw1, hh1, H, W, KIND, BLADES, CATSEYE,
                                                   BLOCK_C, BY * BX, ACC)
            else:
                num, den = _gather_rows_direct(img_c, cm, y, x, inside, radius, vx, vy, rm,
                                               prm, tab, tab_h, tab_w, sq, rnd, kap, reach,
                                               hw1, hh1, H, W, KIND, BLADES, CATSEYE,
                                               BLOCK_C, BY * BX, ACC)
            res = num / tl.where(inside, den, 1.0)[None, :]
            tl.store(out_b + ch_off + pix[None, :], res.to(out.dtype.element_ty),
                     mask=cm & inside[None, :])
        tl.store(den_out + map_off + pix, den.to(den_out.dtype.element_ty), mask=inside)

    @triton.jit
    def _gather_dcoc_rim(img_c, gnp, cm, y, x, inside, radius, rm, sq, H, W,
                         NPIX: tl.constexpr, ACC: tl.constexpr):
        """The same two sums for the disk, visiting only the rim (``W' = 0`` elsewhere)."""
        acc = tl.zeros([NPIX], dtype=ACC)
        wsum = tl.zeros([NPIX], dtype=ACC)
        ky = _half_height(rm, 1.0, H, True)
        e_out = radius + 0.5
        for dy in range(-ky, ky + 1):
            dyf = tl.cast(dy, ACC)
            ys = y + dy
            row_ok = inside & (ys >= 0) & (ys < H)
            a, b = _disk_row_spans(radius, dyf, sq)
            row_c = img_c + (ys * W)[None, :]
            n_rim = tl.max(tl.where(row_ok, b - a, 0), axis=0)
            for k in range(0, n_rim):
                dxr = a + 1 + k
                on = row_ok & (dxr <= b)
                ex = sq * dxr.to(ACC)
                t = e_out - tl.sqrt(ex * ex + dyf * dyf)
                dw = tl.where(on & (t > 0.0) & (t < 1.0), 0.5, 0.0).to(ACC)
                xr = x + dxr
                ok_r = xr < W
                dw_r = tl.where(ok_r, dw, 0.0)
                v = tl.load(row_c + xr[None, :], mask=cm & (on & ok_r)[None, :], other=0.0)
                acc += dw_r * tl.sum(gnp * v.to(ACC), axis=0)
                xl = x - dxr
                ok_l = (dxr > 0) & (xl >= 0)               # dx = 0 is counted once
                dw_l = tl.where(ok_l, dw, 0.0)
                v = tl.load(row_c + xl[None, :], mask=cm & (on & ok_l)[None, :], other=0.0)
                acc += dw_l * tl.sum(gnp * v.to(ACC), axis=0)
                wsum += dw_r + dw_l
        return acc, wsum

    @triton.jit
    def _gather_bwd_kernel(img, coc, gn, s, tmax, tnbr, prm, tab, d_img, d_coc, C, H, W,
                           tab_h, tab_w,
                           KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                           PREFIX: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr, BLOCK_C: tl.constexpr,
                           ACC: tl.constexpr):
        """dI(q) = sum_d W(d; c(q-d), q-d) valid gn(q-d)   (a gather over the neighbours);
        dc(p) = sum_d W'(d; c(p), p) valid [sum_ch gn(p) I(p+d) - s(p)]   (p's own window)."""
        pid_t, y, x, inside = _tile_coords(H, W, BY, BX)
        b = tl.program_id(1)
        hw = H * W
        n_t = tl.cdiv(H, BY) * tl.cdiv(W, BX)
        img_b = img + b.to(tl.int64) * C * hw
        gn_b = gn + b.to(tl.int64) * C * hw
        dimg_b = d_img + b.to(tl.int64) * C * hw
        map_off = b.to(tl.int64) * hw
        coc_b = coc + map_off
        pix = y * W + x
        sq = tl.load(prm + 0).to(ACC)
        rnd = tl.load(prm + 1).to(ACC)
        kap = tl.load(prm + 2).to(ACC)
        reach = tl.load(prm + 3).to(ACC)
        hw1 = tl.load(prm + 4).to(ACC)
        hh1 = tl.load(prm + 5).to(ACC)
        radius = 0.5 * tl.load(coc_b + pix, mask=inside, other=0.0).to(ACC)
        if CATSEYE:
            vx, vy = _positions(x, y, H, W, ACC)
        else:
            vx = radius
            vy = radius
        rm = 0.5 * tl.load(tmax + b * n_t + pid_t).to(ACC)
        rn = 0.5 * tl.load(tnbr + b * n_t + pid_t).to(ACC)
        kyn = _half_height(rn, reach, H, True)
        chan = tl.arange(0, BLOCK_C)
        acc = tl.zeros([BY * BX], dtype=ACC)
        wsum = tl.zeros([BY * BX], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            cm = ((c0 + chan) < C)[:, None]
            ch_off = ((c0 + chan) * hw)[:, None]
            img_c = img_b + ch_off
            gn_c = gn_b + ch_off
            gnp = tl.load(gn_c + pix[None, :], mask=cm & inside[None, :], other=0.0).to(ACC)
            # d coc: the derivative of p's own kernel over p's own window (for the disk with
            # ``PREFIX``, large tiles visit only the rim: W' = 0 inside it)
            if PREFIX:
                if rm >= tl.load(prm + 6).to(ACC):
                    acc_c, wsum = _gather_dcoc_rim(img_c, gnp, cm, y, x, inside, radius, rm, sq,
                                                   H, W, BY * BX, ACC)
                else:
                    dnum, wsum = _gather_rows_direct(img_c, cm, y, x, inside, radius, vx, vy,
                                                     rm, prm, tab, tab_h, tab_w, sq, rnd, kap,
                                                     reach, hw1, hh1, H, W, KIND, BLADES, CATSEYE,
                                                     BLOCK_C, BY * BX, ACC, True)
                    acc_c = tl.sum(gnp * dnum, axis=0)
            else:
                dnum, wsum = _gather_rows_direct(img_c, cm, y, x, inside, radius, vx, vy, rm,
                                                 prm, tab, tab_h, tab_w, sq, rnd, kap, reach,
                                                 hw1, hh1, H, W, KIND, BLADES, CATSEYE,
                                                 BLOCK_C, BY * BX, ACC, True)
                acc_c = tl.sum(gnp * dnum, axis=0)
            acc += acc_c
            # d image: a gather over the neighbours p = q - d with *their* kernels
            dimg = tl.zeros([BLOCK_C, BY * BX], dtype=ACC)
            for dy in range(-kyn, kyn + 1):
                dyf = tl.cast(dy, ACC)
                kx = _half_width(rn, dyf, sq, reach, W, KIND, True)
                ys = y - dy
                row_ok = inside & (ys >= 0) & (ys < H)
                row = ys * W
                for dx in range(-kx, kx + 1):
                    dxf = tl.cast(dx, ACC)
                    xs = x - dx
                    ok = row_ok & (xs >= 0) & (xs < W)
                    npix = row + xs
                    rad_n = 0.5 * tl.load(coc_b + npix, mask=ok, other=0.0).to(ACC)
                    if CATSEYE:
                        vxn, vyn = _positions(xs, ys, H, W, ACC)
                    else:
                        vxn = rad_n
                        vyn = rad_n
                    w, _ = _weight(dxf, dyf, rad_n, vxn, vyn, prm, tab, tab_h, tab_w, sq, rnd,
                                   kap, hw1, hh1, KIND, BLADES, CATSEYE, False, ACC)
                    w = tl.where(ok, w, 0.0)
                    g = tl.load(gn_c + npix[None, :], mask=cm & ok[None, :], other=0.0).to(ACC)
                    dimg += w[None, :] * g
            tl.store(dimg_b + ch_off + pix[None, :], dimg.to(d_img.dtype.element_ty),
                     mask=cm & inside[None, :])
        sp = tl.load(s + map_off + pix, mask=inside, other=0.0).to(ACC)
        tl.store(d_coc + map_off + pix, (acc - wsum * sp).to(d_coc.dtype.element_ty), mask=inside)

    @triton.jit
    def _mass_kernel(coc, tmax, prm, tab, inv_z, H, W, tab_h, tab_w,
                     KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                     BY: tl.constexpr, BX: tl.constexpr, ACC: tl.constexpr):
        """inv_z(q) = 1 / Z(q),  Z(q) = sum_d W(d; c(q), q) over the whole window (no border)."""
        pid_t, y, x, inside = _tile_coords(H, W, BY, BX)
        b = tl.program_id(1)
        hw = H * W
        n_t = tl.cdiv(H, BY) * tl.cdiv(W, BX)
        map_off = b.to(tl.int64) * hw
        pix = y * W + x
        sq = tl.load(prm + 0).to(ACC)
        rnd = tl.load(prm + 1).to(ACC)
        kap = tl.load(prm + 2).to(ACC)
        reach = tl.load(prm + 3).to(ACC)
        hw1 = tl.load(prm + 4).to(ACC)
        hh1 = tl.load(prm + 5).to(ACC)
        radius = 0.5 * tl.load(coc + map_off + pix, mask=inside, other=0.0).to(ACC)
        if CATSEYE:
            vx, vy = _positions(x, y, H, W, ACC)
        else:
            vx = radius
            vy = radius
        rm = 0.5 * tl.load(tmax + b * n_t + pid_t).to(ACC)
        ky = _half_height(rm, reach, H, False)
        z = tl.zeros([BY * BX], dtype=ACC)
        for dy in range(-ky, ky + 1):
            dyf = tl.cast(dy, ACC)
            kx = _half_width(rm, dyf, sq, reach, W, KIND, False)
            for dx in range(-kx, kx + 1):
                dxf = tl.cast(dx, ACC)
                w, _ = _weight(dxf, dyf, radius, vx, vy, prm, tab, tab_h, tab_w, sq, rnd,
                               kap, hw1, hh1, KIND, BLADES, CATSEYE, False, ACC)
                z += w
        tl.store(inv_z + map_off + pix, 1.0 / tl.where(inside, z, 1.0), mask=inside)

    @triton.jit
    def _scatter_fwd_kernel(img, coc, inv_z, tnbr, prm, tab, out, den_out, C, H, W, tab_h, tab_w,
                            KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                            BY: tl.constexpr, BX: tl.constexpr, BLOCK_C: tl.constexpr,
                            ACC: tl.constexpr):
        """out(p) = sum_d a(p-d, d) valid I(p-d) / den(p),  a(q, d) = W(d; c(q), q) / Z(q)."""
        pid_t, y, x, inside = _tile_coords(H, W, BY, BX)
        b = tl.program_id(1)
        hw = H * W
        n_t = tl.cdiv(H, BY) * tl.cdiv(W, BX)
        img_b = img + b.to(tl.int64) * C * hw
        out_b = out + b.to(tl.int64) * C * hw
        map_off = b.to(tl.int64) * hw
        coc_b = coc + map_off
        iz_b = inv_z + map_off
        pix = y * W + x
        sq = tl.load(prm + 0).to(ACC)
        rnd = tl.load(prm + 1).to(ACC)
        kap = tl.load(prm + 2).to(ACC)
        reach = tl.load(prm + 3).to(ACC)
        hw1 = tl.load(prm + 4).to(ACC)
        hh1 = tl.load(prm + 5).to(ACC)
        rn = 0.5 * tl.load(tnbr + b * n_t + pid_t).to(ACC)
        kyn = _half_height(rn, reach, H, True)
        chan = tl.arange(0, BLOCK_C)
        den = tl.zeros([BY * BX], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            cm = ((c0 + chan) < C)[:, None]
            ch_off = ((c0 + chan) * hw)[:, None]
            img_c = img_b + ch_off
            num = tl.zeros([BLOCK_C, BY * BX], dtype=ACC)
            den = tl.zeros([BY * BX], dtype=ACC)
            for dy in range(-kyn, kyn + 1):
                dyf = tl.cast(dy, ACC)
                kx = _half_width(rn, dyf, sq, reach, W, KIND, True)
                ys = y - dy
                row_ok = inside & (ys >= 0) & (ys < H)
                row = ys * W
                for dx in range(-kx, kx + 1):
                    dxf = tl.cast(dx, ACC)
                    xs = x - dx
                    ok = row_ok & (xs >= 0) & (xs < W)
                    qpix = row + xs
                    rad_q = 0.5 * tl.load(coc_b + qpix, mask=ok, other=0.0).to(ACC)
                    izq = tl.load(iz_b + qpix, mask=ok, other=0.0).to(ACC)
                    if CATSEYE:
                        vxq, vyq = _positions(xs, ys, H, W, ACC)
                    else:
                        vxq = rad_q
                        vyq = rad_q
                    w, _ = _weight(dxf, dyf, rad_q, vxq, vyq, prm, tab, tab_h, tab_w, sq, rnd,
                                   kap, hw1, hh1, KIND, BLADES, CATSEYE, False, ACC)
                    a = w * izq                   # izq = 0 outside the frame
                    v = tl.load(img_c + qpix[None, :], mask=cm & ok[None, :], other=0.0).to(ACC)
                    num += a[None, :] * v
                    den += a
            res = num / tl.where(inside, den, 1.0)[None, :]
            tl.store(out_b + ch_off + pix[None, :], res.to(out.dtype.element_ty),
                     mask=cm & inside[None, :])
        tl.store(den_out + map_off + pix, den.to(den_out.dtype.element_ty), mask=inside)

    @triton.jit
    def _scatter_bwd_kernel(img, coc, gn, s, tmax, prm, tab, d_img, d_coc, C, H, W, tab_h, tab_w,
                            KIND: tl.constexpr, BLADES: tl.constexpr, CATSEYE: tl.constexpr,
                            BY: tl.constexpr, BX: tl.constexpr, BLOCK_C: tl.constexpr,
                            ACC: tl.constexpr):
        """With da(q,d) = valid(q+d) [sum_ch I(q) gn(q+d) - s(q+d)]:
        dI(q) = sum_d W valid gn(q+d) / Z;  dc(q) = sum_d W' da / Z - Z' sum_d W da / Z^2."""
        pid_t, y, x, inside = _tile_coords(H, W, BY, BX)
        b = tl.program_id(1)
        hw = H * W
        n_t = tl.cdiv(H, BY) * tl.cdiv(W, BX)
        img_b = img + b.to(tl.int64) * C * hw
        gn_b = gn + b.to(tl.int64) * C * hw
        dimg_b = d_img + b.to(tl.int64) * C * hw
        map_off = b.to(tl.int64) * hw
        s_b = s + map_off
        pix = y * W + x
        sq = tl.load(prm + 0).to(ACC)
        rnd = tl.load(prm + 1).to(ACC)
        kap = tl.load(prm + 2).to(ACC)
        reach = tl.load(prm + 3).to(ACC)
        hw1 = tl.load(prm + 4).to(ACC)
        hh1 = tl.load(prm + 5).to(ACC)
        radius = 0.5 * tl.load(coc + map_off + pix, mask=inside, other=0.0).to(ACC)
        if CATSEYE:
            vx, vy = _positions(x, y, H, W, ACC)
        else:
            vx = radius
            vy = radius
        rm = 0.5 * tl.load(tmax + b * n_t + pid_t).to(ACC)
        ky = _half_height(rm, reach, H, False)   # no clamp: Z needs the whole window
        chan = tl.arange(0, BLOCK_C)
        p_acc = tl.zeros([BY * BX], dtype=ACC)    # sum_d W' sum_ch I gn   (over all chunks)
        q_acc = tl.zeros([BY * BX], dtype=ACC)    # sum_d W  sum_ch I gn
        p_s = tl.zeros([BY * BX], dtype=ACC)      # sum_d W' valid s
        q_s = tl.zeros([BY * BX], dtype=ACC)      # sum_d W  valid s
        z = tl.zeros([BY * BX], dtype=ACC)
        zp = tl.zeros([BY * BX], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            cm = ((c0 + chan) < C)[:, None]
            ch_off = ((c0 + chan) * hw)[:, None]
            gn_c = gn_b + ch_off
            iq = tl.load(img_b + ch_off + pix[None, :], mask=cm & inside[None, :],
                         other=0.0).to(ACC)
            dimg = tl.zeros([BLOCK_C, BY * BX], dtype=ACC)
            p_s = tl.zeros([BY * BX], dtype=ACC)
            q_s = tl.zeros([BY * BX], dtype=ACC)
            z = tl.zeros([BY * BX], dtype=ACC)
            zp = tl.zeros([BY * BX], dtype=ACC)
            for dy in range(-ky, ky + 1):
                dyf = tl.cast(dy, ACC)
                kx = _half_width(rm, dyf, sq, reach, W, KIND, False)
                ys = y + dy
                row_ok = inside & (ys >= 0) & (ys < H)
                row = ys * W
                for dx in range(-kx, kx + 1):
                    dxf = tl.cast(dx, ACC)
                    xs = x + dx
                    ok = row_ok & (xs >= 0) & (xs < W)
                    ppix = row + xs
                    w, dw = _weight(dxf, dyf, radius, vx, vy, prm, tab, tab_h, tab_w, sq, rnd,
                                    kap, hw1, hh1, KIND, BLADES, CATSEYE, True, ACC)
                    z += w
                    zp += dw
                    wv = tl.where(ok, w, 0.0)
                    dwv = tl.where(ok, dw, 0.0)
                    g = tl.load(gn_c + ppix[None, :], mask=cm & ok[None, :], other=0.0).to(ACC)
                    sp = tl.load(s_b + ppix, mask=ok, other=0.0).to(ACC)
                    dimg += wv[None, :] * g
                    gi = tl.sum(iq * g, axis=0)
                    p_acc += dwv * gi
                    q_acc += wv * gi
                    p_s += dwv * sp
                    q_s += wv * sp
            inv = 1.0 / tl.where(inside, z, 1.0)
            tl.store(dimg_b + ch_off + pix[None, :], (dimg * inv[None, :]).to(d_img.dtype.element_ty),
                     mask=cm & inside[None, :])
        inv = 1.0 / tl.where(inside, z, 1.0)
        dc = (p_acc - p_s) * inv - (q_acc - q_s) * zp * inv * inv
        tl.store(d_coc + map_off + pix, dc.to(d_coc.dtype.element_ty), mask=inside)


# =====================================================================================
# Host launchers
# =====================================================================================
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _tile_config(device: torch.device) -> Tuple[int, int, int]:
    return TILE_INTERPRET if (INTERPRET and device.type == "cpu") else TILE_GPU


_PARAM_CACHE: dict = {}


def _param_tensor(params: List[float], table_shape, device, acc,
                  prefix_min_radius: Optional[float]) -> Tuple[torch.Tensor, dict]:
    """Pack the aperture's float parameters (in the accumulation dtype) and its constexprs."""
    kind, blades = int(round(params[0])), int(round(params[1]))
    rot, rnd, sq, kap = (float(p) for p in params[2:6])
    key = (tuple(float(p) for p in params), tuple(table_shape), str(device), acc,
           prefix_min_radius)
    hit = _PARAM_CACHE.get(key)
    if hit is not None:
        return hit
    if kind == 1 and rnd >= 1.0:
        kind = 0                      # a fully round polygon is the disk (as in the reference)
    th, tw = (int(table_shape[0]) - 2, int(table_shape[1]) - 2) if kind == 2 else (1, 1)
    reach = 1.0 + 2.0 / (min(th, tw) - 1) if kind == 2 else 1.0
    prefix = kind == 0 and kap == 0.0 and prefix_min_radius is not None
    vals = [sq, rnd, kap, reach, 0.5 * (tw - 1), 0.5 * (th - 1),
            float(prefix_min_radius) if prefix else 0.0, 0.0]
    if kind == 1:
        scale = (1.0 - rnd) / math.cos(math.pi / blades)
        for k in range(blades):
            a = rot + (2 * k + 1) * math.pi / blades
            vals += [scale * math.cos(a), scale * math.sin(a)]
    prm = torch.tensor(vals, dtype=acc, device=device)
    meta = dict(KIND=kind, BLADES=max(blades, 1) if kind == 1 else 1, CATSEYE=kap > 0.0,
                PREFIX=prefix, tab_h=th, tab_w=tw)
    if len(_PARAM_CACHE) > 64:
        _PARAM_CACHE.clear()
    _PARAM_CACHE[key] = (prm, meta)
    return prm, meta


def _tile_max(coc: torch.Tensor, by: int, bx: int) -> torch.Tensor:
    """``(B, n_ty * n_tx)`` maximum coc of every ``by x bx`` tile (zero-padded at the edges)."""
    b, _, h, w = coc.shape
    nty, ntx = -(-h // by), -(-w // bx)
    padded = F.pad(coc, (0, ntx * bx - w, 0, nty * by - h))
    return padded.view(b, nty, by, ntx, bx).amax(dim=(2, 4)).reshape(b, nty * ntx).contiguous()


def _neighbour_max(tmax: torch.Tensor, prm: torch.Tensor, h: int, w: int, by: int, bx: int,
                   num_warps: int) -> torch.Tensor:
    """Dilate the tile-max map by the footprints (device-side, no host synchronisation)."""
    b = tmax.shape[0]
    nty, ntx = -(-h // by), -(-w // bx)
    gmax = tmax.amax().reshape(1)
    out = torch.empty_like(tmax)
    block_t = 1024 if INTERPRET else 256
    grid = (triton.cdiv(nty * ntx, block_t), b)
    _dilate_kernel[grid](tmax, gmax, out, prm, nty, ntx, BY=by, BX=bx, BLOCK_T=block_t,
                         num_warps=num_warps)
    return out


class _Launch:
    """Everything one call's kernels share: tiles, grid, parameters, tile bounds."""

    def __init__(self, image: torch.Tensor, coc: torch.Tensor, table: torch.Tensor,
                 params: List[float]):
        self.B, self.C, self.H, self.W = image.shape
        self.acc = _acc_dtype(image.dtype)
        self.device = image.device
        self.by, self.bx, self.warps = _tile_config(image.device)
        self.table = table.to(device=self.device, dtype=self.acc).contiguous()
        self.prm, meta = _param_tensor(params, self.table.shape, self.device, self.acc,
                                       PREFIX_MIN_RADIUS)
        meta = dict(meta)
        self.tab_h, self.tab_w = meta.pop("tab_h"), meta.pop("tab_w")
        self.prefix = meta.pop("PREFIX")
        self.meta = dict(meta, BY=self.by, BX=self.bx, ACC=_tl_acc(self.acc),
                         num_warps=self.warps)
        self.block_c = min(triton.next_power_of_2(self.C), MAX_BLOCK_C)
        self.grid = (triton.cdiv(self.H, self.by) * triton.cdiv(self.W, self.bx), self.B)
        self.tmax = _tile_max(coc, self.by, self.bx)
        self._tnbr = None

    @property
    def tnbr(self) -> torch.Tensor:
        if self._tnbr is None:
            self._tnbr = _neighbour_max(self.tmax, self.prm, self.H, self.W, self.by, self.bx,
                                        self.warps)
        return self._tnbr


def forward_impl(image: torch.Tensor, coc: torch.Tensor, table: torch.Tensor,
                 params: List[float], method: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gather or scatter forward; returns ``(out, den)`` (``out`` in image's dtype)."""
    check_op_inputs(image, coc, method)
    image, coc = image.contiguous(), coc.contiguous()
    out = torch.empty_like(image)
    den = torch.empty_like(coc)
    if image.numel() == 0:
        return out, den
    L = _Launch(image, coc, table, params)
    if method == "gather":
        # row prefix sums (float64, a zero column in front) for the O(radius) disk path
        pre = F.pad(image.to(torch.float64).cumsum(-1), (1, 0)).contiguous() if L.prefix \
            else image
        _gather_fwd_kernel[L.grid](image, pre, coc, L.tmax, L.prm, L.table, out, den, L.C, L.H,
                                   L.W, L.tab_h, L.tab_w, PREFIX=L.prefix, BLOCK_C=L.block_c,
                                   **L.meta)
    else:
        inv_z = torch.empty(coc.shape, dtype=L.acc, device=coc.device)
        _mass_kernel[L.grid](coc, L.tmax, L.prm, L.table, inv_z, L.H, L.W, L.tab_h, L.tab_w,
                             **L.meta)
        _scatter_fwd_kernel[L.grid](image, coc, inv_z, L.tnbr, L.prm, L.table, out, den, L.C,
                                    L.H, L.W, L.tab_h, L.tab_w, BLOCK_C=L.block_c, **L.meta)
    return out, den


def backward_impl(grad: torch.Tensor, image: torch.Tensor, coc: torch.Tensor, table: torch.Tensor,
                  params: List[float], method: str, out: torch.Tensor, den: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact gradients ``(dL/dimage, dL/dcoc)`` of :func:`forward_impl`."""
    check_op_inputs(image, coc, method)
    image, coc = image.contiguous(), coc.contiguous()
    d_img = torch.empty_like(image)
    d_coc = torch.empty_like(coc)
    if image.numel() == 0:
        return d_img, d_coc
    L = _Launch(image, coc, table, params)
    gn = (grad.to(L.acc) / den.to(L.acc)).contiguous()
    s = (gn * out.to(L.acc)).sum(1, keepdim=True).contiguous()
    if method == "gather":
        _gather_bwd_kernel[L.grid](image, coc, gn, s, L.tmax, L.tnbr, L.prm, L.table, d_img, d_coc,
                                   L.C, L.H, L.W, L.tab_h, L.tab_w, PREFIX=L.prefix,
                                   BLOCK_C=L.block_c, **L.meta)
    else:
        _scatter_bwd_kernel[L.grid](image, coc, gn, s, L.tmax, L.prm, L.table, d_img, d_coc,
                                    L.C, L.H, L.W, L.tab_h, L.tab_w, BLOCK_C=L.block_c, **L.meta)
    return d_img, d_coc


# =====================================================================================
# The operator and the backend entry points
# =====================================================================================
_OP = None
if triton is not None:
    _OP = define_defocus_op("triton", forward_impl, backward_impl)

_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _table(aperture: Aperture, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The aperture's padded table on ``device`` (cached per aperture: no copy per call).

    The key includes the table's version counter, so an in-place update of a learnable table
    (e.g. by an optimiser) is never served stale."""
    per_ap = _TABLES.setdefault(aperture, {})
    version = aperture.table._version if aperture.table is not None else 0
    key = (str(device), dtype)
    hit = per_ap.get(key)
    if hit is None or hit[0] != version:
        with torch.no_grad():
            tab = aperture.table_padded(device=device, dtype=dtype).contiguous()
        per_ap[key] = hit = (version, tab)
    return hit[1]


def is_available(device) -> bool:
    """Triton kernels can run on ``device``: CUDA tensors with Triton importable, or CPU tensors
    when the Triton interpreter is active (``TRITON_INTERPRET=1``, set automatically on
    machines without CUDA)."""
    if _OP is None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and not INTERPRET
    return device.type == "cpu" and INTERPRET and _INTERPRETER_BROKEN is None


def unavailable_reason() -> Optional[str]:
    """Why the Triton backend cannot run CPU tensors here (``None`` if it can or is not asked to)."""
    if _OP is None:
        return f"triton failed to import ({_TRITON_ERROR!r})"
    return _INTERPRETER_BROKEN


def defocus(image: torch.Tensor, coc: torch.Tensor, aperture: Aperture, method: str) -> torch.Tensor:
    r"""Triton backend entry (inputs already validated by :func:`lensblur.defocus`).

    Args:
        image: ``(B, C, H, W)`` float16 / bfloat16 / float32 / float64 tensor.
        coc: ``(B, 1, H, W)`` coc diameters in pixels (>= 0), any float dtype.
        aperture: the :class:`~lensblur.Aperture`.
        method: ``"gather"`` or ``"scatter"``.

    Returns:
        ``(B, C, H, W)`` blurred image in ``image``'s dtype, differentiable w.r.t. ``image`` and
        ``coc``.  Accumulation is float32 (float64 for float64 images); the coc is converted to
        the accumulation dtype first so that the saved normaliser keeps full precision.

    Example:
        >>> img, coc = torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3.0)
        >>> if is_available(img.device):
        ...     out = defocus(img, coc, Aperture.disk(), "gather")
    """
    if _OP is None:
        raise LensBlurError(f"the Triton backend is unavailable: triton failed to import "
                            f"({_TRITON_ERROR!r})")
    if not is_available(image.device):
        why = f" ({_INTERPRETER_BROKEN})" if _INTERPRETER_BROKEN and image.device.type == "cpu" else ""
        raise LensBlurError(f"the Triton backend cannot run on {image.device.type} tensors here{why}")
    acc = _acc_dtype(image.dtype)
    table = _table(aperture, image.device, acc)
    out, _ = _OP(image.contiguous(), coc.to(acc).contiguous(), table, aperture.kernel_params(),
                 method)
    return out
