"""pytest-benchmark entry: ``pytest benchmarks/ --benchmark-only`` (never collected by ``make test``).

One group per mode; every library backend on the ANCHORS workload next to the PyTorch reference
and the two classical baselines (:mod:`benchmarks.baselines`).  The workload size defaults to
256², max coc 17 on CPU and 1024², max coc 33 on CUDA; override it with
``LENSBLUR_BENCH_SIZE`` and ``LENSBLUR_BENCH_COC``.  Compare rows with pytest-benchmark's own
table (``--benchmark-sort=mean``) or ``python -m benchmarks`` for speed-ups and memory.
"""

import os

import pytest
import torch

from benchmarks.runner import (LIBRARY_METHODS, MODES, Case, build_inputs, library_backends,
                               make_call, skip_reason, warm_up)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZE = int(os.environ.get("LENSBLUR_BENCH_SIZE", 1024 if DEVICE.type == "cuda" else 256))
MAX_COC = float(os.environ.get("LENSBLUR_BENCH_COC", 33 if DEVICE.type == "cuda" else 17))
MEMORY_LIMIT_GB = 4.0

ROWS = [(m, b) for m in LIBRARY_METHODS for b in ("torch", "native", "triton")] + \
    [("naive", "-"), ("mpi", "-")]


def _timed(run):
    if DEVICE.type != "cuda":
        return run

    def synced():
        out = run()
        torch.cuda.synchronize(DEVICE)
        return out
    return synced


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method,backend", ROWS, ids=[f"{m}-{b}" for m, b in ROWS])
def test_blur(benchmark, method, backend, mode):
    case = Case(SIZE, SIZE, MAX_COC, "disk", method, backend, mode)
    if backend != "-" and backend not in library_backends(DEVICE):
        pytest.skip(f"backend {backend} not available on {DEVICE.type}")
    why = skip_reason(case, DEVICE, MEMORY_LIMIT_GB)
    if why:
        pytest.skip(why)
    warm_up(case, DEVICE)
    run, _ = make_call(case, *build_inputs(case, DEVICE))
    benchmark.group = f"{mode}, {SIZE}x{SIZE}, max coc {MAX_COC:g}"
    benchmark.extra_info.update(method=method, backend=backend, megapixels=case.megapixels)
    slow = backend in ("torch", "-") and DEVICE.type == "cpu"
    if slow:   # the reference and the baselines take seconds per call on a CPU
        out = benchmark.pedantic(_timed(run), rounds=3, iterations=1, warmup_rounds=0)
    else:
        out = benchmark(_timed(run))
    assert out.shape == (1, 3, SIZE, SIZE) and bool(torch.isfinite(out).all())
