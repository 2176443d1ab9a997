"""Training data: synthetic defocused photos with known focus, and real photos with EXIF.

:func:`load_exif_photos` reads real photos and their EXIF into a training batch.
:func:`make_focus_dataset` builds synthetic photos from :func:`lensblur.scene.make_scene`.

Each synthetic sample is a square crop of a procedural scene, viewed by a lens whose field of view matches
the crop (a crop of ``1/k`` of the frame is a ``k`` times longer lens on the same 36 mm sensor),
with the whole world scaled by a random factor (a scaled scene looks identical but its blur does
not), focused like a camera's **centre autofocus point**: on the median depth of the central
``af_window x af_window`` pixels.  The target is rendered with :func:`lensblur.render` at that focus and a
random f-number.  The focus is therefore a function of the image content and depth — learnable by
a Focus Distance Transformer — while a constant predictor cannot know it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

import lensblur
from lensblur.scene import SCENE_FOCAL_LENGTH_MM, SCENE_SENSOR_WIDTH_MM, make_scene

__all__ = ["make_focus_dataset", "load_exif_photos", "ExifPhotoDataset"]

_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")


def make_focus_dataset(num: int, size: int = 32, *, seed: int = 0, scene_size: int = 96,
                       f_numbers: Sequence[float] = (1.4, 2.0, 2.8), depth_scale: Sequence[float] = (0.5, 2.0),
                       af_window: int = 4, method: str = "gather", backend: str = "auto",
                       num_scenes: int = 4) -> Dict[str, torch.Tensor]:
    """Build ``num`` synthetic (all-in-focus, depth, EXIF, focus, defocused target) samples.

    Args:
        num: number of samples.
        size: crop side in pixels (the rendered photo is ``size x size``).
        seed: everything is deterministic given the seed.
        scene_size: side of the square scene renders the crops come from (larger = longer lenses).
        f_numbers: f-numbers drawn uniformly per sample.
        depth_scale: ``(lo, hi)``: the world is scaled by a log-uniform factor in this range.
        af_window: side of the central autofocus window in pixels.
        method, backend: passed to :func:`lensblur.render` for the targets.
        num_scenes: number of distinct scene seeds.

    Returns:
        dict with ``aif`` ``(num, 3, size, size)`` (linear radiance), ``depth`` ``(num, 1, size,
        size)`` metres, ``exif`` ``(num, 3)`` ``[focal_length_mm, f_number, sensor_width_mm]``,
        ``focus_distance_m`` ``(num,)`` and ``target`` ``(num, 3, size, size)``.

    Example:
        >>> data = make_focus_dataset(2, size=16, scene_size=32)
        >>> data["target"].shape, data["exif"][0, 2].item()
        (torch.Size([2, 3, 16, 16]), 36.0)
    """
    if num < 1 or size < 8 or scene_size < size:
        raise ValueError(f"need `num` >= 1, `size` >= 8 and `scene_size` >= `size`, got {num}, {size}, {scene_size}")
    gen = torch.Generator().manual_seed(seed)
    scenes = [make_scene(scene_size, scene_size, seed=seed * 1000 + i) for i in range(num_scenes)]
    focal = SCENE_FOCAL_LENGTH_MM * scene_size / size
    lo, hi = (float(v) for v in depth_scale)
    aif, depth, exif, focus = [], [], [], []
    c0 = size // 2 - af_window // 2
    for _ in range(num):
        img, dep = scenes[int(torch.randint(num_scenes, (1,), generator=gen))]
        y = int(torch.randint(scene_size - size + 1, (1,), generator=gen))
        x = int(torch.randint(scene_size - size + 1, (1,), generator=gen))
        k = lo * (hi / lo) ** float(torch.rand(1, generator=gen))  # log-uniform
        n = float(f_numbers[int(torch.randint(len(f_numbers), (1,), generator=gen))])
        crop_d = dep[..., y:y + size, x:x + size] * k
        aif.append(img[..., y:y + size, x:x + size])
        depth.append(crop_d)
        focus.append(float(crop_d[..., c0:c0 + af_window, c0:c0 + af_window].median()))
        exif.append([focal, n, SCENE_SENSOR_WIDTH_MM])
    aif, depth = torch.cat(aif), torch.cat(depth)
    exif = torch.tensor(exif, dtype=torch.float32)
    focus = torch.tensor(focus, dtype=torch.float32)
    lens = lensblur.ThinLens(exif[:, 0], exif[:, 1], focus, SCENE_SENSOR_WIDTH_MM)
    with torch.no_grad():
        target = lensblur.render(aif, depth, lens, method=method, backend=backend)
    return {"aif": aif, "depth": depth, "exif": exif, "focus_distance_m": focus, "target": target}



def load_exif_photos(paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], size: int = 256,
                     default_sensor_width_mm: Optional[float] = None) -> Dict[str, torch.Tensor]:
    """Load real photos and their EXIF as a training batch for :class:`ExifDefocusPipeline`.

    Each photo is centre-cropped to a square and resized to ``size x size`` (bicubic); its EXIF
    comes from :func:`lensblur_models.read_exif` with the sensor width of the *crop* (the crop
    keeps ``side / width`` of the sensor width, so the blur in pixels stays physical).  Images
    are display encoded: train with ``ExifDefocusConfig(gamma=2.2)``.

    Args:
        paths: a directory (every ``.jpg``/``.jpeg``/``.tif``/``.tiff``/``.png`` in it, sorted)
            or a list of files.
        size: output side in pixels.
        default_sensor_width_mm: sensor width for files without sensor-size EXIF.

    Returns:
        dict with ``target`` ``(N, 3, size, size)`` in ``[0, 1]`` and ``exif`` ``(N, 3)``.

    Raises:
        ExifError: a file's EXIF is missing or invalid (the message names the file and field).
    """
    from PIL import Image

    from ..exif import ExifError, read_exif

    if isinstance(paths, (str, os.PathLike)) and Path(paths).is_dir():
        files = sorted(p for p in Path(paths).iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES)
    elif isinstance(paths, (str, os.PathLike)):
        files = [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    if not files:
        raise ValueError(f"`paths` {paths!r} holds no photos ({', '.join(_PHOTO_SUFFIXES)})")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"`size` must be an int >= 8, got {size!r}")
    targets, exif = [], []
    for f in files:
        try:
            e = read_exif(f, default_sensor_width_mm=default_sensor_width_mm)
        except ExifError as err:
            raise ExifError(f"{f}: {err}") from None
        with Image.open(f) as img:
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            arr = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
        targets.append(arr.permute(2, 0, 1).float() / 255.0)
        exif.append([e.focal_length_mm, e.f_number, e.sensor_width_mm * side / w])
    return {"target": torch.stack(targets), "exif": torch.tensor(exif, dtype=torch.float32)}


class ExifPhotoDataset(torch.utils.data.Dataset):
    """Real photos and their EXIF, read one per item (a data loader's workers stream them).

    Like :func:`load_exif_photos`, but lazily and with aspect-preserving crops: the shorter side
    is resized to ``size`` and a ``size x size`` crop is taken (random position from ``(seed, i)``
    or centred); the sensor width is that of the crop (``size / resized width`` of the sensor).
    A ``NAME_depth.npy`` next to a photo gives its depth (``has_depth``); otherwise the
    pipeline's depth model estimates it on the fly.

    Items: ``target`` ``(3, size, size)`` in ``[0, 1]``, ``exif`` ``(3,)``, ``depth``
    ``(1, size, size)`` (zeros when absent), ``has_depth``.
    """

    def __init__(self, paths, size: int = 256, crop: str = "random", seed: int = 0,
                 default_sensor_width_mm: Optional[float] = None) -> None:
        from ..common.data import ImageFolderDataset

        self.images = ImageFolderDataset(paths, size, crop=crop, seed=seed)
        self.default_sensor_width_mm = default_sensor_width_mm

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        from PIL import Image

        from ..exif import ExifError, read_exif

        f = self.images.files[i % len(self.images.files)]
        try:
            e = read_exif(f, default_sensor_width_mm=self.default_sensor_width_mm)
        except ExifError as err:
            raise ExifError(f"{f}: {err}") from None
        item = self.images[i]
        with Image.open(f) as img:
            w, h = img.size
        resized_w = max(self.images.size, round(w * self.images.size / min(w, h)))
        crop_sensor = e.sensor_width_mm * self.images.size / resized_w
        return {"target": item["image"], "depth": item["depth"], "has_depth": item["has_depth"],
                "exif": torch.tensor([e.focal_length_mm, e.f_number, crop_sensor], dtype=torch.float32)}
