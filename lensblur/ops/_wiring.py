"""One Python-side wiring for every compiled backend (C++ and Triton).

:func:`define_defocus_op` turns a backend's forward and backward kernels into PyTorch operators
(``torch.library.custom_op``) with fake (meta) implementations and autograd, so that
``torch.compile`` traces them without graph breaks and ``torch.library.opcheck`` passes.

A backend supplies::

    forward_impl(image, coc, table, params, method) -> (out, den)
    backward_impl(grad, image, coc, table, params, method, out, den) -> (d_image, d_coc)

with ``params = aperture.kernel_params()`` (``[kind_id, blades, rotation_rad, roundness, squeeze,
cats_eye]``), ``table = aperture.table_padded()`` and ``method`` in ``{"gather", "scatter"}``.
``den`` (``(B, 1, H, W)``) is the forward's normaliser, saved for the backward.  The math is
that of :mod:`lensblur.ops.reference`.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import Tensor

from ..validation import LensBlurError

__all__ = ["define_defocus_op", "check_op_inputs"]


def define_defocus_op(name: str, forward_impl: Callable, backward_impl: Callable) -> Callable:
    """Register ``lensblur::{name}_defocus`` (+ ``_backward``) and return the forward op.

    The returned op is called as ``op(image, coc, table, params, method) -> (out, den)``.
    """

    @torch.library.custom_op(f"lensblur::{name}_defocus", mutates_args=())
    def forward_op(image: Tensor, coc: Tensor, table: Tensor, params: List[float],
                   method: str) -> Tuple[Tensor, Tensor]:
        return forward_impl(image, coc, table, params, method)

    @forward_op.register_fake
    def _(image, coc, table, params, method):
        return torch.empty_like(image), torch.empty_like(coc)

    @torch.library.custom_op(f"lensblur::{name}_defocus_backward", mutates_args=())
    def backward_op(grad: Tensor, image: Tensor, coc: Tensor, table: Tensor, params: List[float],
                    method: str, out: Tensor, den: Tensor) -> Tuple[Tensor, Tensor]:
        return backward_impl(grad, image, coc, table, params, method, out, den)

    @backward_op.register_fake
    def _(grad, image, coc, table, params, method, out, den):
        return torch.empty_like(image), torch.empty_like(coc)

    def setup_context(ctx, inputs, output):
        image, coc, table, params, method = inputs
        out, den = output
        ctx.save_for_backward(image, coc, table, out, den)
        ctx.params, ctx.method = params, method

    def backward(ctx, grad_out, grad_den):
        image, coc, table, out, den = ctx.saved_tensors
        # ``den`` is an internal output (the normaliser); only ``out`` carries gradients.
        d_image, d_coc = backward_op(grad_out.contiguous(), image, coc, table, ctx.params, ctx.method,
                                     out, den)
        return d_image, d_coc, None, None, None

    forward_op.register_autograd(backward, setup_context=setup_context)
    return forward_op


def check_op_inputs(image: Tensor, coc: Tensor, method: str) -> None:
    """The checks every compiled op makes itself (it may be called directly, not only through
    :func:`lensblur.defocus`): a known method and a ``(B, 1, H, W)`` coc matching the image."""
    if method not in ("gather", "scatter"):
        raise LensBlurError(f"`method` must be 'gather' or 'scatter', got {method!r}")
    if image.dim() != 4 or coc.dim() != 4 or coc.shape[1] != 1 \
            or coc.shape[0] != image.shape[0] or coc.shape[2:] != image.shape[2:]:
        raise LensBlurError(f"`coc` must have shape (B, 1, H, W) matching `image` "
                            f"{tuple(image.shape)}, got {tuple(coc.shape)}")
