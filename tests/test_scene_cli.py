import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lensblur.scene import make_scene


def test_scene_is_deterministic_and_physical():
    a_img, a_depth = make_scene(40, 60, seed=3)
    b_img, b_depth = make_scene(40, 60, seed=3)
    assert torch.equal(a_img, b_img) and torch.equal(a_depth, b_depth)
    assert a_img.shape == (1, 3, 40, 60) and a_depth.shape == (1, 1, 40, 60)
    assert float(a_depth.min()) > 0.5 and float(a_depth.max()) <= 12.0 + 1e-4
    assert float(a_img.max()) > 2.0  # emissive highlights for bokeh
    assert len(torch.unique((a_depth * 10).round())) > 10  # many depths


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lensblur", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_demo_writes_renders_and_contact_sheet(tmp_path):
    r = run_cli("demo", "--out", str(tmp_path), "--height", "40", "--width", "64", "--f-numbers", "1.4", "8",
                "--focus", "1.2", "--method", "gather", "--backend", "torch", "--no-progress")
    assert r.returncode == 0, r.stderr
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png"))
    assert sheet.shape[1] == 2 * 64
    wide = np.asarray(Image.open(tmp_path / "focus1.2m_f1.4.png")).astype(float)
    narrow = np.asarray(Image.open(tmp_path / "focus1.2m_f8.png")).astype(float)
    # wide open is blurrier: less high-frequency energy
    hf = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert hf(wide) < hf(narrow)
    assert "time (ms)" in r.stdout


def test_render_command_on_files(tmp_path):
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    depth = np.full((20, 30), 5.0)
    depth[:, 15:] = 1.0
    np.save(tmp_path / "depth.npy", depth)
    r = run_cli("render", str(tmp_path / "photo.png"), str(tmp_path / "depth.npy"), "--focal-length", "50",
                "--f-number", "1.4", "--focus", "1.0", "--sensor-width", "6", "--method", "gather",
                "--backend", "torch", "--out", str(tmp_path / "out.png"))
    assert r.returncode == 0, r.stderr
    out = np.asarray(Image.open(tmp_path / "out.png")).astype(float)
    # in-focus right half unchanged, far left half blurred
    assert np.abs(out[:, 20:] - img[:, 20:]).max() <= 1
    assert np.abs(np.diff(out[:, :10], axis=1)).mean() < 0.7 * np.abs(np.diff(img[:, :10], axis=1)).mean()


@pytest.mark.parametrize("case", ["missing", "mismatch", "negative", "bad_lens"])
def test_render_command_errors(tmp_path, case):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "photo.png")
    np.save(tmp_path / "depth.npy", np.full((10, 12), 2.0))
    np.save(tmp_path / "small.npy", np.full((9, 12), 2.0))
    np.save(tmp_path / "neg.npy", np.full((10, 12), -2.0))
    depth = {"missing": "nope.npy", "mismatch": "small.npy", "negative": "neg.npy", "bad_lens": "depth.npy"}[case]
    fnum = "0" if case == "bad_lens" else "2"
    r = run_cli("render", str(tmp_path / "photo.png"), str(tmp_path / depth), "--focal-length", "50",
                "--f-number", fnum, "--focus", "2", "--out", str(tmp_path / "o.png"))
    assert r.returncode == 2
    assert "error" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    key = {"missing": "not found", "mismatch": "same size", "negative": "> 0", "bad_lens": "f_number"}[case]
    assert key in r.stderr
