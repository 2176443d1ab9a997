"""The parity grid shared by every backend's tests (native C++, Triton): same shapes, apertures,
coc fields and tolerances, compared against the PyTorch reference."""

from __future__ import annotations


import torch

import lensblur

# Shapes that are not multiples of any block size; batch > 1; C = 1, 3, 4.
SHAPES = [(1, 1, 7, 9), (2, 3, 13, 17), (1, 4, 11, 6)]


def star_kernel(n: int = 15, points: int = 5) -> torch.Tensor:
    """A five-pointed star, a non-symmetric image aperture."""
    ax = torch.linspace(-1, 1, n)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    r, a = torch.sqrt(x * x + y * y), torch.atan2(y, x)
    edge = 0.55 + 0.4 * torch.cos(points * (a - 0.3))
    return (r <= edge).float()


APERTURES = {
    "disk": lensblur.Aperture.disk(),
    "hexagon": lensblur.Aperture.polygon(blades=6, rotation_deg=15.0),
    "rounded5_anamorphic_catseye": lensblur.Aperture.polygon(blades=5, roundness=0.4, squeeze=1.3,
                                                            cats_eye=0.6),
    "image_star": lensblur.Aperture.from_image(star_kernel()),
}

COC_KINDS = ("tiny", "large", "mixed")


def make_coc(kind: str, shape, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """coc fields: all below 1 px ("tiny"), up to 9 px ("large"), or both side by side ("mixed")."""
    b, _, h, w = shape
    u = torch.rand(b, 1, h, w, generator=generator, dtype=torch.float64)
    if kind == "tiny":
        c = 0.95 * u
    elif kind == "large":
        c = 1.0 + 8.0 * u
    elif kind == "mixed":
        left = torch.arange(w) < w // 2
        c = torch.where(left.view(1, 1, 1, w), 0.9 * u, 2.0 + 7.0 * u)
    else:
        raise ValueError(kind)
    return c.to(dtype)


def make_case(shape, coc_kind: str, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    coc = make_coc(coc_kind, shape, g, dtype)
    return image, coc


# (atol, rtol) of a backend against the reference computed in float64, per input dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def reference(image, coc, aperture, method):
    """The reference output and gradients (w.r.t. image and coc, for a fixed upstream grad)."""
    img = image.detach().double().requires_grad_()
    c = coc.detach().double().requires_grad_()
    out = lensblur.defocus(img, c, aperture, method=method, backend="torch")
    g = torch.Generator().manual_seed(123)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    d_img, d_coc = torch.autograd.grad(out, (img, c), grad)
    return out.detach(), d_img, d_coc, grad


def run_native(image, coc, aperture, method, grad):
    """Native output and gradients w.r.t. image and coc for upstream gradient ``grad``."""
    img = image.detach().clone().requires_grad_()
    c = coc.detach().clone().requires_grad_()
    out = lensblur.defocus(img, c, aperture, method=method, backend="native")
    d_img, d_coc = torch.autograd.grad(out, (img, c), grad.to(out.dtype))
    return out.detach(), d_img, d_coc


def assert_close(actual, expected, dtype, what=""):
    atol, rtol = TOLERANCES[dtype]
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol * scale,
                               rtol=rtol, msg=lambda m: f"{what}: {m}")


