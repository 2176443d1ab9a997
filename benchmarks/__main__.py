"""``python -m benchmarks`` (also ``lensblur bench``): sweep, time, write RESULTS.md and plots.

Sweeps (each row: time, throughput, speed-up vs the PyTorch reference of the same method measured
in the same run, and peak memory where measured):

* ``anchors``  — the ANCHORS workload (512² RGB, max coc 33 on CPU; also 1024²/33 and 2048²/65 on
  CUDA): every backend and both classical baselines, forward and forward+backward, peak memory.
* ``memory``   — peak memory at 2048², max coc 65 (fast backends; the reference with ``--full``).
* ``coc``      — throughput against the max coc (plotted per backend).
* ``size``     — throughput against the image size (plotted per backend).
* ``aperture`` — disk, hexagon, star image kernel.
* ``method``   — gather, scatter, layered (and the multi-plane conv2d baseline).
* ``frames``   — frames per second of the layered renderer on 3840×2160, max coc 65 (``--full``).

The quick sweep (default on CPU) runs in a few minutes on two cores; ``--full`` (default on CUDA)
uses larger images.  ``--smoke`` is a seconds-long check of the whole pipeline on tiny images.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

import lensblur

from .plots import line_chart
from .runner import (APERTURES, LIBRARY_METHODS, MODES, REPO_ROOT, Case, Result, library_backends,
                     measure, skip_reason, speedup)

SUITES = ("anchors", "memory", "coc", "size", "aperture", "method", "frames")


@dataclasses.dataclass
class Plan:
    """The workloads of one sweep preset."""

    anchors: Sequence[tuple]          # (size, max coc)
    memory: Sequence[tuple]
    coc_size: int
    cocs: Sequence[float]
    sizes: Sequence[int]
    size_coc: float
    sweep_size: int                   # aperture and method sweeps
    sweep_coc: float
    reference_in_memory: bool         # also measure the (slow) reference at the memory workload
    reference_memory_cap_s: Optional[float] = None   # ... stopped after this long (a lower bound)
    reference_memory_modes: Sequence[str] = MODES
    layered_frames: Optional[tuple] = None   # (h, w, max coc): frames per second of the layered render


PLANS = {
    "smoke": Plan(anchors=[(32, 5)], memory=[(64, 7)], coc_size=24, cocs=[3, 5], sizes=[16, 32],
                  size_coc=5, sweep_size=24, sweep_coc=5, reference_in_memory=True),
    "quick": Plan(anchors=[(512, 33)], memory=[(2048, 65)], coc_size=192, cocs=[3, 9, 17, 33],
                  sizes=[64, 128, 256, 512], size_coc=9, sweep_size=128, sweep_coc=17,
                  reference_in_memory=True, reference_memory_cap_s=20.0,
                  reference_memory_modes=("fwd",)),
    "full": Plan(anchors=[(512, 33), (1024, 33), (2048, 65)], memory=[(2048, 65)], coc_size=1024,
                 cocs=[9, 17, 33, 65], sizes=[256, 512, 1024, 2048, 4096], size_coc=33,
                 sweep_size=1024, sweep_coc=33, reference_in_memory=True,
                 layered_frames=(2160, 3840, 65)),
}


def _cases(plan: Plan, suite: str, backends: Sequence[str], device: torch.device) -> List[Case]:
    def lib(h, d, methods=("gather",), apertures=("disk",), baselines=(), modes=MODES, w=None):
        out = []
        for mode in modes:
            for ap in apertures:
                for m in methods:
                    for b in backends:
                        out.append(Case(h, w or h, d, ap, m, b, mode))
                for m in baselines:
                    out.append(Case(h, w or h, d, ap, m, "-", mode))
        return out

    if suite == "anchors":
        return [c for n, d in plan.anchors for c in lib(n, d, baselines=("naive", "mpi"))]
    if suite == "memory":
        fast = [b for b in backends if b != "torch" or plan.reference_in_memory]
        return [c for n, d in plan.memory for c in lib(n, d) if c.backend in fast
                and (c.backend != "torch" or c.mode in plan.reference_memory_modes)]
    if suite == "coc":
        return [c for d in plan.cocs for c in lib(plan.coc_size, d, baselines=("naive", "mpi"))]
    if suite == "size":
        return [c for n in plan.sizes for c in lib(n, plan.size_coc)]
    if suite == "aperture":
        return lib(plan.sweep_size, plan.sweep_coc, apertures=tuple(APERTURES))
    if suite == "method":
        return lib(plan.sweep_size, plan.sweep_coc, methods=LIBRARY_METHODS, baselines=("mpi",))
    if suite == "frames":     # fast backends only: the reference would take minutes per 4K frame
        if plan.layered_frames is None:
            return []
        h, w, d = plan.layered_frames
        return [c for c in lib(h, d, methods=("layered",), w=w) if c.backend != "torch"]
    raise ValueError(suite)


# ---------------------------------------------------------------------------------- report
def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(device: torch.device, argv: Sequence[str], preset: str, elapsed_s: float,
                   load_start=None, note: str = "") -> str:
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    if device.type == "cuda":
        dev = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        dev = f"CPU only, {torch.get_num_threads()} torch threads"
    lines = [
        "# lensblur benchmark results",
        "",
        f"* command: `{' '.join(['python -m benchmarks', *map(shlex.quote, argv)])}` "
        f"(preset `{preset}`, {elapsed_s / 60:.1f} min)",
        f"* date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"lensblur {lensblur.__version__} (git {_git_rev()})",
        f"* machine: {_cpu_model()}, {os.cpu_count()} cores; device: {dev}",
        f"* versions: Python {platform.python_version()}, torch {torch.__version__}, triton {triton_v}",
        f"* backends timed: {', '.join(library_backends(device))}"
        + ("" if "native" in library_backends(device) else " (native C++ backend not available in this run)"),
        (f"* load average (1/5/15 min) at the start: {load_start[0]:.1f} / {load_start[1]:.1f} / "
         f"{load_start[2]:.1f}, at the end: " if load_start else "* load average at the end: ")
        + f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
        + (" — the machine was shared with other jobs, so CPU times are noisy (± 2x); speed-ups are "
           "within one run and hold better than absolute times"
           if max(load[1], (load_start or (0, 0))[1]) > 0.5 * (os.cpu_count() or 1) else ""),
        *([f"* note: {note}"] if note else []),
        "",
        "Timing: " + ("`triton.testing.do_bench` medians (CUDA), " if device.type == "cuda" else "")
        + "`time.perf_counter` medians of repeated calls after a warm-up on CPU (one call when it "
          "takes over 2 s; rows under 1 s are timed twice, a few rows apart, and the lower median is "
          "kept, as bursts of load from other jobs can only slow a row down). `fwd` runs under `torch.no_grad()`; `fwd+bwd` backpropagates a fixed "
          "random gradient to the image and the coc. Workload: `benchmarks.workload.anchors_workload` "
          "(ANCHORS.md). Mpix/s = megapixels of output per second. *speed-up* = time of the PyTorch "
          "reference backend (`torch`) of the same method (for the baselines: the reference gather) "
          "measured in this run ÷ this row's time.",
        "",
        "Peak memory: " + ("`torch.cuda.max_memory_allocated` above what was allocated before the call."
                           if device.type == "cuda" else
                           "each row runs in a fresh process; the extra peak RSS (`VmHWM` after resetting "
                           "it via `/proc/self/clear_refs`) above the RSS with the inputs built."),
        "",
        "Baselines (plain PyTorch, `benchmarks/baselines.py`): **naive** = per-pixel gather over the "
        "full square window of the largest coc, no culling, autograd backward; **mpi** = multi-plane "
        "blur, 16 coc planes, one `conv2d` of premultiplied colour+alpha per plane with the aperture "
        "kernel of its size, composited back to front (occlusion-aware, comparable to `layered`).",
    ]
    return "\n".join(lines)


def _fmt(x: Optional[float], spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _table(results: List[Result], refs: Dict[Case, Result], with_memory: bool) -> str:
    head = "| size | max coc | aperture | method | backend | mode | time (ms) | Mpix/s | speed-up |"
    rule = "|---|---:|---|---|---|---|---:|---:|---:|"
    if with_memory:
        head += " peak memory (MiB) |"
        rule += "---:|"
    rows = [head, rule]
    for r in results:
        c = r.case
        ref = refs.get(c.reference())
        sp = speedup(ref.ms if ref else None, r.ms)
        sp_text = _ratio(sp) if sp else "—"
        if sp is None and ref is not None and ref.ms_at_least and r.ms:   # reference stopped early
            sp_text = "≥ " + _ratio(ref.ms_at_least / r.ms)
        if r.ms is not None:
            t = _ms(r.ms)
        elif r.ms_at_least:
            t = f"> {_ms(r.ms_at_least)} ({r.note})"
        else:
            t = f"— ({r.note})"
        row = (f"| {c.width}×{c.height} | {c.max_coc:g} | {c.aperture} | {c.method} | {c.backend} | "
               f"{c.mode} | {t} | {_fmt(r.mpix_per_s, '.3g')} | {sp_text} |")
        if with_memory:
            row += f" {'≥ ' if r.partial else ''}{_fmt(r.peak_mb, '.0f')} |"
        rows.append(row)
    return "\n".join(rows)


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def _ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 100 else f"{x:.3g}×"


BASELINE_NAMES = (("naive", "the naive full-window gather"), ("mpi", "the conv2d multi-plane blur"))


def _beats(results: List[Result]) -> str:
    """Sentences: which baseline (present in ``results``) each library row beats, by how much."""
    by = {(r.case.height, r.case.width, r.case.max_coc, r.case.aperture, r.case.method, r.case.backend,
           r.case.mode): r for r in results}
    present = {r.case.method for r in results if r.case.is_baseline}
    lines = []
    for r in results:
        c = r.case
        if c.is_baseline or r.ms is None:
            continue
        parts = []
        for base, name in BASELINE_NAMES:
            if base not in present:
                continue
            b = by.get((c.height, c.width, c.max_coc, c.aperture, base, "-", c.mode))
            if b is None or b.ms is None:
                parts.append(f"{name}: not measured ({b.note if b else 'absent'})")
                continue
            ratio = b.ms / r.ms
            parts.append(f"beats {name} {_ratio(ratio)}" if ratio > 1 else
                         f"loses to {name} ({_ratio(1 / ratio)} slower)")
        if parts:
            lines.append(f"* {c.width}×{c.height}, max coc {c.max_coc:g}, **{c.method}/{c.backend}**, "
                         f"{c.mode}: " + "; ".join(parts))
    return "\n".join(lines)


def _plot(results: List[Result], x_of, path: Path, title: str, xlabel: str, mode: str) -> Optional[Path]:
    series: Dict[str, list] = {}
    for r in results:
        if r.case.mode == mode and r.mpix_per_s is not None:
            series.setdefault(r.case.label, []).append((x_of(r.case), r.mpix_per_s))
    if not series:
        return None
    return line_chart(path, series, title=title, xlabel=xlabel, ylabel="throughput (Mpix/s, log)",
                      log_x=xlabel.startswith("image"))


SECTION_TITLES = {
    "anchors": "ANCHORS workload: every backend against the reference and both baselines",
    "memory": "Peak memory at the large workload",
    "coc": "Throughput against the max coc",
    "size": "Throughput against the image size",
    "aperture": "Aperture shapes",
    "method": "Methods: gather, scatter, layered",
    "frames": "Layered (occlusion-aware) rendering of 4K frames",
}


def write_report(path: Path, header: str, suites: Dict[str, List[Result]], refs: Dict[Case, Result],
                 device: torch.device) -> List[Path]:
    plot_dir = path.parent / "plots"
    parts, plots = [header, ""], []
    rel = lambda p: os.path.relpath(p, path.parent).replace(os.sep, "/")  # noqa: E731
    for name, results in suites.items():
        parts += [f"## {SECTION_TITLES[name]}", ""]
        mem = name in ("anchors", "memory") or device.type == "cuda"
        parts += [_table(results, refs, mem), ""]
        if name == "frames":
            parts += ["Frames per second: " + ", ".join(
                f"{r.case.label} {r.case.mode} {1e3 / r.ms:.1f} fps" for r in results if r.ms) + ".", ""]
        if name == "anchors":
            parts += ["Which baseline each backend beats (time of the baseline ÷ time of the backend, "
                      "same workload and mode, same run; the gather rows are compared with the mpi "
                      "blur as the alternative users would pick, though mpi also handles occlusion):",
                      "", _beats(results), ""]
        if name == "method":
            parts += ["The occlusion-aware methods side by side — the `layered` rows against the "
                      "multi-plane conv2d blur (mpi) that MPI renderers use:", "",
                      _beats([r for r in results if r.case.method in ("layered", "mpi")]), ""]
        for mode in MODES:
            tag = mode.replace("+", "_")
            if name == "coc":
                p = _plot(results, lambda c: c.max_coc, plot_dir / f"throughput_vs_coc_{tag}.png",
                          f"{mode}: throughput vs max coc ({results[0].case.width}x{results[0].case.height}, disk)",
                          "max coc (px)", mode)
            elif name == "size":
                p = _plot(results, lambda c: c.width, plot_dir / f"throughput_vs_size_{tag}.png",
                          f"{mode}: throughput vs image size (max coc {results[0].case.max_coc:g})",
                          "image width = height (px, log)", mode)
            else:
                p = None
            if p is not None:
                plots.append(p)
                parts += [f"![{name} {mode}]({rel(p)})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts).rstrip() + "\n")
    return plots


# ---------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark lensblur's blur backends against the PyTorch reference and two classical "
                    "baselines; print tables and write RESULTS.md with plots.",
        epilog="Examples: python -m benchmarks --quick | python -m benchmarks --full --device cuda | "
               "lensblur bench --smoke --no-write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="preset", action="store_const", const="quick",
                   help="small sweep, a few minutes on a 2-core CPU (default on CPU)")
    g.add_argument("--full", dest="preset", action="store_const", const="full",
                   help="large images and the ANCHORS GPU workloads (default on CUDA)")
    g.add_argument("--smoke", dest="preset", action="store_const", const="smoke",
                   help="tiny images, seconds: checks the pipeline, numbers mean little")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--suites", default=",".join(SUITES),
                   help=f"comma-separated subset of {','.join(SUITES)} (default all)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset of torch,native,triton (default: all available; "
                        "torch is always kept as the reference)")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "RESULTS.md"),
                   help="Markdown report path; plots go to plots/ next to it (default benchmarks/RESULTS.md)")
    p.add_argument("--no-write", action="store_true", help="print the tables only")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="skip baseline rows estimated to need more (default: a quarter of the free memory)")
    p.add_argument("--min-time", type=float, default=None,
                   help="CPU: repeat each row for at least this many seconds (default 0.5)")
    p.add_argument("--note", default="", help="a line of context for the report's header")
    p.add_argument("--single-pass", action="store_true",
                   help="CPU: time every row once (default: rows under 1 s are timed twice, the lower "
                        "median is kept, against bursts of load on shared machines)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _free_gb(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 ** 30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return 8.0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    preset = args.preset or ("full" if device.type == "cuda" else "quick")
    plan = PLANS[preset]
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    if plan.layered_frames is None and "frames" in suites and args.suites == ",".join(SUITES):
        suites.remove("frames")      # the default list: frames only in the full preset
    bad = [s for s in suites if s not in SUITES]
    if bad:
        print(f"benchmarks: error: unknown suite(s) {', '.join(bad)}; choose from {', '.join(SUITES)}",
              file=sys.stderr)
        return 2
    backends = list(library_backends(device))
    if args.backends:
        wanted = {b.strip() for b in args.backends.split(",")} | {"torch"}
        unknown = wanted - {"torch", "native", "triton"}
        if unknown:
            print(f"benchmarks: error: unknown backend(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        backends = [b for b in backends if b in wanted]
    if args.min_time is not None:   # read by runner.time_cpu, also in the memory subprocesses
        if args.min_time < 0:
            print("benchmarks: error: --min-time must be >= 0", file=sys.stderr)
            return 2
        os.environ["LENSBLUR_BENCH_MIN_TIME"] = str(args.min_time)
    limit = args.memory_limit_gb if args.memory_limit_gb is not None else 0.25 * _free_gb(device)

    plan_cases = {s: _cases(plan, s, backends, device) for s in suites}
    # every row's reference runs in the same sweep: add the ones a suite does not have itself
    for s, cases in plan_cases.items():
        if s in ("memory", "frames"):    # no reference rows added (too slow at these sizes)
            continue
        have = set(cases)
        for c in list(cases):
            ref = c.reference()
            if ref not in have:
                cases.insert(cases.index(c), ref)
                have.add(ref)
    total = sum(len(c) for c in plan_cases.values())
    print(f"lensblur benchmarks ({preset}) on {device}: {total} rows, backends {', '.join(backends)}",
          file=sys.stderr)

    from tqdm import tqdm

    bar = tqdm(total=total, desc="benchmarking", file=sys.stderr, disable=args.no_progress or None,
               leave=False)
    t_start = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    refs: Dict[Case, Result] = {}
    done: Dict[str, List[Result]] = {}
    for s, cases in plan_cases.items():
        results = []
        for c in cases:
            bar.set_postfix_str(f"{s}: {c.width}x{c.height} D={c.max_coc:g} {c.label} {c.mode}")
            why = skip_reason(c, device, limit)
            if why:
                res = Result(c, note=why)
            elif c in refs:          # the same reference row in two suites: measured once
                res = refs[c]
            else:
                mem = not args.no_memory and (s in ("anchors", "memory") or device.type == "cuda")
                cap = plan.reference_memory_cap_s if (s == "memory" and c.backend == "torch") else None
                try:
                    res = measure(c, device, memory=mem, cap_s=cap)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    res = Result(c, note="out of memory")
                except MemoryError:
                    res = Result(c, note="out of memory")
            if c.backend == "torch" and not c.is_baseline and c not in refs:
                refs[c] = res
            results.append(res)
            bar.update(1)
        # a shared machine has bursts of load: time the fast rows a second time, a little later,
        # and keep the lower median (a burst can only slow a row down)
        if device.type == "cpu" and not args.single_pass:
            for res in results:
                if res.ms is not None and res.ms < 1000 and not res.partial and res.reps > 1:
                    again = measure(res.case, device)
                    if again.ms is not None and again.ms < res.ms:
                        res.ms, res.reps = again.ms, again.reps
        done[s] = results
        print(f"\n## {SECTION_TITLES[s]}\n\n{_table(results, refs, s in ('anchors', 'memory'))}\n")
        if s == "anchors":
            print(_beats(results) + "\n")
    bar.close()
    elapsed = time.perf_counter() - t_start
    if not args.no_write:
        out = Path(args.out)
        header = machine_header(device, argv, preset, elapsed, load_start, args.note)
        plots = write_report(out, header, done, refs, device)
        print(f"wrote {out}" + (f" and {len(plots)} plots in {out.parent / 'plots'}" if plots else ""))
    print(f"benchmarks took {elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
