"""The Triton backend against the PyTorch reference (forward and exact backward).

On machines without CUDA the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``,
set in conftest.py) on CPU tensors; with CUDA the same tests run on the GPU unchanged, plus a few
GPU-only tests at realistic sizes.  The interpreter costs about 0.5 ms per program instance and
~0.1 ms per operation of a kernel-loop iteration, so the CPU shapes are tiny (the shared grid of
``backend_cases.py``) and the parity grid is a covering design rather than a full product: every
(aperture, coc kind, method) triple runs once, and every aperture meets every shape.

Run on a GPU machine with ``pytest tests/test_triton.py -q`` (nothing to configure).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lensblur
from backend_cases import APERTURES, COC_KINDS, SHAPES, assert_close, make_case, reference, \
    star_kernel

tb = pytest.importorskip("lensblur.ops.triton_blur")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
pytestmark = pytest.mark.skipif(not tb.is_available(DEVICE),
                                reason=f"Triton kernels cannot run on {DEVICE} here")
METHODS = ("gather", "scatter")
gpu_only = pytest.mark.skipif(not ON_GPU, reason="realistic sizes need a GPU (the interpreter "
                                                 "would take minutes)")

# every (aperture, coc kind, method) once; the shape rotates so that each aperture meets every
# shape (batch > 1, C = 1 / 3 / 4, sizes that are not multiples of the tile)
GRID = [(SHAPES[(i + j) % len(SHAPES)], ap, kind, method)
        for i, ap in enumerate(APERTURES) for j, kind in enumerate(COC_KINDS) for method in METHODS]


@pytest.fixture
def device():
    return torch.device(DEVICE)


def run_triton(image, coc, aperture, method, grad, device):
    """Triton output and gradients w.r.t. image and coc for upstream gradient ``grad``."""
    img = image.detach().to(device).requires_grad_()
    c = coc.detach().to(device).requires_grad_()
    out = lensblur.defocus(img, c, aperture, method=method, backend="triton")
    d_img, d_coc = torch.autograd.grad(out, (img, c), grad.to(device=device, dtype=out.dtype))
    return out.detach(), d_img, d_coc


def check_parity(image, coc, aperture, method, device, dtype=torch.float32, what=""):
    """Output and both gradients against the float64 reference, within ``dtype``'s tolerance."""
    ref_out, ref_di, ref_dc, grad = reference(image, coc, aperture, method)
    out, d_img, d_coc = run_triton(image.to(dtype), coc, aperture, method, grad, device)
    assert out.dtype == dtype and d_img.dtype == dtype and d_coc.dtype == coc.dtype
    assert out.device.type == device.type
    assert_close(out, ref_out, dtype, f"{what} out")
    assert_close(d_img, ref_di, dtype, f"{what} d_image")
    assert_close(d_coc, ref_dc, dtype, f"{what} d_coc")


def _id(case):
    shape, ap, kind, method = case
    return f"{'x'.join(map(str, shape))}-{ap}-{kind}-{method}"


