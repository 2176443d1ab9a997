"""Benchmark cases, timing and peak-memory measurement.

A :class:`Case` is one row: image size, max coc, aperture, method, backend and mode (``fwd`` or
``fwd+bwd``).  :func:`measure` times it (``triton.testing.do_bench`` medians on CUDA,
``time.perf_counter`` medians on CPU) and, when asked, measures its peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
* CPU: the case runs in a fresh subprocess (``python -m benchmarks.runner CASE_JSON``) that
  resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) after building its inputs and
  reads ``VmHWM`` from ``/proc/self/status`` after one call — ``tracemalloc`` cannot see torch's
  allocations, and a fresh process keeps other rows' freed memory out of the number.

Methods ``gather``, ``scatter`` and ``layered`` are the library's; ``mpi`` and ``naive`` are the
classical baselines of :mod:`benchmarks.baselines` (plain PyTorch, backend ``-``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

import lensblur
from lensblur import Aperture

from .baselines import mpi_conv_blur, naive_gather, naive_gather_bytes
from .workload import anchors_workload

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY_METHODS = ("gather", "scatter", "layered")
BASELINE_METHODS = ("mpi", "naive")
MODES = ("fwd", "fwd+bwd")


def _star_kernel(n: int = 15, points: int = 5) -> torch.Tensor:
    """A filled five-pointed star on an ``n x n`` grid (an image aperture)."""
    ax = torch.linspace(-1, 1, n)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    r, t = torch.hypot(x, y), torch.atan2(y, x)
    edge = 0.55 + 0.4 * torch.cos(points * t).clamp_min(0) ** 2
    return (r <= edge).float()


APERTURES: Dict[str, Callable[[], Aperture]] = {
    "disk": Aperture.disk,
    "hexagon": lambda: Aperture.polygon(blades=6),
    "star": lambda: Aperture.from_image(_star_kernel()),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row (all fields are plain values so that it travels as JSON)."""

    height: int
    width: int
    max_coc: float
    aperture: str = "disk"
    method: str = "gather"
    backend: str = "torch"
    mode: str = "fwd"
    channels: int = 3

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINE_METHODS

    def reference(self) -> "Case":
        """The row this one's speed-up is measured against: the PyTorch reference backend of the
        same method (the reference gather for the baselines), same workload and mode."""
        method = "gather" if self.is_baseline else self.method
        return dataclasses.replace(self, method=method, backend="torch")

    @property
    def label(self) -> str:
        return self.method if self.is_baseline else f"{self.method}/{self.backend}"

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


@dataclasses.dataclass
class Result:
    case: Case
    ms: Optional[float] = None          # median time per call
    reps: int = 0
    peak_mb: Optional[float] = None     # extra memory during the call (MiB), None = not measured
    note: str = ""                      # why a row has no number
    partial: bool = False               # stopped at a time cap: peak_mb is a lower bound
    ms_at_least: Optional[float] = None  # partial rows: the call had run this long when stopped

    @property
    def mpix_per_s(self) -> Optional[float]:
        return None if self.ms is None else self.case.megapixels / (self.ms / 1e3)


def layered_available() -> bool:
    try:
        import lensblur.layered  # noqa: F401
    except ImportError:
        return False
    return True


def library_backends(device: torch.device):
    """Backends worth timing on ``device``: the reference first; Triton only on CUDA (on the CPU
    it runs under the interpreter, far too slow to benchmark)."""
    found = lensblur.available_backends(device)
    order = ("torch", "native", "triton")
    return tuple(b for b in order if b in found and not (b == "triton" and device.type != "cuda"))


