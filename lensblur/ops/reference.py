r"""The plain PyTorch reference for the gather and scatter blur operators, forward and backward.

This module is the readable definition that the C++ and Triton backends are checked against.
Memory stays :math:`O(BCHW)`: the loops run over kernel offsets, never over an unfolded
``(H W k^2)`` tensor.  The weights :math:`W(d; c, v)` and :math:`\partial W/\partial c` come from
:meth:`lensblur.Aperture.weight`.

Notation: ``valid(x)`` is 1 inside the image, 0 outside (zero padding, exactly transposed in the
backward pass).

**Gather** (each output pixel averages its own footprint)::

    num(p) = sum_d W(d; c(p), p) valid(p+d) I(p+d)      den(p) = sum_d W(d; c(p), p) valid(p+d)
    out(p) = num(p) / den(p)

Backward, with ``g = dL/dout``, ``gn = g / den`` and ``s(p) = sum_ch gn(p) out(p)``::

    dL/dI(q) = sum_d W(d; c(q-d), q-d) valid(q-d) gn(q-d)          (transpose of the gather)
    dL/dc(p) = sum_d W'(d; c(p), p) valid(p+d) [sum_ch gn(p) I(p+d)] - s(p) sum_d W'(d; c(p), p) valid(p+d)

**Scatter** (each source pixel spreads its energy over its own footprint)::

    Z(q) = sum_d W(d; c(q), q)   (whole window: the kernel's total mass)
    a(q, d) = W(d; c(q), q) / Z(q)
    num(p) = sum_d a(p-d, d) valid(p-d) I(p-d)          den(p) = sum_d a(p-d, d) valid(p-d)
    out(p) = num(p) / den(p)

Backward, with ``gn = g / den``, ``s = sum_ch gn out`` and
``da(q, d) = valid(q+d) [sum_ch I(q) gn(q+d) - s(q+d)]``::

    dL/dI(q) = sum_d a(q, d) valid(q+d) gn(q+d)
    dL/dc(q) = (1/Z) sum_d W' da - (Z'/Z^2) sum_d W da,     Z'(q) = sum_d W'(d; c(q), q)
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..apertures import Aperture

__all__ = ["defocus", "defocus_autograd", "gather_forward", "scatter_forward", "gather_backward", "scatter_backward",
           "is_available", "frame_positions", "offsets"]

name = "torch"


def is_available(device: torch.device) -> bool:  # the reference runs everywhere
    return True


def frame_positions(height: int, width: int, pad_y: int = 0, pad_x: int = 0, *,
                    dtype=torch.float32, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Normalised positions ``v`` (cat's eye) of a frame padded by ``(pad_y, pad_x)``.

    ``v = (x - (W-1)/2, y - (H-1)/2) / (sqrt(W^2 + H^2) / 2)``; returns ``(vx, vy)`` of shape
    ``(1, 1, H + 2 pad_y, W + 2 pad_x)``.
    """
    half_diag = 0.5 * (height ** 2 + width ** 2) ** 0.5
    xs = (torch.arange(-pad_x, width + pad_x, dtype=dtype, device=device) - (width - 1) / 2) / half_diag
    ys = (torch.arange(-pad_y, height + pad_y, dtype=dtype, device=device) - (height - 1) / 2) / half_diag
    vy, vx = torch.meshgrid(ys, xs, indexing="ij")
    return vx[None, None], vy[None, None]


def offsets(aperture: Aperture, max_coc: float) -> Tuple[int, int, List[Tuple[int, int]]]:
    """Window half-widths and the list of offsets ``(dx, dy)`` that can carry weight."""
    kx, ky = aperture.support(max_coc / 2)
    c = torch.tensor(max_coc, dtype=torch.float64)
    out = []
    for dy in range(-ky, ky + 1):
        for dx in range(-kx, kx + 1):
            # Disk and polygon weights grow with c, so W(d; c_max) = 0 means W = 0 for all c.
            # (Image kernels are stretched, so every offset in the window may carry weight.)
            if aperture.kind != "image" and float(aperture.weight(dx, dy, c)[0].detach()) <= 0.0:
                continue
            out.append((dx, dy))
    return kx, ky, out


