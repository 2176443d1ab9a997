"""``lensblur render`` on real photos: --focus-at, --depth-model, --aperture image:PATH, --save-depth."""

import numpy as np
import pytest
import torch
from PIL import Image

import lensblur
from lensblur import cli
from lensblur.depth_model import DepthModel, focus_depth_at, make_tiny_depth_checkpoint, relative_to_metric
from lensblur.io import read_image

LENS = ["--focal-length", "50", "--f-number", "1.4", "--sensor-width", "3"]


@pytest.fixture
def photo(tmp_path):
    """A 16x24 photo: left half far (6 m), right half near (1 m)."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    depth = np.full((16, 24), 6.0, np.float32)
    depth[:, 12:] = 1.0
    np.save(tmp_path / "depth.npy", depth)
    return tmp_path, depth


def _render(*args):
    return cli.main(["render", *map(str, args), "--method", "gather", "--backend", "torch", "--no-progress"])


def test_focus_at_equals_focus_on_the_median_depth(photo):
    tmp, depth = photo
    assert _render(tmp / "photo.png", tmp / "depth.npy", *LENS, "--focus-at", "20,8", "--out", tmp / "a.npy") == 0
    assert _render(tmp / "photo.png", tmp / "depth.npy", *LENS, "--focus", "1", "--out", tmp / "b.npy") == 0
    np.testing.assert_array_equal(np.load(tmp / "a.npy"), np.load(tmp / "b.npy"))
    # the near half is in focus: unchanged away from the edge
    lin = read_image(tmp / "photo.png")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(np.load(tmp / "a.npy")[:, 18:], lin[:, 18:], atol=1e-5)


def test_focus_depth_at_is_a_median_over_the_window():
    d = torch.full((1, 1, 9, 9), 3.0)
    d[0, 0, 4, 4] = 100.0                     # one outlier under the cursor
    d[0, 0, :, 7:] = 1.0
    assert focus_depth_at(d, 4, 4, window=5) == 3.0
    assert focus_depth_at(d, 8, 0, window=3) == 1.0          # clipped at the corner
    with pytest.raises(lensblur.LensBlurError, match="x"):
        focus_depth_at(d, 9, 0)


@pytest.mark.parametrize("bad, key", [("25,3", "outside"), ("a,b", "--focus-at"), ("3", "--focus-at")])
def test_bad_focus_at_exits_2(photo, capsys, bad, key):
    tmp, _ = photo
    code = _render(tmp / "photo.png", tmp / "depth.npy", *LENS, "--focus-at", bad, "--out", tmp / "o.png")
    assert code == 2 and key in capsys.readouterr().err


def test_exactly_one_focus_and_one_depth_source(photo, capsys):
    tmp, _ = photo
    assert _render(tmp / "photo.png", tmp / "depth.npy", *LENS, "--out", tmp / "o.png") == 2
    assert "--focus" in capsys.readouterr().err
    assert _render(tmp / "photo.png", *LENS, "--focus", "2", "--out", tmp / "o.png") == 2
    assert "--depth-model" in capsys.readouterr().err


def test_save_depth_writes_the_depth_used(photo):
    tmp, depth = photo
    for name in ("d.npy", "d.exr", "d.png"):
        assert _render(tmp / "photo.png", tmp / "depth.npy", *LENS, "--focus", "2",
                       "--out", tmp / f"o_{name}.png", "--save-depth", tmp / name) == 0
        torch.testing.assert_close(lensblur.io.read_depth(tmp / name, depth_scale=1000.0), torch.from_numpy(depth)[None, None])


def test_aperture_from_an_image_file(photo):
    tmp, _ = photo
    heart = np.zeros((15, 15), np.uint8)
    heart[2:13, 5:10] = 255                        # a tall slit: a non-round shape
    Image.fromarray(heart).save(tmp / "slit.png")
    args = [tmp / "photo.png", tmp / "depth.npy", *LENS, "--focus", "1"]
    assert _render(*args, "--aperture", f"image:{tmp / 'slit.png'}", "--out", tmp / "slit.npy") == 0
    assert _render(*args, "--aperture", "disk", "--out", tmp / "disk.npy") == 0
    img = read_image(tmp / "photo.png")
    depth = torch.from_numpy(np.load(tmp / "depth.npy"))[None, None]
    ap = lensblur.Aperture.from_image(torch.from_numpy(heart.astype(np.float32) / 255))
    ref = lensblur.render(img, depth, lensblur.ThinLens(50, 1.4, 1.0, sensor_width_mm=3.0), ap, "gather",
                          backend="torch")
    np.testing.assert_allclose(np.load(tmp / "slit.npy"), ref[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert not np.allclose(np.load(tmp / "slit.npy"), np.load(tmp / "disk.npy"), atol=1e-3)


@pytest.mark.parametrize("content, key", [(None, "not found"), (b"nope", "not a readable image"),
                                          ("black", "black")])
def test_bad_aperture_image_exits_2(photo, capsys, content, key):
    tmp, _ = photo
    path = tmp / "ap.png"
    if content == "black":
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    elif content is not None:
        path.write_bytes(content)
    code = _render(tmp / "photo.png", tmp / "depth.npy", *LENS, "--focus", "2", "--aperture", f"image:{path}",
                   "--out", tmp / "o.png")
    assert code == 2 and key in capsys.readouterr().err


def test_relative_to_metric_places_the_range():
    pred = torch.tensor([[[[0.0, 1.0, 3.0]]]])
    d = relative_to_metric(pred, (2.0, 10.0))
    torch.testing.assert_close(d[0, 0, 0, [0, 2]], torch.tensor([10.0, 2.0]))     # min -> far, max -> near
    torch.testing.assert_close(1 / d[0, 0, 0, 1], torch.tensor(0.1 + (0.5 - 0.1) / 3))   # linear in 1/depth
    with pytest.raises(lensblur.LensBlurError, match="depth_range_m"):
        relative_to_metric(pred, (5.0, 1.0))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("depth_models")
    return make_tiny_depth_checkpoint(d / "relative"), make_tiny_depth_checkpoint(d / "metric", metric_max_depth_m=20)


def test_depth_model_relative_and_metric(checkpoints):
    rel, met = checkpoints
    srgb = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    r = DepthModel.from_pretrained(rel)
    assert r.kind == "relative"
    d = r(srgb, depth_range_m=(1.5, 9.0))
    assert d.shape == (1, 1, 16, 24)
    assert float(d.min()) == pytest.approx(1.5, rel=1e-4) and float(d.max()) == pytest.approx(9.0, rel=1e-4)
    m = DepthModel.from_pretrained(met)
    assert m.kind == "metric"
    with torch.no_grad():
        raw = m.model(pixel_values=torch.zeros(1, 3, 14, 14)).predicted_depth
    assert float(raw.max()) <= 20.0
    dm = m(srgb)
    assert bool((dm > 0).all()) and float(dm.max()) <= 20.0
    torch.testing.assert_close(m(srgb, depth_range_m=(1.0, 2.0)), dm)      # metric: the range is ignored


def test_render_with_a_depth_model_and_saved_depth_reproduces(photo, checkpoints, capsys):
    tmp, _ = photo
    rel, _ = checkpoints
    args = [tmp / "photo.png", *LENS, "--focus-at", "5,5", "--depth-model", rel, "--depth-range", "1,8"]
    assert _render(*args, "--out", tmp / "a.npy", "--save-depth", tmp / "est.npy") == 0
    assert "focus at 5,5" in capsys.readouterr().err
    est = np.load(tmp / "est.npy")
    assert est.shape == (16, 24) and est.min() >= 1 - 1e-4 and est.max() <= 8 + 1e-4
    # the saved depth renders the same picture
    assert _render(tmp / "photo.png", tmp / "est.npy", *LENS, "--focus-at", "5,5", "--out", tmp / "b.npy") == 0
    np.testing.assert_allclose(np.load(tmp / "a.npy"), np.load(tmp / "b.npy"), atol=1e-6)
    # without --depth-range a relative model says what it assumed
    assert _render(tmp / "photo.png", *LENS, "--focus", "3", "--depth-model", rel, "--out", tmp / "c.png") == 0
    assert "relative depth model" in capsys.readouterr().err


def test_bad_depth_model_exits_2(photo, tmp_path, capsys):
    tmp, _ = photo
    code = _render(tmp / "photo.png", *LENS, "--focus", "2", "--depth-model", tmp_path / "nothing", "--out",
                   tmp / "o.png")
    assert code == 2 and "config.json" in capsys.readouterr().err