class TestParity:
    @pytest.mark.parametrize("case", GRID, ids=_id)
    def test_grid_fp32(self, case, device):
        shape, ap_name, coc_kind, method = case
        image, coc = make_case(shape, coc_kind, seed=sum(shape))
        check_parity(image, coc, APERTURES[ap_name], method, device, what=_id(case))

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("dtype,ap_name", [(torch.float16, "disk"),
                                               (torch.bfloat16, "image_star"),
                                               (torch.bfloat16, "hexagon"),
                                               (torch.float64, "rounded5_anamorphic_catseye")],
                             ids=lambda v: str(v).split(".")[-1])
    def test_dtypes(self, dtype, ap_name, method, device):
        # half inputs are read in their dtype and accumulate in float32 (float64 inputs in
        # float64): compare with the float64 reference run on the *rounded* input, so only
        # accumulation and output rounding remain.  No kernel uses atomics, so bf16 needs no
        # special case under the interpreter.
        image, coc = make_case((1, 3, 9, 11), "mixed", seed=3)
        image = image.to(dtype).double()
        coc = coc.double() if dtype == torch.float64 else coc
        check_parity(image, coc, APERTURES[ap_name], method, device, dtype=dtype,
                     what=f"{dtype} {ap_name} {method}")

    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.slow  # 15-25 s under the Triton interpreter on CPU
    def test_many_tiles_and_channel_chunks(self, method, device, monkeypatch):
        """Tiny 2x4 tiles so that tile max-coc culling and the neighbourhood bound decide the
        result: a 7 px spot among in-focus pixels must still reach tiles two tile rows away
        (gather backward, scatter forward); C = 5 needs two channel chunks; the second image's
        block sits in a corner (windows cut by the frame)."""
        monkeypatch.setattr(tb, "TILE_INTERPRET", (2, 4, 1))
        monkeypatch.setattr(tb, "TILE_GPU", (2, 4, 1))
        g = torch.Generator().manual_seed(7)
        image = torch.rand(2, 5, 11, 14, generator=g, dtype=torch.float64).float()
        coc = 0.6 * torch.rand(2, 1, 11, 14, generator=g, dtype=torch.float64)
        coc[0, 0, 5, 6] = 7.0
        coc[1, 0, 0:2, 11:14] = 5.0
        coc = coc.float()
        check_parity(image, coc, APERTURES["rounded5_anamorphic_catseye"], method, device,
                     what=f"tiles {method}")

    @pytest.mark.slow  # 15-25 s under the Triton interpreter on CPU
    def test_small_image_table_and_squeeze(self, device):
        # a 3x3 table (the largest reach), squeezed so that the window is not square
        ap = lensblur.Aperture.from_image(star_kernel(5)[1:4, 1:4], squeeze=0.6)
        image, coc = make_case((1, 2, 8, 10), "large", seed=11)
        for method in METHODS:
            check_parity(image, 0.6 * coc, ap, method, device, what=f"3x3 table {method}")

    @pytest.mark.parametrize("coc_kind", COC_KINDS)
    def test_disk_prefix_path(self, coc_kind, device, monkeypatch):
        """The O(radius) disk path (row prefix sums + rim taps in the gather forward, rim-only
        coc gradient) forced on every tile, with an anamorphic squeeze."""
        monkeypatch.setattr(tb, "PREFIX_MIN_RADIUS", 0.0)
        image, coc = make_case((2, 3, 13, 17), coc_kind, seed=21)
        check_parity(image, coc, lensblur.Aperture.disk(squeeze=1.3), "gather", device,
                     what=f"prefix {coc_kind}")

    @pytest.mark.slow  # 15-25 s under the Triton interpreter on CPU
    def test_disk_prefix_and_tap_loop_tiles_in_one_call(self, device, monkeypatch):
        """Tiles above the radius threshold take the prefix path, the others the tap loop; a
        coc far larger than the frame cuts every kernel row at the border."""
        monkeypatch.setattr(tb, "PREFIX_MIN_RADIUS", 3.0)
        monkeypatch.setattr(tb, "TILE_INTERPRET", (4, 8, 1))
        monkeypatch.setattr(tb, "TILE_GPU", (4, 8, 1))
        g = torch.Generator().manual_seed(9)
        image = torch.rand(1, 3, 8, 24, generator=g, dtype=torch.float64).float()
        u = torch.rand(1, 1, 8, 24, generator=g, dtype=torch.float64)
        coc = torch.where(torch.arange(24) < 12, 0.9 * u, 7.0 + 2.0 * u)
        coc[0, 0, 6, 20] = 20.0
        check_parity(image, coc.float(), lensblur.Aperture.disk(), "gather", device,
                     what="prefix and tap-loop tiles")

    @gpu_only
    @pytest.mark.parametrize("method", METHODS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                             ids=lambda d: str(d).split(".")[-1])
    def test_anchors_workload_gpu(self, method, dtype, device):
        """The ANCHORS workload at a realistic size, many 16x16 tiles, max coc 33."""
        from benchmarks.workload import anchors_workload
        image, coc, _ = anchors_workload(96, 136, 33.0)
        image = image.to(dtype).double()
        check_parity(image, coc, APERTURES["hexagon"], method, device, dtype=dtype,
                     what=f"anchors {dtype} {method}")


