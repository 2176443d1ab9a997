"""``lensblur bench`` (the package's own table, :mod:`lensblur.bench`) and the full suite
(``python -m benchmarks`` in the checkout)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import lensblur
from lensblur import LensBlurError, cli
from lensblur.bench import anchors_workload, format_table, run_bench

ROOT = Path(__file__).resolve().parents[1]


def test_run_bench_rows_and_speedups():
    rows = run_bench(sizes=(12,), max_cocs=(3.0,), methods=("gather", "scatter"), backends=("torch",),
                     modes=("fwd", "fwd+bwd"), min_time_s=0.0, max_reps=2)
    assert [(r.method, r.mode) for r in rows] == [("gather", "fwd"), ("scatter", "fwd"),
                                                 ("gather", "fwd+bwd"), ("scatter", "fwd+bwd")]
    assert all(r.ms > 0 and r.speedup == 1.0 and r.mpix_per_s > 0 for r in rows)
    table = format_table(rows)
    assert table.count("\n") == 5 and "| 12×12 | 3 | scatter | torch | fwd+bwd |" in table


def test_speedup_is_the_reference_time_over_the_row_time(monkeypatch):
    """The reference row is timed first and every other row is divided into it."""
    times = iter([8.0, 2.0])
    monkeypatch.setattr(lensblur.bench, "_time", lambda run, dev, t, n: (next(times), 1))
    monkeypatch.setattr(lensblur.bench, "available_backends", lambda dev: ("native", "torch"))
    rows = run_bench(sizes=(8,), max_cocs=(2.0,), methods=("gather",), min_time_s=0.0)
    assert [(r.backend, r.ms, r.speedup) for r in rows] == [("torch", 8.0, 1.0), ("native", 2.0, 4.0)]


def test_workload_is_the_anchors_one():
    image, coc, s = anchors_workload(20, 24, 7.0)
    assert image.shape == (1, 3, 20, 24) and coc.shape == (1, 1, 20, 24)
    assert float(coc.max()) == pytest.approx(7.0) and float(coc.min()) >= 0
    torch.testing.assert_close(coc, 7.0 * (2 * s - 1).abs())
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(image, torch.rand(1, 3, 20, 24, generator=g))


@pytest.mark.parametrize("kw, name", [(dict(backends=("nope",)), "backends"), (dict(methods=("blur",)), "methods"),
                                      (dict(modes=("bwd",)), "modes"), (dict(sizes=(0,)), "sizes"),
                                      (dict(max_cocs=(-1.0,)), "max_cocs")])
def test_bad_arguments_name_themselves(kw, name):
    with pytest.raises(LensBlurError, match=name):
        run_bench(**kw)


@pytest.mark.slow   # a fresh interpreter imports torch
def test_cli_bench_prints_the_table_without_the_checkout(tmp_path):
    """With the checkout's ``benchmarks`` package unimportable (as for an installed wheel), the
    command still works: it needs only the package."""
    code = ("import sys; sys.modules['benchmarks'] = None   # any import of it raises ImportError\n"
            "from lensblur.cli import main\n"
            "sys.exit(main(['bench', '--size', '16', '--max-coc', '3', '--methods', 'gather',\n"
            "               '--backends', 'torch', '--min-time', '0', '--no-progress', '--device', 'cpu']))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=tmp_path,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| 16×16 | 3 | gather | torch | fwd |" in r.stdout and "1×" in r.stdout


def test_cli_bench_bad_backend_exits_2(capsys):
    code = cli.main(["bench", "--backends", "nope", "--size", "8", "--no-progress"])
    assert code == 2 and "backends" in capsys.readouterr().err


@pytest.mark.slow   # the whole pipeline of the full suite on tiny images (~1 min on a loaded machine)
def test_full_suite_runs_and_writes_results(tmp_path):
    out = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--suites", "anchors,coc", "--backends",
                        "torch", "--no-memory", "--min-time", "0", "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    # every row against the reference of the same run; the reference itself is 1x
    rows = [line.split("|") for line in r.stdout.splitlines() if line.startswith("| 32×32 | 5 |")]
    assert {row[4].strip() for row in rows} == {"gather", "naive", "mpi"}
    ref = [row for row in rows if row[4:6] == [" gather ", " torch "]]
    assert len(ref) == 2 and all(row[9].strip() == "1×" for row in ref)
    speedups = [float(row[9].strip().rstrip("×").replace(",", "")) for row in rows]
    assert all(x > 0 for x in speedups)
    assert "beats" in r.stdout or "loses to" in r.stdout
    text = out.read_text()
    assert "machine:" in text and "torch " in text and "python -m benchmarks --smoke" in text
    for mode in ("fwd", "fwd_bwd"):
        png = tmp_path / "plots" / f"throughput_vs_coc_{mode}.png"
        assert f"plots/{png.name}" in text
        with Image.open(png) as im:
            assert im.size == (760, 480)
