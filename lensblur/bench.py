"""``lensblur bench``: a throughput table of the blur backends on this machine.

The installed package's own, small benchmark: every backend available on the device (see
:func:`lensblur.available_backends`) renders the workload of the performance anchors
(:func:`anchors_workload`) with each method through :func:`lensblur.render_coc`, forward and,
if asked, forward + backward, and the table reports the median time, the throughput and the
speed-up over the PyTorch reference (``backend="torch"``) of the same method and mode measured
in the same run.  The full suite (sweeps, baselines, peak memory, plots, ``RESULTS.md``) is
``python -m benchmarks`` in a source checkout.

Example:
    >>> rows = run_bench(sizes=(16,), max_cocs=(3.0,), methods=("gather",), backends=("torch",),
    ...                  min_time_s=0.0, max_reps=1)
    >>> [(r.method, r.backend, r.mode, r.speedup) for r in rows]
    [('gather', 'torch', 'fwd', 1.0)]
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .defocus import available_backends
from .render import RENDER_METHODS, render_coc
from .validation import LensBlurError

__all__ = ["anchors_workload", "BenchRow", "run_bench", "format_table", "MODES"]

#: ``fwd`` runs under ``torch.no_grad()``; ``fwd+bwd`` also backpropagates a fixed random
#: gradient to the image and the coc.
MODES = ("fwd", "fwd+bwd")


def anchors_workload(height: int, width: int, max_coc: float, *, channels: int = 3, device="cpu",
                     dtype=torch.float32):
    """The workload of the performance anchors: ``(image, coc, s)``.

    * image: ``torch.rand(1, C, H, W, generator=torch.Generator().manual_seed(0))``;
    * ``s``: an 8x8 uniform random grid from the same generator, upsampled bicubically
      (``align_corners=True``) to ``H x W`` and min-max normalised to ``[0, 1]`` (a smooth
      disparity focused at 0.5);
    * coc diameter ``max_coc * |2 s - 1|`` pixels (signed: ``max_coc * (2 s - 1)``).
    """
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, channels, height, width, generator=g)
    grid = torch.rand(1, 1, 8, 8, generator=g)
    s = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True)
    s = (s - s.min()) / (s.max() - s.min())
    coc = max_coc * (2 * s - 1).abs()
    return (image.to(device=device, dtype=dtype), coc.to(device=device, dtype=torch.float32),
            s.to(device=device))


@dataclasses.dataclass
class BenchRow:
    """One row of the table: the workload, the backend and its median time."""

    height: int
    width: int
    max_coc: float
    method: str
    backend: str
    mode: str
    ms: float
    reps: int
    speedup: Optional[float] = None     # reference time / this time (None without the reference)

    @property
    def mpix_per_s(self) -> float:
        return self.height * self.width / 1e6 / (self.ms / 1e3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(run: Callable[[], None], device: torch.device, min_time_s: float, max_reps: int):
    """Median wall time (ms) of ``run`` after one warm-up call; repeats until ``min_time_s``
    has passed or ``max_reps`` calls were made (at least one)."""
    run()
    _sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while not times or (len(times) < max_reps and time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), len(times)


def run_bench(sizes: Sequence[int] = (256,), max_cocs: Sequence[float] = (17.0,),
              methods: Sequence[str] = ("gather", "scatter", "layered"),
              backends: Optional[Sequence[str]] = None, modes: Sequence[str] = ("fwd",),
              device="cpu", min_time_s: float = 0.5, max_reps: int = 20,
              progress: Optional[Callable[[BenchRow], None]] = None) -> List[BenchRow]:
    """Time every (size, max coc, method, backend, mode) on ``device``; see the module docstring.

    Args:
        sizes: square image sizes in pixels (RGB).
        max_cocs: maximum coc diameters in pixels.
        methods: ``render_coc`` methods.
        backends: backends to time (default: every one available on ``device``, the reference
            ``"torch"`` included, which the speed-ups need; Triton only on CUDA).
        modes: subset of :data:`MODES`.
        device: torch device.
        min_time_s, max_reps: each row repeats for at least ``min_time_s`` seconds, at most
            ``max_reps`` calls, after one warm-up call.
        progress: called with each row as it is measured.

    Returns:
        the rows, with ``speedup`` filled in where the reference row was measured.
    """
    device = torch.device(device)
    avail = available_backends(device)
    if backends is None:   # Triton off CUDA runs in its interpreter: a correctness tool, not timed
        backends = tuple(b for b in avail if b != "triton" or device.type == "cuda")
    backends = tuple(backends)
    for b in backends:
        if b not in avail:
            raise LensBlurError(f"`backends`: {b!r} is not available on {device.type} here; "
                                f"available: {', '.join(avail)}")
    for m in methods:
        if m not in RENDER_METHODS:
            raise LensBlurError(f"`methods`: unknown method {m!r}; expected {', '.join(RENDER_METHODS)}")
    for m in modes:
        if m not in MODES:
            raise LensBlurError(f"`modes`: unknown mode {m!r}; expected {', '.join(MODES)}")
    for n in sizes:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8192:
            raise LensBlurError(f"`sizes`: each size must be an int in [1, 8192], got {n!r}")
    for d in max_cocs:
        if not 0 <= float(d) <= 1024:
            raise LensBlurError(f"`max_cocs`: each max coc must lie in [0, 1024] px, got {d!r}")
    rows: List[BenchRow] = []
    for n in sizes:
        for d in max_cocs:
            image, _, s = anchors_workload(n, n, float(d), device=device)
            signed = float(d) * (2 * s - 1)
            grad = torch.randn(image.shape, generator=torch.Generator().manual_seed(1)).to(device)
            for mode in modes:
                for method in methods:
                    ref_ms = None
                    for b in sorted(backends, key=lambda x: x != "torch"):   # the reference first
                        run = _runner(image, signed, method, b, mode, grad)
                        ms, reps = _time(run, device, min_time_s, max_reps)
                        if b == "torch":
                            ref_ms = ms
                        row = BenchRow(n, n, float(d), method, b, mode, ms, reps,
                                       None if ref_ms is None else ref_ms / ms)
                        rows.append(row)
                        if progress is not None:
                            progress(row)
    return rows


def _runner(image, signed, method, backend, mode, grad) -> Callable[[], None]:
    if mode == "fwd":
        def run():
            with torch.no_grad():
                render_coc(image, signed, None, method, backend=backend)
        return run

    def run_bwd():
        img = image.detach().requires_grad_()
        c = signed.detach().requires_grad_()
        out = render_coc(img, c, None, method, backend=backend)
        torch.autograd.grad(out, (img, c), grad)
    return run_bwd


def format_table(rows: Sequence[BenchRow]) -> str:
    """The rows as a Markdown table (time, Mpix/s, speed-up over the reference)."""
    lines = ["| size | max coc | method | backend | mode | time (ms) | Mpix/s | speed-up |",
             "|---|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        sp = "—" if r.speedup is None else f"{r.speedup:.3g}×"
        lines.append(f"| {r.height}×{r.width} | {r.max_coc:g} | {r.method} | {r.backend} | {r.mode} | "
                     f"{r.ms:.4g} | {r.mpix_per_s:.3g} | {sp} |")
    return "\n".join(lines)