def build_inputs(case: Case, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image, coc, signed_coc)`` of the ANCHORS workload; signed coc < 0 in front of focus."""
    image, coc, s = anchors_workload(case.height, case.width, case.max_coc, channels=case.channels,
                                     device=device)
    signed = case.max_coc * (1 - 2 * s.to(torch.float32))
    return image, coc, signed


def make_call(case: Case, image: torch.Tensor, coc: torch.Tensor, signed: torch.Tensor
              ) -> Tuple[Callable[[], None], list]:
    """A zero-argument callable running the case once (it returns the blurred image), and the
    tensors whose ``.grad`` to clear between calls."""
    ap = APERTURES[case.aperture]()
    if case.method in ("gather", "scatter"):
        def blur(i, c, sc):
            return lensblur.defocus(i, c, ap, method=case.method, backend=case.backend)
    elif case.method == "layered":
        from lensblur.layered import render_layered

        def blur(i, c, sc):
            return render_layered(i, sc, ap, backend=case.backend)
    elif case.method == "mpi":
        def blur(i, c, sc):
            return mpi_conv_blur(i, sc, ap)
    elif case.method == "naive":
        def blur(i, c, sc):
            return naive_gather(i, c, ap)
    else:
        raise ValueError(f"unknown method {case.method!r}")

    if case.mode == "fwd":
        def run():
            with torch.no_grad():
                return blur(image, coc, signed)
        return run, []
    img = image.detach().clone().requires_grad_(True)
    cc = coc.detach().clone().requires_grad_(True)
    sc = signed.detach().clone().requires_grad_(True)
    grad = torch.randn(image.shape, generator=torch.Generator().manual_seed(1)).to(image.device)

    def run_bwd():
        for t in (img, cc, sc):
            t.grad = None
        out = blur(img, cc, sc)
        out.backward(grad)
        return out.detach()
    return run_bwd, [img, cc, sc]


def warm_up(case: Case, device) -> None:
    """Run ``case``'s code path once on a tiny input (JIT builds, library loads, kernel caches),
    so that neither the timing nor the peak memory of the real call includes one-time costs."""
    tiny = dataclasses.replace(case, height=12, width=12, max_coc=min(case.max_coc, 5.0))
    run, _ = make_call(tiny, *build_inputs(tiny, device))
    run()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(run: Callable[[], None], min_time_s: Optional[float] = None, max_reps: int = 50,
             slow_s: float = 2.0, first_s: Optional[float] = None) -> Tuple[float, int]:
    """Median wall time (ms) of ``run``.  The first call (or ``first_s``, the duration of a call
    already made) is a warm-up unless it alone takes longer than ``slow_s``: then it is the only
    sample, one-time costs being negligible beside it.  Repeats for at least ``min_time_s``
    (default ``$LENSBLUR_BENCH_MIN_TIME`` or 0.5 s) and 3 calls (1 call when it is 0)."""
    if min_time_s is None:
        min_time_s = float(os.environ.get("LENSBLUR_BENCH_MIN_TIME", "0.5"))
    if first_s is None:
        t0 = time.perf_counter()
        run()
        first_s = time.perf_counter() - t0
    first = first_s
    if first > slow_s:
        return first * 1e3, 1
    times = []
    min_reps = 3 if min_time_s > 0 else 1      # --min-time 0: one timed call (smoke runs)
    while len(times) < max_reps and (sum(times) < min_time_s or len(times) < min_reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, len(times)


def time_cuda(run: Callable[[], None], grads: list) -> Tuple[float, int]:
    from triton.testing import do_bench

    ms = do_bench(run, warmup=25, rep=100, grad_to_none=grads or None, return_mode="median")
    return float(ms), 0


_BASE_KIB: list = []   # (RSS before the measured call, its start time), for a capped probe's report


def _rss_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_here(case: Case, device, *, memory: bool = False, time_it: bool = True) -> Result:
    """Measure ``case`` in this process (CPU memory needs a fresh process: see :func:`measure`)."""
    device = torch.device(device)
    warm_up(case, device)
    image, coc, signed = build_inputs(case, device)
    run, grads = make_call(case, image, coc, signed)
    res = Result(case)
    if device.type == "cuda":
        if memory:
            run()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run()
            torch.cuda.synchronize(device)
            res.peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        if time_it:
            res.ms, res.reps = time_cuda(run, grads)
        return res
    first = None
    if memory:  # only meaningful in a fresh process (benchmarks.runner's __main__)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_kib("VmRSS")
        _BASE_KIB[:] = [base, time.perf_counter()]
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
        res.peak_mb = (_rss_kib("VmHWM") - base) / 1024
        if not time_it:
            res.ms, res.reps = first * 1e3, 1
    if time_it:
        res.ms, res.reps = time_cpu(run, first_s=first)
    return res


def measure(case: Case, device, *, memory: bool = False, timeout_s: float = 600,
            cap_s: Optional[float] = None) -> Result:
    """Time ``case`` and, with ``memory``, measure its peak memory (CPU: in a fresh subprocess).

    ``cap_s`` (CPU memory rows): stop the call after that many seconds and report the peak
    reached so far as a lower bound (for the reference on large images, whose memory is reached
    within its first offsets but whose run takes minutes)."""
    device = torch.device(device)
    if not memory or device.type == "cuda":
        return measure_here(case, device, memory=memory)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "benchmarks.runner", json.dumps(dataclasses.asdict(case))]
    if cap_s is not None:
        cmd.append(str(cap_s))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT),
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Result(case, note=f"timed out after {timeout_s:.0f} s")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Result(case, note=f"failed: {tail[:120]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if data.get("partial"):
        return Result(case, peak_mb=data["peak_mb"], partial=True, ms_at_least=data.get("ms_at_least"),
                      note=f"stopped after {cap_s:g} s")
    return Result(case, ms=data["ms"], reps=data["reps"], peak_mb=data["peak_mb"])


def skip_reason(case: Case, device: torch.device, memory_limit_gb: float) -> str:
    """Why ``case`` cannot run here ("" when it can)."""
    if case.method == "layered" and not layered_available():
        return "lensblur.layered not available"
    if not case.is_baseline and case.backend not in library_backends(device):
        return f"backend {case.backend} not available"
    if case.method == "naive":
        need = naive_gather_bytes((1, case.channels, case.height, case.width), case.max_coc,
                                  case.mode == "fwd+bwd") / 2 ** 30
        if need > memory_limit_gb:
            return f"needs ~{need:.0f} GiB (> {memory_limit_gb:.1f} GiB limit)"
    return ""


def _probe_main(argv) -> int:
    """Subprocess entry: measure one case with peak RSS, print one JSON line.  An optional second
    argument caps the run (seconds): then the peak so far is printed and the process ends."""
    case = Case(**json.loads(argv[0]))
    torch.manual_seed(0)
    if len(argv) > 1:
        import threading

        def stop():
            peak = _rss_kib("VmHWM") - _BASE_KIB[0] if _BASE_KIB else None
            ran = (time.perf_counter() - _BASE_KIB[1]) * 1e3 if _BASE_KIB else None
            print(json.dumps({"ms": None, "reps": 0, "peak_mb": None if peak is None else peak / 1024,
                              "partial": True, "ms_at_least": ran}), flush=True)
            os._exit(0)
        timer = threading.Timer(float(argv[1]), stop)
        timer.daemon = True
        timer.start()
    # the naive gather's backward is memory-bound and slow: its one measured call is its timing
    res = measure_here(case, "cpu", memory=True, time_it=not (case.method == "naive" and case.mode != "fwd"))
    print(json.dumps({"ms": res.ms, "reps": res.reps, "peak_mb": res.peak_mb}))
    return 0


def speedup(ref_ms: Optional[float], ms: Optional[float]) -> Optional[float]:
    if ref_ms is None or ms is None or ms <= 0:
        return None
    return ref_ms / ms


def is_finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


if __name__ == "__main__":
    sys.exit(_probe_main(sys.argv[1:]))
