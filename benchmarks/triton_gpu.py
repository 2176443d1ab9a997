"""Triton kernels vs the PyTorch reference on a CUDA GPU: image size x max coc sweep.

For every image size (256^2 ... 4K) and maximum coc diameter ``D`` (5 ... 65 px) this times
``lensblur.defocus(..., backend="triton")`` and ``backend="torch"`` (the plain PyTorch reference,
in the same run) for the gather and the scatter method, forward and forward+backward, on the
exact workload of ``shared/ANCHORS.md`` (:func:`benchmarks.workload.anchors_workload`: uniform
random RGB image, smooth coc field ``D |2 s - 1|``).  Times are ``triton.testing.do_bench``
medians (with the 20 % / 80 % quantiles) in milliseconds; memory is the peak of
``torch.cuda.max_memory_allocated`` above what the inputs already hold.  The reference only runs
where it finishes in reasonable time (``--ref-max-work``); its output also checks the kernels
(``max |err|`` of the forward output).

Usage (on a machine with a CUDA GPU)::

    python -m benchmarks.triton_gpu                      # the full sweep
    python -m benchmarks.triton_gpu --quick              # the two ANCHORS points only
    python -m benchmarks.triton_gpu --sizes 1024 --max-coc 33 --methods gather --modes fwd

It prints a markdown table (device, versions and command included), writes it to ``--out`` and,
when matplotlib is installed, a plot to ``--plot``.  Without CUDA it exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

#: Named image sizes ``(H, W)``; "4K" is UHD 3840x2160.
SIZES: Dict[str, tuple] = {"256": (256, 256), "512": (512, 512), "1024": (1024, 1024),
                           "2048": (2048, 2048), "4K": (2160, 3840)}
MAX_COCS = (5, 9, 17, 33, 65)
METHODS = ("gather", "scatter")
MODES = ("fwd", "fwd+bwd")
#: ANCHORS.md targets on an H100 (ms): (size, D) -> (forward, forward+backward).
TARGETS = {("1024", 33): (0.3, 1.0), ("2048", 65): (1.5, 5.0)}
HERE = Path(__file__).resolve().parent


def _aperture(name: str):
    import lensblur
    if name == "disk":
        return lensblur.Aperture.disk()
    if name == "hexagon":
        return lensblur.Aperture.polygon(blades=6)
    if name == "star":
        ax = torch.linspace(-1, 1, 15)
        y, x = torch.meshgrid(ax, ax, indexing="ij")
        edge = 0.55 + 0.4 * torch.cos(5 * torch.atan2(y, x))
        return lensblur.Aperture.from_image((torch.hypot(x, y) <= edge).float())
    raise SystemExit(f"unknown --aperture {name!r}: choose disk, hexagon or star")


def _bench(fn, rep_ms: float) -> List[float]:
    """``[median, q20, q80]`` milliseconds of ``fn`` (CUDA events, after warm-up)."""
    import triton.testing
    res = triton.testing.do_bench(fn, warmup=max(5, int(rep_ms / 4)), rep=int(rep_ms),
                                  quantiles=[0.5, 0.2, 0.8])
    return [float(v) for v in res]


def _peak_mib(fn) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def run_case(size: str, max_coc: float, method: str, mode: str, backend: str, aperture,
             dtype: torch.dtype, rep_ms: float) -> dict:
    """Time one row; returns times, peak memory and the forward output (for the error check)."""
    import lensblur
    from benchmarks.workload import anchors_workload
    h, w = SIZES[size]
    image, coc, _ = anchors_workload(h, w, max_coc, device="cuda", dtype=dtype)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                return lensblur.defocus(image, coc, aperture, method=method, backend=backend)
    else:
        img = image.clone().requires_grad_()
        c = coc.clone().requires_grad_()
        grad = torch.randn(image.shape, generator=torch.Generator().manual_seed(1)).to(image)

        def step():
            out = lensblur.defocus(img, c, aperture, method=method, backend=backend)
            return torch.autograd.grad(out, (img, c), grad)
    step()                                                      # compile / warm caches
    times = _bench(step, rep_ms)
    mem = _peak_mib(step)
    with torch.no_grad():
        out = lensblur.defocus(image, coc, aperture, method=method, backend=backend)
    return dict(ms=times, mib=mem, out=out.float())


def _fmt_ms(t: Optional[List[float]]) -> str:
    if t is None:
        return "—"
    return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]" if t[0] < 10 else f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}]"


def header(args) -> List[str]:
    import triton
    props = torch.cuda.get_device_properties(0)
    return [
        "# Triton kernels vs the PyTorch reference",
        "",
        f"- device: {torch.cuda.get_device_name(0)} ({props.total_memory / 2 ** 30:.0f} GiB, "
        f"{props.multi_processor_count} SMs)",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
        f"Python {platform.python_version()}",
        f"- command: `python -m benchmarks.triton_gpu {' '.join(sys.argv[1:])}`".rstrip(),
        f"- workload: ANCHORS.md (`benchmarks.workload.anchors_workload`), batch 1, RGB, "
        f"{args.dtype}, aperture {args.aperture}; times are `triton.testing.do_bench` medians "
        f"[20 %, 80 % quantiles] in ms; memory is the peak above the inputs",
        "",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--max-coc", nargs="+", type=float, default=list(MAX_COCS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--aperture", default="disk", choices=("disk", "hexagon", "star"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--quick", action="store_true",
                   help="only the ANCHORS points (1024^2 D=33, 2048^2 D=65)")
    p.add_argument("--ref-max-work", type=float, default=2048 * 2048 * 65 * 65,
                   help="run the reference only where H*W*D^2 is at most this (it is slow)")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--rep-ms", type=float, default=200.0, help="do_bench time per row (ms)")
    p.add_argument("--out", default=str(HERE / "triton_gpu_results.md"))
    p.add_argument("--plot", default=str(HERE / "triton_gpu_results.png"))
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("benchmarks.triton_gpu needs a CUDA GPU (torch.cuda.is_available() is False); "
              "on CPU the Triton kernels only run under the interpreter, which is not "
              "benchmarkable.  Run `python -m benchmarks` for the CPU table.", file=sys.stderr)
        return 2
    from lensblur.ops import triton_blur
    if not triton_blur.is_available("cuda"):
        print("benchmarks.triton_gpu: the Triton backend is unavailable on this CUDA machine "
              "(triton missing, or TRITON_INTERPRET=1 set)", file=sys.stderr)
        return 2

    dtype = getattr(torch, args.dtype)
    aperture = _aperture(args.aperture)
    points = ([("1024", 33.0), ("2048", 65.0)] if args.quick else
              [(s, d) for s in args.sizes for d in args.max_coc])
    lines = header(args)
    lines += ["| size | D | method | mode | triton ms | reference ms | speed-up | triton MiB "
              "| ref MiB | max abs err |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    rows = []
    for size, d in points:
        h, w = SIZES[size]
        for method in args.methods:
            for mode in args.modes:
                t0 = time.perf_counter()
                tri = run_case(size, d, method, mode, "triton", aperture, dtype, args.rep_ms)
                ref = None
                if not args.no_reference and h * w * d * d <= args.ref_max_work:
                    try:
                        ref = run_case(size, d, method, mode, "torch", aperture, dtype,
                                       args.rep_ms)
                    except torch.cuda.OutOfMemoryError:
                        ref = dict(ms=None, mib=math.inf, out=None)
                    torch.cuda.empty_cache()
                err = (float((tri["out"] - ref["out"]).abs().max())
                       if ref is not None and ref["out"] is not None else None)
                speed = (ref["ms"][0] / tri["ms"][0]
                         if ref is not None and ref["ms"] is not None else None)
                row = dict(size=size, d=d, method=method, mode=mode, tri=tri["ms"],
                           ref=None if ref is None else ref["ms"], speed=speed, tri_mib=tri["mib"],
                           ref_mib=None if ref is None else ref["mib"], err=err)
                rows.append(row)
                line = format_row(row)
                lines.append(line)
                print(line, f"<!-- {time.perf_counter() - t0:.0f} s -->", flush=True)
                del tri, ref
                torch.cuda.empty_cache()

    summary = target_summary(rows)
    lines += summary
    print("\n".join(summary))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.out}")
    plot(rows, args.plot, torch.cuda.get_device_name(0))
    return 0


def format_row(row: dict) -> str:
    """One markdown table row (``ref`` None: not run; ``ref_mib`` inf: out of memory)."""
    ref_mib = row["ref_mib"]
    ref_mib = "—" if ref_mib is None else "OOM" if math.isinf(ref_mib) else f"{ref_mib:.0f}"
    ref_ms = "OOM" if row["ref_mib"] is not None and math.isinf(row["ref_mib"]) \
        else _fmt_ms(row["ref"])
    speed, err, size = row["speed"], row["err"], row["size"]
    return (f"| {size if size == '4K' else size + '²'} | {row['d']:g} | {row['method']} | "
            f"{row['mode']} | {_fmt_ms(row['tri'])} | {ref_ms} | "
            f"{'—' if speed is None else f'{speed:.0f}×'} | {row['tri_mib']:.0f} | {ref_mib} | "
            f"{'—' if err is None else f'{err:.1e}'} |")


def target_summary(rows: List[dict]) -> List[str]:
    """Lines comparing the gather rows at the ANCHORS points with the H100 targets."""
    out = []
    for (size, d), (t_f, t_fb) in TARGETS.items():
        for r in rows:
            if r["size"] == size and r["d"] == d and r["method"] == "gather":
                target = t_f if r["mode"] == "fwd" else t_fb
                verdict = "meets" if r["tri"][0] <= target else "MISSES"
                out.append(f"- {size}², D={d:g}, gather {r['mode']}: {r['tri'][0]:.3f} ms "
                           f"(H100 target ≤ {target} ms: {verdict})")
    return ["", "ANCHORS targets:"] + out if out else []


def plot(rows: List[dict], path: str, device_name: str) -> List[str]:
    """Milliseconds against max coc, one panel per image size; returns the files written.

    Uses matplotlib when it is installed, else the Pillow charts of :mod:`benchmarks.plots`
    (one PNG per image size, ``<path stem>_<size>.png``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(rows, path, device_name)
    sizes = sorted({r["size"] for r in rows}, key=lambda s: math.prod(SIZES[s]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for method, colour in (("gather", "tab:blue"), ("scatter", "tab:orange")):
            for mode, style in (("fwd", "-"), ("fwd+bwd", "--")):
                sel = sorted((r for r in rows if r["size"] == size and r["method"] == method
                              and r["mode"] == mode), key=lambda r: r["d"])
                if not sel:
                    continue
                ax.plot([r["d"] for r in sel], [r["tri"][0] for r in sel], style, color=colour,
                        marker="o", label=f"triton {method} {mode}")
                ref = [(r["d"], r["ref"][0]) for r in sel if r["ref"] is not None]
                if ref:
                    ax.plot(*zip(*ref), style, color=colour, alpha=0.35, marker="x",
                            label=f"reference {method} {mode}")
        ax.set_yscale("log")
        ax.set_xlabel("max coc D (px)")
        ax.set_title(size if size == "4K" else f"{size}²")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ms (median)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"lensblur Triton vs reference — {device_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
    return [path]


def _plot_pillow(rows: List[dict], path: str, device_name: str) -> List[str]:
    try:
        from benchmarks.plots import line_chart
    except ImportError as exc:                        # Pillow missing: the table is enough
        print(f"no plot ({exc})")
        return []
    written = []
    stem = Path(path)
    for size in sorted({r["size"] for r in rows}, key=lambda s: math.prod(SIZES[s])):
        series = {}
        for r in rows:
            if r["size"] != size:
                continue
            series.setdefault(f"triton {r['method']} {r['mode']}", []).append((r["d"], r["tri"][0]))
            if r["ref"] is not None:
                series.setdefault(f"ref {r['method']} {r['mode']}", []).append((r["d"], r["ref"][0]))
        out = stem.with_name(f"{stem.stem}_{size}{stem.suffix or '.png'}")
        line_chart(out, series, title=f"{size if size == '4K' else size + '²'} — {device_name}",
                   xlabel="max coc D (px)", ylabel="ms (median)", log_y=True)
        written.append(str(out))
        print(f"wrote {out}")
    return written


if __name__ == "__main__":
    sys.exit(main())