# The backend-agnostic properties (constant image, delta, inputs untouched, non-contiguous,
# stale table, determinism) are in test_backend_properties.py, shared with the other backends.


class TestOperator:
    def _args(self, device, method, ap=APERTURES["disk"], requires_grad=True):
        image, coc = make_case((1, 2, 5, 6), "large", seed=1)
        image = image.to(device).requires_grad_(requires_grad)
        coc = coc.to(device).requires_grad_(requires_grad)
        table = ap.table_padded(device=device)
        return image, coc, table, ap.kernel_params(), method

    @pytest.mark.parametrize("method", METHODS)
    def test_opcheck(self, method, device):
        torch.library.opcheck(tb._OP, self._args(device, method))

    @pytest.mark.parametrize("method", METHODS)
    def test_opcheck_backward_op(self, method, device):
        image, coc, table, params, _ = self._args(device, method, APERTURES["image_star"], False)
        out, den = tb._OP(image, coc, table, params, method)
        grad = torch.randn_like(out)
        bwd = torch.ops.lensblur.triton_defocus_backward.default
        torch.library.opcheck(bwd, (grad, image, coc, table, params, method, out, den),
                              test_utils=("test_schema", "test_faketensor"))

    @pytest.mark.slow  # 15-25 s under the Triton interpreter on CPU
    def test_torch_compile_fullgraph(self, device):
        """Both methods trace into one graph (no graph break) and give the eager result and
        gradients.  On CPU (interpreter) the graph runs with ``aot_eager`` (Inductor would
        compile the surrounding ops with a C++ toolchain; the Triton op itself is opaque to it),
        on a GPU with Inductor.  The backend entry is compiled (``lensblur.defocus`` adds the
        public input validation, whose value checks are data dependent)."""
        from torch._dynamo.testing import CompileCounterWithBackend
        torch._dynamo.reset()
        image, coc = make_case((1, 2, 5, 6), "large", seed=1)
        image = image.to(device).requires_grad_()
        coc = coc.to(device).requires_grad_()
        ap = APERTURES["hexagon"]

        def fn(img, c):
            out_g = tb.defocus(img * 1.5, c, ap, "gather")
            out_s = tb.defocus(img, c + 0.5, ap, "scatter")
            return (out_g * out_s).sum()

        counter = CompileCounterWithBackend("inductor" if ON_GPU else "aot_eager")
        compiled = torch.compile(fn, fullgraph=True, backend=counter)
        loss_c = compiled(image, coc)
        gc = torch.autograd.grad(loss_c, (image, coc))
        assert counter.frame_count == 1
        loss_e = fn(image, coc)
        ge = torch.autograd.grad(loss_e, (image, coc))
        torch.testing.assert_close(loss_c, loss_e)
        for a, b in zip(gc, ge):
            torch.testing.assert_close(a, b)
        torch._dynamo.reset()

    def test_dispatch(self, device):
        image, coc = make_case((1, 3, 6, 7), "large", seed=4)
        image, coc = image.to(device), coc.to(device)
        assert tb.is_available(device)
        a = lensblur.defocus(image, coc, backend="triton")
        b = tb.defocus(image, coc, lensblur.Aperture.disk(), "gather")
        assert torch.equal(a, b)

    def test_auto_picks_triton_for_cuda_tensors(self, monkeypatch):
        from lensblur.defocus import resolve_backend
        if not ON_GPU:
            # no GPU here: pretend the kernels can run on CUDA and check the resolution logic
            monkeypatch.setattr(tb, "is_available", lambda dev: torch.device(dev).type == "cuda")
        assert resolve_backend("auto", torch.device("cuda")) == "triton"
        assert resolve_backend("triton", torch.device("cuda")) == "triton"
        # never on CPU tensors, even where the interpreter could run them (the native backend
        # is switched off here so that its first-use build stays out of this test)
        import lensblur.ops.native as native
        monkeypatch.setattr(native, "is_available", lambda dev: False)
        assert resolve_backend("auto", torch.device("cpu")) == "torch"

    def test_unavailable_device_raises(self, monkeypatch):
        monkeypatch.setattr(tb, "is_available", lambda dev: False)
        image, coc = make_case((1, 1, 4, 4), "tiny")
        with pytest.raises(ValueError, match="Triton"):
            tb.defocus(image, coc, lensblur.Aperture.disk(), "gather")

    def test_bad_method_raises(self, device):
        image, coc, table, params, _ = self._args(device, "gather", requires_grad=False)
        with pytest.raises(ValueError, match="method"):
            tb.forward_impl(image, coc, table, params, "splat")
        with pytest.raises(ValueError, match="coc"):
            tb.forward_impl(image, coc[:, :, :3], table, params, "gather")


