"""The exact workload of ``shared/ANCHORS.md``, so our numbers sit beside the peers'.

* image: ``torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))``
* a smooth field ``s``: an 8x8 uniform random grid from the same generator, upsampled bicubically
  (align_corners=True) to H x W, min-max normalised to [0, 1] (disparity focused at 0.5)
* coc diameter = ``D * |2 s - 1|`` pixels (maximum D)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def anchors_workload(height: int, width: int, max_coc: float, *, channels: int = 3,
                     device="cpu", dtype=torch.float32):
    """Return ``(image, coc, s)`` exactly as ANCHORS.md defines them."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, channels, height, width, generator=g)
    grid = torch.rand(1, 1, 8, 8, generator=g)
    s = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True)
    s = (s - s.min()) / (s.max() - s.min())
    coc = max_coc * (2 * s - 1).abs()
    return (image.to(device=device, dtype=dtype), coc.to(device=device, dtype=torch.float32),
            s.to(device=device))
