"""EXIF reading (real JPEG files written with Pillow), validation and embedding."""

import math

import pytest
import torch
from PIL import Image, TiffImagePlugin

from lensblur import LensBlurError
from lensblur_models.exif import (EXIF_FIELDS, ExifData, ExifEmbedder, ExifError, exif_batch,
                                  normalize_exif, read_exif, validate_exif)

EXIF_IFD = 0x8769
FOCAL, FNUMBER, F35 = 0x920A, 0x829D, 0xA405
FP_XRES, FP_UNIT, PIXEL_X = 0xA20E, 0xA210, 0xA002


def write_jpeg(path, tags, size=(60, 40), ifd0=None):
    img = Image.new("RGB", size, (120, 80, 40))
    exif = Image.Exif()
    for k, v in (ifd0 or {}).items():
        exif[k] = v
    if tags:
        exif.get_ifd(EXIF_IFD).update(tags)
    img.save(path, "JPEG", exif=exif)
    return path


def rational(num, den):
    return TiffImagePlugin.IFDRational(num, den)


class TestReadExif:
    def test_full_frame_from_35mm_equivalent(self, tmp_path):
        # 3:2 image, f35 == f: full frame, 36 mm wide
        p = write_jpeg(tmp_path / "a.jpg", {FOCAL: rational(85, 1), FNUMBER: rational(14, 10), F35: 85})
        e = read_exif(p)
        assert e.focal_length_mm == 85.0 and e.f_number == pytest.approx(1.4)
        assert e.sensor_width_mm == pytest.approx(36.0, abs=1e-6)
        assert e.focal_length_35mm == 85.0

    def test_crop_sensor_uses_diagonal_and_aspect(self, tmp_path):
        # APS-C-like crop 1.5 on a 4:3 image: diagonal 43.27 / 1.5, width = diag * 4 / 5
        p = write_jpeg(tmp_path / "b.jpg", {FOCAL: rational(35, 1), FNUMBER: rational(28, 10), F35: 52},
                       size=(64, 48))
        e = read_exif(p)
        expected = math.hypot(36, 24) * 35 / 52 * 4 / 5
        assert e.sensor_width_mm == pytest.approx(expected, rel=1e-6)

    def test_focal_plane_resolution_fallback(self, tmp_path):
        # 6000 px over a 23.5 mm sensor: FocalPlaneXResolution in pixels per cm (unit 3)
        tags = {FOCAL: rational(50, 1), FNUMBER: rational(2, 1), FP_XRES: rational(600000, 235),
                FP_UNIT: 3, PIXEL_X: 6000}
        e = read_exif(write_jpeg(tmp_path / "c.jpg", tags))
        assert e.sensor_width_mm == pytest.approx(23.5, rel=1e-4)

    def test_tags_in_ifd0_and_open_image(self, tmp_path):
        p = write_jpeg(tmp_path / "d.jpg", {}, ifd0={FOCAL: rational(24, 1), FNUMBER: rational(8, 1)})
        with Image.open(p) as img:
            e = read_exif(img, default_sensor_width_mm=17.3)
        assert (e.focal_length_mm, e.f_number, e.sensor_width_mm) == (24.0, 8.0, 17.3)

    def test_missing_sensor_info_needs_default(self, tmp_path):
        p = write_jpeg(tmp_path / "e.jpg", {FOCAL: rational(50, 1), FNUMBER: rational(2, 1)})
        with pytest.raises(ExifError, match="sensor_width_mm"):
            read_exif(p)
        assert read_exif(p, default_sensor_width_mm=36.0).sensor_width_mm == 36.0

    @pytest.mark.parametrize("tags, field", [
        ({FOCAL: rational(50, 1)}, "f_number"),                                   # missing FNumber
        ({FNUMBER: rational(2, 1)}, "focal_length_mm"),                           # missing FocalLength
        ({FOCAL: rational(50, 1), FNUMBER: rational(0, 1), F35: 50}, "f_number"),  # f/0
        ({FOCAL: rational(0, 1), FNUMBER: rational(2, 1), F35: 50}, "focal_length_mm"),
        ({FOCAL: rational(50, 1), FNUMBER: rational(1, 0), F35: 50}, "f_number"),  # 1/0 -> not finite
        ({FOCAL: rational(50, 1), FNUMBER: rational(2, 1), F35: 1}, "sensor_width_mm"),  # 1800 mm wide
    ])
    def test_bad_exif_rejected_naming_the_field(self, tmp_path, tags, field):
        p = write_jpeg(tmp_path / "bad.jpg", tags)
        with pytest.raises(ExifError, match=field):
            read_exif(p)

    def test_no_exif_and_missing_file(self, tmp_path):
        p = tmp_path / "plain.jpg"
        Image.new("RGB", (8, 8)).save(p, "JPEG")
        with pytest.raises(ExifError, match="no EXIF"):
            read_exif(p)
        with pytest.raises(ExifError, match="source"):
            read_exif(tmp_path / "nope.jpg")
        assert issubclass(ExifError, ValueError) and issubclass(ExifError, LensBlurError)