class _Frame:
    """Padding, positions and offsets shared by the loops of one call."""

    def __init__(self, image: torch.Tensor, coc: torch.Tensor, aperture: Aperture):
        self.B, self.C, self.H, self.W = image.shape
        self.kx, self.ky, self.offs = offsets(aperture, float(coc.detach().max()))
        self.ap = aperture
        self.dtype, self.device = image.dtype, image.device
        ones = torch.ones(1, 1, self.H, self.W, dtype=self.dtype, device=self.device)
        self.valid_pad = self.pad(ones)
        self.catseye = aperture.cats_eye > 0
        self.pos = frame_positions(self.H, self.W, dtype=self.dtype, device=self.device) \
            if self.catseye else None
        self.pos_pad = frame_positions(self.H, self.W, self.ky, self.kx, dtype=self.dtype,
                                       device=self.device) if self.catseye else None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.kx, self.kx, self.ky, self.ky))

    def at(self, x_pad: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
        """``x(p + d)`` for all p, read from a padded map."""
        return x_pad[..., self.ky + dy:self.ky + dy + self.H, self.kx + dx:self.kx + dx + self.W]

    def pos_at(self, dx: int, dy: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        if not self.catseye:
            return None
        return self.at(self.pos_pad[0], dx, dy), self.at(self.pos_pad[1], dx, dy)


def _mass(fr: _Frame, coc: torch.Tensor, offs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``Z = sum_d W(d; c, v)`` over the offsets ``offs`` (the whole window) and ``Z' = dZ/dc``."""
    z = torch.zeros_like(coc)
    dz = torch.zeros_like(coc)
    for dx, dy in offs:
        w, dw = fr.ap.weight(dx, dy, coc, fr.pos)
        z = z + w
        dz = dz + dw
    return z, dz


def _gather_sums(fr: _Frame, img_pad: torch.Tensor, coc: torch.Tensor, offs
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gather's ``num`` and ``den`` summed over the offsets ``offs`` only."""
    num = torch.zeros(fr.B, fr.C, fr.H, fr.W, dtype=fr.dtype, device=fr.device)
    den = torch.zeros_like(coc)
    for dx, dy in offs:
        w, _ = fr.ap.weight(dx, dy, coc, fr.pos)
        w = w * fr.at(fr.valid_pad, dx, dy)
        num = num + w * fr.at(img_pad, dx, dy)
        den = den + w
    return num, den


def gather_forward(image: torch.Tensor, coc: torch.Tensor, aperture: Aperture
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gather blur; returns ``(out, den)``.  Plain torch ops: differentiable by autograd too."""
    fr = _Frame(image, coc, aperture)
    num, den = _gather_sums(fr, fr.pad(image), coc, fr.offs)
    return num / den, den


def gather_backward(grad: torch.Tensor, image: torch.Tensor, coc: torch.Tensor,
                    aperture: Aperture, out: torch.Tensor, den: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    fr = _Frame(image, coc, aperture)
    img_pad = fr.pad(image)
    gn = grad / den
    s = (gn * out).sum(1, keepdim=True)
    d_img_pad = torch.zeros_like(img_pad)
    acc = torch.zeros_like(coc)
    wsum = torch.zeros_like(coc)
    for dx, dy in fr.offs:
        w, dw = aperture.weight(dx, dy, coc, fr.pos)
        v = fr.at(fr.valid_pad, dx, dy)
        w, dw = w * v, dw * v
        fr.at(d_img_pad, dx, dy).add_(w * gn)
        acc = acc + dw * (gn * fr.at(img_pad, dx, dy)).sum(1, keepdim=True)
        wsum = wsum + dw
    d_img = fr.at(d_img_pad, 0, 0)
    return d_img.contiguous(), acc - wsum * s


def _scatter_sums(fr: _Frame, img_pad: torch.Tensor, coc_pad: torch.Tensor,
                  inv_z_pad: torch.Tensor, offs) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scatter's ``num`` and ``den`` summed over the offsets ``offs`` only."""
    num = torch.zeros(fr.B, fr.C, fr.H, fr.W, dtype=fr.dtype, device=fr.device)
    den = torch.zeros(fr.B, 1, fr.H, fr.W, dtype=fr.dtype, device=fr.device)
    for dx, dy in offs:
        # source q = p - d
        w, _ = fr.ap.weight(dx, dy, fr.at(coc_pad, -dx, -dy), fr.pos_at(-dx, -dy))
        a = w * fr.at(inv_z_pad, -dx, -dy)
        num = num + a * fr.at(img_pad, -dx, -dy)
        den = den + a
    return num, den


def scatter_forward(image: torch.Tensor, coc: torch.Tensor, aperture: Aperture
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scatter blur (normalised, computed as scatter-as-gather); returns ``(out, den)``."""
    fr = _Frame(image, coc, aperture)
    z, _ = _mass(fr, coc, fr.offs)
    # zero outside: sources outside the frame carry nothing
    num, den = _scatter_sums(fr, fr.pad(image), fr.pad(coc), fr.pad(1.0 / z), fr.offs)
    return num / den, den


def scatter_backward(grad: torch.Tensor, image: torch.Tensor, coc: torch.Tensor,
                     aperture: Aperture, out: torch.Tensor, den: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    fr = _Frame(image, coc, aperture)
    z, dz = _mass(fr, coc, fr.offs)
    inv_z = 1.0 / z
    gn = grad / den
    gn_pad = fr.pad(gn)
    s_pad = fr.pad((gn * out).sum(1, keepdim=True))
    d_img = torch.zeros_like(image)
    p_acc = torch.zeros_like(coc)
    q_acc = torch.zeros_like(coc)
    for dx, dy in fr.offs:
        w, dw = aperture.weight(dx, dy, coc, fr.pos)
        g_sh = fr.at(gn_pad, dx, dy)                       # gn(q + d), zero outside the frame
        da = (image * g_sh).sum(1, keepdim=True) - fr.at(s_pad, dx, dy)
        d_img = d_img + w * g_sh
        p_acc = p_acc + dw * da
        q_acc = q_acc + w * da
    return d_img * inv_z, p_acc * inv_z - q_acc * dz * inv_z * inv_z


_FORWARD = {"gather": gather_forward, "scatter": scatter_forward}
_BACKWARD = {"gather": gather_backward, "scatter": scatter_backward}


class _DefocusFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, coc, aperture, method):
        out, den = _FORWARD[method](image, coc, aperture)
        ctx.save_for_backward(image, coc, out, den)
        ctx.aperture, ctx.method = aperture, method
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        image, coc, out, den = ctx.saved_tensors
        d_img, d_coc = _BACKWARD[ctx.method](grad.contiguous(), image, coc, ctx.aperture, out, den)
        return (d_img if ctx.needs_input_grad[0] else None,
                d_coc if ctx.needs_input_grad[1] else None, None, None)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def defocus(image: torch.Tensor, coc: torch.Tensor, aperture: Aperture, method: str) -> torch.Tensor:
    """Reference backend entry (inputs already validated by :func:`lensblur.defocus`)."""
    acc = compute_dtype(image.dtype)
    out = _DefocusFunction.apply(image.to(acc), coc.to(acc), aperture, method)
    return out.to(image.dtype)


#: Offsets per checkpointed chunk in :func:`defocus_autograd`: the backward keeps the autograd
#: graph of one chunk at a time, about ``AUTOGRAD_CHUNK`` times a few ``(B, C, H, W)`` tensors.
AUTOGRAD_CHUNK = 16


def _chunked_sum(fn, offs, *args) -> tuple:
    """``sum over chunks of fn(*args, chunk)`` (tuples of tensors), each chunk checkpointed."""
    total = None
    for i in range(0, len(offs), AUTOGRAD_CHUNK):
        part = checkpoint(fn, *args, offs[i:i + AUTOGRAD_CHUNK], use_reentrant=False)
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return total


def _mass_only(fr: _Frame, coc: torch.Tensor, offs) -> Tuple[torch.Tensor]:
    return (_mass(fr, coc, offs)[0],)


def defocus_autograd(image: torch.Tensor, coc: torch.Tensor, aperture: Aperture,
                     method: str) -> torch.Tensor:
    """The reference blur differentiated by autograd, so that gradients also reach the
    aperture's own tensors (an image kernel, a polygon's ``rotation_deg`` and ``roundness``).

    Same forward as :func:`defocus`.  The sums over kernel offsets run in checkpointed chunks of
    :data:`AUTOGRAD_CHUNK` offsets, so memory stays a few chunks of ``(B, C, H, W)`` tensors instead
    of one per offset, at the price of recomputing the forward once in the backward.
    """
    acc = compute_dtype(image.dtype)
    img, c = image.to(acc), coc.to(acc)
    fr = _Frame(img, c, aperture)
    img_pad = fr.pad(img)
    if method == "gather":
        num, den = _chunked_sum(_gather_sums, fr.offs, fr, img_pad, c)
    else:
        z, = _chunked_sum(_mass_only, fr.offs, fr, c)
        num, den = _chunked_sum(_scatter_sums, fr.offs, fr, img_pad, fr.pad(c), fr.pad(1.0 / z))
    return (num / den).to(image.dtype)
