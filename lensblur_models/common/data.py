"""Streaming image datasets for the training loop: one file per item, aspect ratio kept.

:class:`ImageFolderDataset` lists the images of a directory and reads one per item (so a data
loader's workers stream them from disk; nothing is held in RAM).  Each image is resized so that
its *shorter* side is ``size`` (the aspect ratio is kept) and a ``size x size`` crop is taken, at
a position drawn from ``(seed, index)`` (``crop="random"``) or in the centre.  A depth map
``NAME_depth.npy`` (metres, any resolution) next to ``NAME.png`` is resized and cropped the same
way; without one, ``has_depth`` is False and the task estimates depth on the fly with a
:class:`~lensblur_models.common.DepthEstimator`.

Example:
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as d:
    ...     Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(f"{d}/a.png")
    ...     np.save(f"{d}/a_depth.npy", np.ones((10, 20), np.float32))
    ...     item = ImageFolderDataset(d, size=16)[0]
    >>> item["image"].shape, item["depth"].shape, bool(item["has_depth"])
    (torch.Size([3, 16, 16]), torch.Size([1, 16, 16]), True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from lensblur import LensBlurError

from .checks import check_int

__all__ = ["ImageFolderDataset", "IMAGE_SUFFIXES", "list_images", "resize_crop_box"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def list_images(root: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Path]:
    """The image files of a directory (sorted; ``*_depth.*`` maps excluded), or the given list."""
    if isinstance(root, (str, os.PathLike)):
        p = Path(root)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.stem.endswith("_depth"))
        elif p.is_file():
            files = [p]
        else:
            raise LensBlurError(f"`root` {str(p)!r} is neither an image directory nor a file")
    else:
        files = [Path(f) for f in root]
    if not files:
        raise LensBlurError(f"`root` {root!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def resize_crop_box(width: int, height: int, size: int, generator=None) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``((new_w, new_h), (left, top))``: shorter side to ``size``, then a ``size``-square crop
    (random position with a generator, else centred)."""
    s = size / min(width, height)
    new_w, new_h = max(size, round(width * s)), max(size, round(height * s))
    if generator is None:
        return (new_w, new_h), ((new_w - size) // 2, (new_h - size) // 2)
    left = int(torch.randint(new_w - size + 1, (), generator=generator))
    top = int(torch.randint(new_h - size + 1, (), generator=generator))
    return (new_w, new_h), (left, top)


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images (and optional ``NAME_depth.npy`` depth) read one per item (see the module docstring).

    Args:
        root: a directory of images or a list of files.
        size: output side in pixels.
        crop: ``"random"`` (position from ``(seed, index)``) or ``"center"``.
        seed: seeds the crops.
        length: number of items (default: the number of files; a larger value cycles through
            them with fresh crops).

    Items: ``image`` ``(3, size, size)`` display-encoded in ``[0, 1]``, ``depth``
    ``(1, size, size)`` metres (zeros when absent), ``has_depth`` bool, ``index`` the file index.
    """

    def __init__(self, root, size: int, crop: str = "random", seed: int = 0, length=None) -> None:
        self.files = list_images(root)
        self.size = check_int(size, "size", 8)
        if crop not in ("random", "center"):
            raise LensBlurError(f"`crop` must be 'random' or 'center', got {crop!r}")
        self.crop, self.seed = crop, int(seed)
        self.length = len(self.files) if length is None else check_int(length, "length")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        from PIL import Image

        f = self.files[i % len(self.files)]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i) if self.crop == "random" else None
        with Image.open(f) as img:
            img = img.convert("RGB")
            (nw, nh), (left, top) = resize_crop_box(img.width, img.height, self.size, gen)
            img = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + self.size, top + self.size))
            arr = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(self.size, self.size, 3)
        image = arr.permute(2, 0, 1).float() / 255.0
        depth_file = f.with_name(f.stem + "_depth.npy")
        if depth_file.is_file():
            import numpy as np

            d = torch.from_numpy(np.load(depth_file)).float()[None, None]
            d = F.interpolate(d, size=(nh, nw), mode="bilinear", align_corners=False)
            depth = d[0, :, top:top + self.size, left:left + self.size].clamp_min(1e-3)
            has = True
        else:
            depth, has = torch.zeros(1, self.size, self.size), False
        return {"image": image, "depth": depth, "has_depth": torch.tensor(has), "index": torch.tensor(i)}
