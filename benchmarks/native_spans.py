"""Native CPU kernels: O(radius) spans against a plain tiled tap-loop gather, in one run.

    PYTHONPATH=. python -m benchmarks.native_spans [--rounds 7] [--threads N] [--clock cpu]
                                                   [--memory] [--neighbour] [--no-timings]

Workload of ``shared/ANCHORS.md`` (``benchmarks.workload``), batch 1, float32, disk aperture.
Every round times the baseline (:func:`benchmarks.baselines.tap_gather`, the O(radius^2) tiled
tap loop in C++) and the library's native gather and scatter, forward and forward+backward,
back to back, and reports the medians over rounds of each time and of each ratio taken within a
round (so a machine that is slow for a while slows both sides of a ratio).  ``--clock cpu``
times with the process's CPU time instead of the wall clock: on a machine shared with other
jobs it measures the work, not the waiting for a core.

* ``--memory``: peak resident memory of a fresh process running forward+backward at 2048^2,
  max coc 65 (gather and scatter), minus the process's memory before the first call.
* ``--neighbour``: the issue-17 case (scatter forward+backward, 384^2, max coc 25) in fresh
  processes while one busy-looping neighbour process runs, with default settings and with
  ``OMP_WAIT_POLICY=PASSIVE``; before the kernels had their own passive thread pool the default
  was 8-12x slower.  Two rows: ``lensblur.defocus`` with autograd (which also runs PyTorch's own
  element-wise ops: input validation, gradient accumulation, on PyTorch's OpenMP threads) and
  the native operator's forward and backward alone.

Timings on a shared machine are noisy: read the ratios, not the milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

import lensblur
from benchmarks.baselines import tap_gather
from benchmarks.workload import anchors_workload

CASES = [(512, 33), (512, 65), (1024, 33), (1024, 65)]


_CLOCK = time.perf_counter


def _time(fn: Callable[[], object]) -> float:
    t = _CLOCK()
    fn()
    return (_CLOCK() - t) * 1e3


def _fwd(img, coc, method):
    return lambda: lensblur.defocus(img, coc, method=method, backend="native")


def _fwd_bwd(img, coc, method):
    i = img.clone().requires_grad_()
    c = coc.clone().requires_grad_()

    def run():
        out = lensblur.defocus(i, c, method=method, backend="native")
        out.backward(torch.ones_like(out))
    return run


def run_timings(rounds: int) -> Dict[tuple, List[float]]:
    """{(size, D, what): [ms per round]} for what in base, gather, scatter, gather_fb, scatter_fb."""
    fns = {}
    for h, d in CASES:
        img, coc, _ = anchors_workload(h, h, float(d))
        fns[(h, d, "base")] = lambda img=img, coc=coc: tap_gather(img, coc)
        for m in ("gather", "scatter"):
            fns[(h, d, m)] = _fwd(img, coc, m)
            fns[(h, d, m + "_fb")] = _fwd_bwd(img, coc, m)
    for f in fns.values():   # warm-up (and the one-time builds)
        f()
    res: Dict[tuple, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            res[k].append(_time(f))
    return res


def _median_ratio(a: List[float], b: List[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def report_timings(res, rounds: int) -> str:
    med = {k: statistics.median(v) for k, v in res.items()}
    clock = "CPU time" if _CLOCK is time.process_time else "wall clock"
    lines = [f"threads: {torch.get_num_threads()}, {clock}, rounds: {rounds} (medians; ratios "
             f"within a round)", "",
             "| size, max coc | tap-loop gather (baseline) | native gather fwd | / baseline | "
             "native scatter fwd | / baseline | gather fwd+bwd | / gather fwd | scatter fwd+bwd | "
             "/ scatter fwd |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for h, d in CASES:
        k = lambda w: (h, d, w)  # noqa: E731
        lines.append(
            f"| {h}², {d} | {med[k('base')]:.1f} ms | {med[k('gather')]:.1f} ms | "
            f"{_median_ratio(res[k('gather')], res[k('base')]):.2f}x | {med[k('scatter')]:.1f} ms | "
            f"{_median_ratio(res[k('scatter')], res[k('base')]):.2f}x | {med[k('gather_fb')]:.1f} ms | "
            f"{_median_ratio(res[k('gather_fb')], res[k('gather')]):.2f}x | "
            f"{med[k('scatter_fb')]:.1f} ms | {_median_ratio(res[k('scatter_fb')], res[k('scatter')]):.2f}x |")
    lines += ["", "Cost against blur size, time(max coc 65) / time(max coc 33) at the same size:", "",
              "| size | baseline | gather fwd | gather fwd+bwd | scatter fwd | scatter fwd+bwd |",
              "|---|---:|---:|---:|---:|---:|"]
    for h in sorted({h for h, _ in CASES}):
        cells = [f"{_median_ratio(res[(h, 65, w)], res[(h, 33, w)]):.2f}"
                 for w in ("base", "gather", "gather_fb", "scatter", "scatter_fb")]
        lines.append(f"| {h}² | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_MEMORY_CHILD = r"""