class TestValidate:
    def test_types_and_ranges(self):
        with pytest.raises(TypeError, match="f_number"):
            validate_exif(50.0, "2.8", 36.0)
        with pytest.raises(ExifError, match="focal_length_mm"):
            validate_exif(float("nan"), 2.8, 36.0)
        with pytest.raises(ExifError, match="f_number"):
            validate_exif(50.0, 500.0, 36.0)
        with pytest.raises(ExifError, match="focal_length_mm"):
            validate_exif(None, 2.8, 36.0)
        e = validate_exif(50, 2.8, 36)
        assert isinstance(e, ExifData) and torch.equal(e.as_tensor(), torch.tensor([50.0, 2.8, 36.0]))

    def test_batch_tensor_and_normalisation(self):
        batch = exif_batch([validate_exif(8.0, 1.0, 4.0), validate_exif(800.0, 32.0, 60.0)])
        assert batch.shape == (2, len(EXIF_FIELDS))
        norm = normalize_exif(batch)
        assert torch.allclose(norm, torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), atol=1e-6)
        # log-linear: the geometric mean of the typical range maps to 0
        mid = normalize_exif(torch.tensor([[80.0, math.sqrt(32.0), math.sqrt(240.0)]]))
        assert torch.allclose(mid, torch.zeros(1, 3), atol=1e-6)
        with pytest.raises(ExifError, match="f_number"):
            normalize_exif(torch.tensor([[50.0, 0.0, 36.0]]))
        with pytest.raises(ExifError, match=r"\(B, 3\)"):
            normalize_exif(torch.ones(2, 4))
        with pytest.raises(TypeError):
            exif_batch([])


class TestEmbedder:
    def test_shape_distinct_and_differentiable(self):
        torch.manual_seed(0)
        emb = ExifEmbedder(dim=16)
        exif = torch.tensor([[50.0, 1.8, 36.0], [50.0, 16.0, 36.0], [200.0, 1.8, 23.5]])
        out = emb(exif)
        assert out.shape == (3, 16) and torch.isfinite(out).all()
        # different settings give different conditioning vectors
        assert (out[0] - out[1]).abs().max() > 1e-4 and (out[0] - out[2]).abs().max() > 1e-4
        out.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in emb.parameters())
        before = exif.clone()
        emb(exif)
        assert torch.equal(exif, before)


def test_load_exif_photos_crops_sensor_with_the_image(tmp_path):
    from lensblur_models.exif_defocus import load_exif_photos

    tags = {FOCAL: rational(50, 1), FNUMBER: rational(2, 1), F35: 50}
    write_jpeg(tmp_path / "a_landscape.jpg", tags, size=(60, 40))
    write_jpeg(tmp_path / "b_portrait.jpg", {**tags, FNUMBER: rational(4, 1)}, size=(40, 60))
    (tmp_path / "notes.txt").write_text("not a photo")
    batch = load_exif_photos(tmp_path, size=16)
    assert batch["target"].shape == (2, 3, 16, 16) and batch["exif"].shape == (2, 3)
    # solid colour survives (JPEG error only); display encoded in [0, 1]
    expected = torch.tensor([120.0, 80.0, 40.0]).view(3, 1, 1) / 255
    assert (batch["target"] - expected).abs().max() < 4 / 255
    # full frame: the 40 px square crop spans 40/60 of the 36 mm width (landscape) and the whole
    # 24 mm width of the portrait frame
    assert torch.allclose(batch["exif"], torch.tensor([[50.0, 2.0, 24.0], [50.0, 4.0, 24.0]]), atol=1e-4)
    write_jpeg(tmp_path / "c_bad.jpg", {FOCAL: rational(50, 1)})
    with pytest.raises(ExifError, match="c_bad.jpg.*f_number"):
        load_exif_photos(tmp_path, size=16)
    with pytest.raises(ValueError, match="size"):
        load_exif_photos([tmp_path / "a_landscape.jpg"], size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        load_exif_photos(tmp_path / "empty")
    with pytest.raises(ExifError, match="cannot be opened"):
        load_exif_photos(tmp_path / "missing.jpg")


def test_exif_photo_dataset_streams_like_load_exif_photos(tmp_path):
    from lensblur_models.exif_defocus import load_exif_photos
    from lensblur_models.exif_defocus.data import ExifPhotoDataset

    tags = {FOCAL: rational(50, 1), FNUMBER: rational(2, 1), F35: 50}
    write_jpeg(tmp_path / "a_landscape.jpg", tags, size=(60, 40))
    write_jpeg(tmp_path / "b_portrait.jpg", {**tags, FNUMBER: rational(4, 1)}, size=(40, 60))
    ds = ExifPhotoDataset(tmp_path, size=16, crop="center")
    batch = load_exif_photos(tmp_path, size=16)
    assert len(ds) == 2
    for i in range(2):
        item = ds[i]
        assert item["target"].shape == (3, 16, 16) and not bool(item["has_depth"])
        assert torch.allclose(item["exif"], batch["exif"][i], atol=1e-4)  # the crop's sensor width
        assert (item["target"] - batch["target"][i]).abs().max() < 4 / 255
    rnd = ExifPhotoDataset(tmp_path, size=16, seed=1)
    assert torch.equal(rnd[0]["target"], rnd[0]["target"])  # a crop is a function of (seed, index)