_COMPILE_SCRIPT = textwrap.dedent("""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import lensblur.ops.triton_blur as tb
    assert not tb.INTERPRET
    target = GPUTarget("cuda", 90, 32)            # an H100

    def build(kern, ptr, meta):
        sig = {n: "constexpr" if n in meta else ptr.get(n, "i32") for n in kern.arg_names}
        compiled = triton.compile(ASTSource(kern, sig, meta), target=target,
                                  options=dict(num_warps=4))
        assert compiled.asm["cubin"], kern.fn.__name__

    for kind, blades, catseye, prefix, img in ((1, 5, True, False, "*bf16"),
                                                (2, 1, False, False, "*fp32"),
                                                (0, 1, False, True, "*fp16")):
        ptr = {n: "*fp32" for n in ("coc", "tmax", "tnbr", "prm", "tab", "den_out", "gn", "s",
                                     "d_coc", "inv_z")}
        ptr.update(img=img, out=img, d_img=img, pre="*fp64")
        meta = dict(KIND=kind, BLADES=blades, CATSEYE=catseye, PREFIX=prefix, BY=16, BX=16,
                    BLOCK_C=4, ACC=tl.float32)
        for kern in (tb._gather_fwd_kernel, tb._gather_bwd_kernel, tb._mass_kernel,
                     tb._scatter_fwd_kernel, tb._scatter_bwd_kernel):
            build(kern, ptr, {k: v for k, v in meta.items() if k in kern.arg_names})
    build(tb._dilate_kernel, {n: "*fp32" for n in ("tmax", "gmax", "tnbr", "prm")},
          dict(BY=16, BX=16, BLOCK_T=256))
    print("compiled")
""")


@pytest.mark.skipif(ON_GPU, reason="on a GPU the parity tests compile the kernels for real")
@pytest.mark.slow  # 15-25 s under the Triton interpreter on CPU
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """The interpreter does not run Triton's compiler, so a kernel could pass every CPU test and
    still fail to compile.  Compile the GPU code path ahead of time for an H100 (sm_90, PTX and
    cubin with Triton's bundled ptxas) in a fresh process with the interpreter off."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path),
               TRITON_DEFAULT_FP_FUSION="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        pytest.skip("Triton's bundled ptxas is missing")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-4000:]


class TestGpuBenchmarkScript:
    """``benchmarks/triton_gpu.py`` runs only on CUDA; on CPU it must stop with a message."""

    @pytest.mark.skipif(ON_GPU, reason="checks the no-GPU exit path")
    def test_exits_with_status_2_without_cuda(self, capsys, tmp_path):
        from benchmarks import triton_gpu
        assert triton_gpu.main(["--out", str(tmp_path / "t.md")]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "t.md").exists()

    def test_table_rows_and_targets(self):
        from benchmarks import triton_gpu
        row = dict(size="1024", d=33.0, method="gather", mode="fwd", tri=[0.25, 0.24, 0.26],
                   ref=[150.0, 149.0, 151.0], speed=600.0, tri_mib=12.0, ref_mib=float("inf"),
                   err=3e-7)
        line = triton_gpu.format_row(row)
        assert line.startswith("| 1024² | 33 | gather | fwd | 0.250 [0.240, 0.260] | OOM | 600× |")
        slow = dict(row, mode="fwd+bwd", tri=[1.5, 1.4, 1.6])
        summary = "\n".join(triton_gpu.target_summary([row, slow]))
        assert "fwd: 0.250 ms (H100 target ≤ 0.3 ms: meets)" in summary
        assert "fwd+bwd: 1.500 ms (H100 target ≤ 1.0 ms: MISSES)" in summary