import resource, torch, lensblur
from benchmarks.workload import anchors_workload
img, coc, _ = anchors_workload(2048, 2048, 65.0)
lensblur.defocus(img[..., :64, :64], coc[..., :64, :64], backend="native")   # load the library
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for m in ("gather", "scatter"):
    i, c = img.clone().requires_grad_(), coc.clone().requires_grad_()
    out = lensblur.defocus(i, c, method=m, backend="native")
    out.backward(torch.ones_like(out))
    del out, i, c
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - before) / 1024.0)
"""

_NEIGHBOUR_CHILD = r"""
import statistics, time, torch, lensblur
from benchmarks.workload import anchors_workload
img, coc, _ = anchors_workload(384, 384, 25.0)
i, c = img.clone().requires_grad_(), coc.clone().requires_grad_()
from lensblur.ops import native as nat
ap = lensblur.Aperture.disk()
tab, prm = ap.table_padded(), ap.kernel_params()
def run():
    if MODE == "defocus":
        out = lensblur.defocus(i, c, method="scatter", backend="native")
        out.backward(torch.ones_like(out))
    else:
        out, den = nat.forward_impl(img, coc, tab, prm, "scatter")
        nat.backward_impl(torch.ones_like(out), img, coc, tab, prm, "scatter", out, den)
run()
ts = []
for _ in range(9):
    t = time.perf_counter(); run(); ts.append(time.perf_counter() - t)
print(statistics.median(ts) * 1e3)
"""


def _child(code: str, env_extra: Dict[str, str]) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def report_memory() -> str:
    mb = _child(_MEMORY_CHILD, {})
    return (f"Peak memory, 2048², max coc 65, gather then scatter forward+backward: "
            f"+{mb:.0f} MiB resident over the process before the first call.")


def report_neighbour(rounds: int) -> str:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        rows = []
        for mode, label in (("kernels", "native operator forward + backward"),
                            ("defocus", "`lensblur.defocus` + autograd backward")):
            code = _NEIGHBOUR_CHILD.replace("MODE", repr(mode))
            dflt, passive = [], []
            for _ in range(max(1, rounds // 2)):
                dflt.append(_child(code, {}))
                passive.append(_child(code, {"OMP_WAIT_POLICY": "PASSIVE"}))
            d, p = statistics.median(dflt), statistics.median(passive)
            rows.append(f"| {label} | {d:.1f} ms | {p:.1f} ms | {d / p:.2f}x |")
    finally:
        busy.kill()
        busy.wait()
    return (f"Busy neighbour (one busy-looping process), scatter fwd+bwd, 384², max coc 25, "
            f"{torch.get_num_threads()} threads, fresh processes, wall clock:\n\n"
            "| what | default settings | OMP_WAIT_POLICY=PASSIVE | default / passive |\n"
            "|---|---:|---:|---:|\n" + "\n".join(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--neighbour", action="store_true")
    ap.add_argument("--no-timings", action="store_true", help="skip the baseline table")
    args = ap.parse_args(argv)
    global _CLOCK
    _CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_timings:
        print(report_timings(run_timings(args.rounds), args.rounds), flush=True)
    if args.memory:
        print("\n" + report_memory(), flush=True)
    if args.neighbour:
        print("\n" + report_neighbour(args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
