"""The native O(radius) span kernels (disk, polygon, squeeze without cat's eye) against the
PyTorch reference: forward and both gradients, odd sizes, batches, sub-pixel and very large coc,
float32 and float64; prefix-sum precision on long rows; bitwise determinism across thread counts.

The span kernels sum each kernel row's weight-1 run with two lookups in row prefix sums (or, for
the scatter and the gather's image gradient, with +v/-v in difference rows) and visit only the
soft rim tap by tap, so a wrong run boundary, a rim tap counted twice or a lost rim tap, a prefix
sum kept in float32, or a missed source row would each break these parities.
"""

from __future__ import annotations

import pytest
import torch

import lensblur
from backend_cases import assert_close, reference, run_native
from lensblur.ops import native as nat

METHODS = ("gather", "scatter")

SPAN_APERTURES = {
    "disk": lensblur.Aperture.disk(),
    "hexagon_rot": lensblur.Aperture.polygon(blades=6, rotation_deg=17.0),
    "pentagon_round": lensblur.Aperture.polygon(blades=5, rotation_deg=-31.0, roundness=0.35),
    "triangle": lensblur.Aperture.polygon(blades=3, rotation_deg=90.0),
    "heptagon_round_squeezed": lensblur.Aperture.polygon(blades=7, rotation_deg=5.0,
                                                        roundness=0.6, squeeze=1.7),
    "disk_squeezed": lensblur.Aperture.disk(squeeze=0.55),
}


@pytest.fixture(scope="module")
def native():
    if not nat.is_available("cpu"):
        pytest.skip(f"native kernels unavailable: {nat.unavailable_reason()}")
    return nat


def _coc(kind: str, shape, g: torch.Generator) -> torch.Tensor:
    b, _, h, w = shape
    u = torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    if kind == "smooth":          # a ramp with noise: blocks with similar radii (long runs)
        ramp = torch.linspace(0.0, 1.0, w, dtype=torch.float64).view(1, 1, 1, w)
        return 2.0 + 14.0 * ramp + 0.8 * u
    if kind == "subpixel_and_large":   # in-focus pixels next to coc wider than the frame
        left = torch.arange(w).view(1, 1, 1, w) < w // 3
        return torch.where(left, 0.9 * u, 6.0 + 24.0 * u)
    raise ValueError(kind)


def _case(shape, kind, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=g, dtype=torch.float64)
    return image.to(dtype), _coc(kind, shape, g).to(dtype)


def _check(image, coc, aperture, method, dtype, what):
    ref_out, ref_di, ref_dc, grad = reference(image, coc, aperture, method)
    out, d_img, d_coc = run_native(image, coc, aperture, method, grad)
    assert out.dtype == d_img.dtype == d_coc.dtype == dtype
    assert_close(out, ref_out, dtype, f"{what} out")
    assert_close(d_img, ref_di, dtype, f"{what} d_image")
    assert_close(d_coc, ref_dc, dtype, f"{what} d_coc")


#: per dtype: the cases (shape, coc kind, seed) and the apertures checked in it
PARITY = {
    torch.float32: ((((2, 3, 23, 29), "smooth", 1), ((1, 2, 13, 19), "subpixel_and_large", 2)),
                    list(SPAN_APERTURES)),
    torch.float64: ((((2, 1, 17, 21), "smooth", 3), ((1, 5, 11, 9), "subpixel_and_large", 4)),
                    ["disk", "pentagon_round", "heptagon_round_squeezed"]),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype,ap_name", [(dt, ap) for dt, (_, aps) in PARITY.items() for ap in aps])
def test_parity(native, dtype, ap_name, method):
    for shape, kind, seed in PARITY[dtype][0]:
        image, coc = _case(shape, kind, seed, dtype)
        _check(image, coc, SPAN_APERTURES[ap_name], method, dtype, f"{dtype} {ap_name} {method} {shape} {kind}")


@pytest.mark.parametrize("method", METHODS)
def test_single_huge_spot_reaches_far_rows(native, method):
    """One 33 px disk among in-focus pixels: its rows must land on rows far above and below."""
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 37, 33, generator=g, dtype=torch.float64)
    coc = 0.5 * torch.rand(1, 1, 37, 33, generator=g, dtype=torch.float64)
    coc[0, 0, 18, 16] = 33.0
    _check(image, coc, SPAN_APERTURES["hexagon_rot"], method, torch.float64, f"spot {method}")


@pytest.mark.parametrize("method", METHODS)
def test_prefix_sums_on_long_rows(native, method):
    """4096-px rows with a large offset: row prefix sums reach ~4e6, where float32 keeps a
    quarter unit; the spans must still match the reference at float32 tolerance."""
    g = torch.Generator().manual_seed(6)
    w = 4096
    image = (1000.0 + torch.rand(1, 2, 3, w, generator=g, dtype=torch.float64)).float()
    coc = (1.0 + 12.0 * torch.rand(1, 1, 3, w, generator=g, dtype=torch.float64)).float()
    ref_out, ref_di, ref_dc, grad = reference(image, coc, SPAN_APERTURES["disk"], method)
    out, d_img, _ = run_native(image, coc, SPAN_APERTURES["disk"], method, grad)
    assert_close(out, ref_out, torch.float32, f"long rows {method} out")
    assert_close(d_img, ref_di, torch.float32, f"long rows {method} d_image")
    # the image's mean stays put (energy preservation over a long row)
    assert abs(float(out.double().mean() - image.double().mean())) < 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_bitwise_identical_for_any_thread_count(native, method, monkeypatch):
    monkeypatch.setattr(native, "SERIAL_BELOW", 0)     # use the threads even for small images
    image, coc = _case((2, 3, 47, 61), "smooth", 7, torch.float32)
    coc[:, :, :, :20] *= 0.05                          # in-focus band next to the blur
    grad = torch.randn(2, 3, 47, 61, generator=torch.Generator().manual_seed(8))
    before = torch.get_num_threads()
    results = {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results[n] = [run_native(image, coc, ap, method, grad)
                          for ap in (SPAN_APERTURES["disk"], SPAN_APERTURES["pentagon_round"])]
    finally:
        torch.set_num_threads(before)
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            for x, y in zip(a, b):
                assert torch.equal(x, y), f"{n} threads differ from 1 thread"


def test_constant_image_and_delta(native):
    """Analytic cases: a constant stays constant (both methods); a delta scattered with a
    uniform coc is the normalised aperture kernel."""
    ap = SPAN_APERTURES["pentagon_round"]
    coc = _case((1, 1, 19, 23), "subpixel_and_large", 9, torch.float64)[1]
    image = torch.full((1, 2, 19, 23), 0.625, dtype=torch.float64)
    for method in METHODS:
        out = lensblur.defocus(image, coc, ap, method=method, backend="native")
        torch.testing.assert_close(out, image, atol=1e-12, rtol=0)
    n, c = 31, 13.0
    delta = torch.zeros(1, 1, n, n, dtype=torch.float64)
    delta[0, 0, n // 2, n // 2] = 1.0
    out = lensblur.defocus(delta, torch.full((1, 1, n, n), c, dtype=torch.float64), ap,
                           method="scatter", backend="native")[0, 0]
    k = ap.kernel(torch.tensor(c, dtype=torch.float64))
    r = k.shape[0] // 2
    torch.testing.assert_close(out[n // 2 - r:n // 2 + r + 1, n // 2 - r:n // 2 + r + 1], k,
                               atol=1e-12, rtol=1e-9)
