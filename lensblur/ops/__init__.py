"""Backend kernels for the blur operators.

* :mod:`lensblur.ops.reference` — the plain PyTorch reference (forward and backward formulas);
* :mod:`lensblur.ops.native` — C++/OpenMP CPU kernels from ``csrc/``;
* :mod:`lensblur.ops.triton_blur` — Triton GPU kernels.

Kernels know nothing of lenses, layers or the CLI; :func:`lensblur.defocus` picks one.
"""
