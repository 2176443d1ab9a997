"""The exact workload of ``shared/ANCHORS.md``, so our numbers sit beside the peers'.

It lives in the package (:func:`lensblur.bench.anchors_workload`, also used by ``lensblur bench``)
and is re-exported here for the suite:

* image: ``torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))``
* a smooth field ``s``: an 8x8 uniform random grid from the same generator, upsampled bicubically
  (align_corners=True) to H x W, min-max normalised to [0, 1] (disparity focused at 0.5)
* coc diameter = ``D * |2 s - 1|`` pixels (maximum D)
"""

from __future__ import annotations

from lensblur.bench import anchors_workload

__all__ = ["anchors_workload"]
