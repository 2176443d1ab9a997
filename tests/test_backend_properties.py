"""Backend-agnostic properties of :func:`lensblur.defocus`, run on every backend that is
available on ``--device`` through the ``backend`` fixture (the parity grids against the
reference stay in ``test_native.py`` and ``test_triton.py``)."""

import pytest
import torch

import lensblur
from backend_cases import APERTURES, make_case, star_kernel
from lensblur.defocus import available_backends

METHODS = ("gather", "scatter")


@pytest.fixture(params=["torch", "native", "triton"])
def backend(request, device):
    """A backend name, skipped where it cannot run on ``device``."""
    if request.param not in available_backends(device):
        pytest.skip(f"backend {request.param!r} is not available on {device}")
    return request.param


@pytest.mark.parametrize("method", METHODS)
def test_constant_image_is_preserved(backend, device, method):
    image = torch.full((1, 3, 9, 12), 0.37, device=device)
    coc = 2 * make_case((1, 1, 9, 12), "mixed")[1].to(device)
    for ap in (APERTURES["hexagon"], APERTURES["rounded5_anamorphic_catseye"]):
        out = lensblur.defocus(image, coc, ap, method=method, backend=backend)
        torch.testing.assert_close(out, image, atol=2e-6, rtol=0)


def test_delta_gives_the_normalised_aperture_kernel(backend, device):
    """Scatter with a uniform coc: a delta far from the border spreads into the kernel."""
    ap = APERTURES["image_star"]
    n, c = 15, 7.0
    image = torch.zeros(1, 1, n, n, device=device)
    image[0, 0, n // 2, n // 2] = 1.0
    out = lensblur.defocus(image, torch.full((1, 1, n, n), c, device=device), ap, method="scatter",
                           backend=backend)[0, 0].cpu()
    k = ap.kernel(c)
    r = k.shape[0] // 2
    torch.testing.assert_close(out[n // 2 - r:n // 2 + r + 1, n // 2 - r:n // 2 + r + 1], k, atol=1e-6, rtol=1e-5)


def test_inputs_not_modified_and_non_contiguous(backend, device):
    image, coc = (t.to(device) for t in make_case((1, 3, 9, 8), "large", seed=5))
    i0, c0 = image.clone(), coc.clone()
    nc = image.transpose(2, 3).contiguous().transpose(2, 3)
    ncc = coc.transpose(2, 3).contiguous().transpose(2, 3)
    assert not nc.is_contiguous() and not ncc.is_contiguous()
    for method in METHODS:
        a = lensblur.defocus(nc, ncc, method=method, backend=backend)
        b = lensblur.defocus(image, coc, method=method, backend=backend)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert torch.equal(image, i0) and torch.equal(coc, c0)


def test_image_table_edited_in_place_is_not_served_stale(backend, device):
    ap = lensblur.Aperture.from_image(star_kernel(9))
    image, coc = (t.to(device) for t in make_case((1, 1, 8, 9), "large", seed=6))
    before = lensblur.defocus(image, coc, ap, backend=backend)        # fills any table cache
    with torch.no_grad():                                              # as an optimiser step would
        ap.table.fill_(0.0)
        ap.table[:, :2] = 1.0
    after = lensblur.defocus(image, coc, ap, backend=backend)
    expected = lensblur.defocus(image, coc, ap, backend="torch")
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(backend, device, method):
    """Outputs and gradients are bitwise reproducible, also under
    ``torch.use_deterministic_algorithms(True)``."""
    image, coc = make_case((1, 3, 9, 10), "mixed", seed=2)
    ap = APERTURES["rounded5_anamorphic_catseye"]
    grad = torch.randn(1, 3, 9, 10, generator=torch.Generator().manual_seed(5)).to(device)

    def run():
        img = image.to(device).requires_grad_()
        c = coc.to(device).requires_grad_()
        out = lensblur.defocus(img, c, ap, method=method, backend=backend)
        return (out.detach(), *torch.autograd.grad(out, (img, c), grad))

    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
