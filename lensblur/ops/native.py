r"""Native C++ CPU kernels for the gather and scatter blur operators, forward and backward.

The math is exactly that of :mod:`lensblur.ops.reference`; the kernels live in
``csrc/lensblur_native.cpp`` (its header comment explains the design: O(radius) runs over row
prefix sums and difference rows for disk and polygon apertures, tap loops with tile max-coc
culling for image tables and cat's eye, zero-padded planes with a mask channel, no atomics).  This module builds them, wraps them as PyTorch
operators through :func:`lensblur.ops._wiring.define_defocus_op` (the same wiring as the Triton
backend) and exposes the backend entry :func:`defocus`.

Building
--------
The sources are compiled with :func:`torch.utils.cpp_extension.load` the first time a CPU tensor
asks for this backend (``is_available("cpu")``), with ``-O3 -march=native -fopenmp``; nothing is
built at install time, so ``pip install --no-build-isolation -e .`` never pulls a second torch.
The build directory is keyed by a hash of the sources, the flags, the torch and Python versions
and the CPU, so an edited source or another machine never reuses a stale library:
``$LENSBLUR_EXTENSIONS_DIR`` or ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/lensblur``, then
``native_<hash>``.  The cache heals itself: two processes building at once serialise on an
``fcntl.flock`` lock of an open file in that directory (the OS releases it when its holder dies,
so a killed build never blocks the next one), threads of one process on a module lock; each
build compiles in a private temporary directory and moves the library and its SHA-256 digest
into place with atomic renames; a zero-byte, truncated or unverified library is rebuilt, and so
is, once, a library that fails to load.  The first build takes some ten seconds; later
processes only check and load the cached library.

With no compiler (or any build failure) :func:`is_available` returns ``False`` and emits **one**
``RuntimeWarning`` per process saying why, ``backend="auto"`` then falls back to the PyTorch
reference, and an explicit ``backend="native"`` raises :class:`~lensblur.LensBlurError`.

Threads and determinism
-----------------------
The kernels use ``torch.get_num_threads()`` threads of their own passively waiting pool (one for
images of fewer than :data:`SERIAL_BELOW` pixels), so they stay fast next to PyTorch's OpenMP
threads and other busy processes without any environment variable.  Every output value is computed by one thread in a fixed order, so
results are bitwise identical for any thread count.

Example:
    >>> import torch, lensblur
    >>> img, coc = torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3.0)
    >>> if is_available("cpu"):
    ...     out = lensblur.defocus(img, coc, backend="native")
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..apertures import Aperture
from ..validation import LensBlurError
from ._wiring import check_op_inputs, define_defocus_op

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds stay atomic, without a process lock
    fcntl = None

__all__ = ["defocus", "is_available", "forward_impl", "backward_impl", "load_library",
           "unavailable_reason", "source_paths"]

name = "native"

_SOURCE_NAMES = ("lensblur_native.cpp",)
_CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-ffinite-math-only",
           "-fno-signed-zeros", "-fno-trapping-math"]
_LDFLAGS = ("-fopenmp",)   # a tuple: cpp_extension appends to the list it is given

_LOCK = threading.Lock()
_LIB: Optional[ctypes.CDLL] = None
_ERROR: Optional[str] = None       # why the library is unavailable (None: not tried or loaded)
_WARNED = False


def _source_dir() -> Path:
    """``csrc/``: inside the installed package (package data), else at the repository root."""
    here = Path(__file__).resolve().parent.parent          # .../lensblur
    for cand in (here / "csrc", here.parent / "csrc"):
        if all((cand / n).is_file() for n in _SOURCE_NAMES):
            return cand
    raise FileNotFoundError(f"the C++ sources {_SOURCE_NAMES} were found neither in "
                            f"{here / 'csrc'} nor in {here.parent / 'csrc'}")


def source_paths() -> List[Path]:
    """The C++ source files of this backend."""
    d = _source_dir()
    return [d / n for n in _SOURCE_NAMES]


def _cflags() -> List[str]:
    flags = list(_CFLAGS)
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        flags.append("-march=native")   # built on the machine that runs it (JIT)
    return flags


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _build_key(sources: List[Path]) -> str:
    h = hashlib.sha256()
    for p in sources:
        h.update(p.read_bytes())
    for part in (" ".join(_cflags()), " ".join(_LDFLAGS), torch.__version__, sys.version,
                 platform.machine(), _cpu_signature()):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _cache_root() -> Path:
    env = os.environ.get("LENSBLUR_EXTENSIONS_DIR") or os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lensblur"


def _ensure_ninja() -> None:
    """``cpp_extension`` runs ``ninja`` from PATH; the pip package's binary may not be on it."""
    if shutil.which("ninja"):
        return
    try:
        import ninja  # the PyPI package ships the binary
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except Exception:
        pass


#: Seconds a process waits for another one's build of the same sources before giving up.
BUILD_TIMEOUT_S = float(os.environ.get("LENSBLUR_BUILD_TIMEOUT", "900"))
_LIB_NAME = "lensblur_native.so"


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """An exclusive lock on ``build_dir/build.lock`` held by an open file (``fcntl.flock``): the
    OS releases it when its holder exits or is killed, so a killed build never blocks the next
    one.  Waits at most :data:`BUILD_TIMEOUT_S` for a live holder."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / "build.lock", "a+b") as f:
        if fcntl is not None:
            deadline = time.monotonic() + BUILD_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"another process has been building the native kernels "
                                           f"in {build_dir} for over {BUILD_TIMEOUT_S:.0f} s")
                    time.sleep(0.05)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(lib_path: Path) -> bool:
    """The cached library is complete: non-empty and matching the digest written with it (a
    zero-byte or truncated file, or one without its digest, is rebuilt)."""
    sidecar = lib_path.with_name(lib_path.name + ".sha256")
    try:
        return lib_path.stat().st_size > 0 and sidecar.read_text().strip() == _digest(lib_path)
    except OSError:
        return False


def _compile(sources: List[Path], out_dir: Path, key: str) -> Path:
    """Compile the kernels in ``out_dir`` (a fresh private directory); returns the library."""
    from torch.utils import cpp_extension

    _ensure_ninja()
    return Path(cpp_extension.load(name=f"lensblur_native_{key}", sources=[str(s) for s in sources],
                                   extra_cflags=_cflags(), extra_ldflags=list(_LDFLAGS),
                                   build_directory=str(out_dir), is_python_module=False,
                                   verbose=False))


def _install(sources: List[Path], build_dir: Path, key: str) -> None:
    """Build into a temporary directory, then move the library and its digest into place with
    atomic renames (the caller holds the build lock): no process ever sees a partial file."""
    for stale in build_dir.glob("tmp-build-*"):     # left by a killed build (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-build-", dir=build_dir))
    try:
        built = _compile(sources, tmp, key)
        staged = tmp / _LIB_NAME
        shutil.copyfile(built, staged)
        digest = tmp / (_LIB_NAME + ".sha256")
        digest.write_text(_digest(staged))
        lib_path = build_dir / _LIB_NAME
        os.replace(staged, lib_path)
        os.replace(digest, lib_path.with_name(_LIB_NAME + ".sha256"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"lensblur_forward_{suffix}")
        fwd.argtypes = [p, p, p, i, i, p, i, i, i, i, i, p, p, i, d, i]
        fwd.restype = i
        bwd = getattr(lib, f"lensblur_backward_{suffix}")
        bwd.argtypes = [p, p, p, p, i, i, p, i, i, i, i, i, p, p, p, p, i, d, i]
        bwd.restype = i
    return lib


def _build() -> ctypes.CDLL:
    """Load the cached build of the kernels, building it first when it is missing or broken.

    A verified library is loaded without any lock.  Otherwise, under the build lock (and after
    checking again: another process may just have built it), the kernels are compiled and
    installed atomically; a library that is complete but fails to load is rebuilt once.
    """
    sources = source_paths()
    key = _build_key(sources)
    build_dir = _cache_root() / f"native_{key}"
    lib_path = build_dir / _LIB_NAME
    if _verified(lib_path):
        try:
            return _open(lib_path)
        except (OSError, AttributeError):
            pass                             # rebuilt below, under the lock
    with _build_lock(build_dir):
        rebuilt = False
        if not _verified(lib_path):
            _install(sources, build_dir, key)
            rebuilt = True
        try:
            return _open(lib_path)
        except (OSError, AttributeError):
            if rebuilt:
                raise
        _install(sources, build_dir, key)    # complete but unloadable: rebuild once
        return _open(lib_path)


def _summary(exc: BaseException) -> str:
    """One line about a build failure: the compiler's first error line when there is one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    line = errors[0] if errors else (lines[-1] if lines else "")
    return f"{type(exc).__name__}: {line}"[:500]


def load_library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, building it on first use; ``None`` when it cannot be built
    (the reason is in :func:`unavailable_reason`; one ``RuntimeWarning`` is emitted)."""
    global _LIB, _ERROR, _WARNED
    if _LIB is not None or _ERROR is not None:
        return _LIB
    with _LOCK:
        if _LIB is None and _ERROR is None:
            try:
                _LIB = _build()
            except Exception as exc:  # no compiler, no ninja, build error, missing sources
                _ERROR = _summary(exc)
        if _LIB is None and not _WARNED:
            _WARNED = True
            warnings.warn(f"lensblur: the native C++ CPU kernels are unavailable ({_ERROR}); "
                          f"backend='auto' uses the slower PyTorch reference on CPU instead. "
                          f"Install a C++ compiler (g++) and ninja to enable them.",
                          RuntimeWarning, stacklevel=3)
    return _LIB


def unavailable_reason() -> Optional[str]:
    """Why the native kernels cannot be used (``None`` if they can or were not tried yet)."""
    return _ERROR


def is_available(device) -> bool:
    """The native kernels run on CPU tensors once they are built (the first call builds them)."""
    return torch.device(device).type == "cpu" and load_library() is not None


def _library() -> ctypes.CDLL:
    lib = load_library()
    if lib is None:
        raise LensBlurError(f"the native C++ backend is unavailable: {_ERROR}")
    return lib


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(image: torch.Tensor, coc: torch.Tensor, table: torch.Tensor,
                  params: List[float], method: str) -> None:
    check_op_inputs(image, coc, method)
    if image.device.type != "cpu" or coc.device.type != "cpu":
        raise LensBlurError(f"the native backend takes CPU tensors, got `image` on "
                            f"{image.device.type}")
    if table.dim() != 2:
        raise LensBlurError(f"`table` must be a 2-d padded aperture table, got shape "
                            f"{tuple(table.shape)}")
    if len(params) != 6:
        raise LensBlurError(f"`params` must be aperture.kernel_params() (6 numbers), got {params}")
    _check_indexable(image, coc, params)


#: Largest coc (pixels) the kernels take: window half-widths and offsets stay far inside ``int``.
#: :func:`lensblur.defocus` clamps every coc to the frame (:func:`lensblur.defocus.coc_limit_px`)
#: before it gets here.
MAX_COC_PX = float(2 ** 24)


def _check_indexable(image: torch.Tensor, coc: torch.Tensor, params: List[float]) -> None:
    """Refuse what the C++ kernels cannot index (they take ``int`` sizes and offsets)."""
    from ..apertures import MAX_BLADES
    kind, blades = params[0], params[1]
    if kind not in (0.0, 1.0, 2.0) or (kind == 1.0 and not (3 <= blades <= MAX_BLADES)):
        raise LensBlurError(f"the native kernels take aperture kinds 0-2 and 3..{MAX_BLADES} "
                            f"blades, got kind {kind:g}, blades {blades:g}")
    if max(image.shape[1:]) >= 2 ** 30 or image.numel() >= 2 ** 62:
        raise LensBlurError(f"`image` of shape {tuple(image.shape)} is too large for the native "
                            "kernels")
    if coc.numel() and not bool((coc.detach() <= MAX_COC_PX).all()):   # also refuses NaN
        raise LensBlurError(f"the native kernels take cocs <= {MAX_COC_PX:g} px, got max "
                            f"{float(coc.detach().max()):.4g} (lensblur.defocus clamps the coc "
                            "to the frame)")


#: Images with fewer pixels (B * H * W) than this run on one thread: waking a thread team costs
#: more than the work, and much more on a busy machine.
SERIAL_BELOW = 16384


def _threads(image: torch.Tensor) -> int:
    b, _, h, w = image.shape
    return 1 if b * h * w < SERIAL_BELOW else max(1, torch.get_num_threads())


def _ptr(t: Optional[torch.Tensor]):
    return ctypes.c_void_p(t.data_ptr()) if t is not None else None


def _prep(image, coc, table, params):
    acc = _acc_dtype(image.dtype)
    img = image.to(acc).contiguous()
    c = coc.to(acc).contiguous()
    tab = table.to(device="cpu", dtype=acc).contiguous()
    prm = (ctypes.c_double * 6)(*[float(v) for v in params])
    return img, c, tab, prm


def forward_impl(image: torch.Tensor, coc: torch.Tensor, table: torch.Tensor,
                 params: List[float], method: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gather or scatter forward; returns ``(out, den)`` in image's and coc's dtypes."""
    _check_inputs(image, coc, table, params, method)
    if image.numel() == 0:
        return torch.empty_like(image), torch.empty_like(coc)
    lib = _library()
    img, c, tab, prm = _prep(image, coc, table, params)
    out = torch.empty_like(img)
    den = torch.empty_like(c)
    B, C, H, W = img.shape
    err = ctypes.create_string_buffer(256)
    fn = lib.lensblur_forward_f64 if img.dtype == torch.float64 else lib.lensblur_forward_f32
    rc = fn(_ptr(img), _ptr(c), _ptr(tab), tab.shape[0], tab.shape[1], prm,
            0 if method == "gather" else 1, B, C, H, W, _ptr(out), _ptr(den),
            _threads(img), err, len(err))
    if rc != 0:
        raise RuntimeError(f"lensblur native {method} forward failed: {err.value.decode()}")
    return out.to(image.dtype), den.to(coc.dtype)


def backward_impl(grad: torch.Tensor, image: torch.Tensor, coc: torch.Tensor, table: torch.Tensor,
                  params: List[float], method: str, out: torch.Tensor, den: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact gradients ``(dL/dimage, dL/dcoc)`` of :func:`forward_impl`."""
    _check_inputs(image, coc, table, params, method)
    if image.numel() == 0:
        return torch.zeros_like(image), torch.zeros_like(coc)
    lib = _library()
    img, c, tab, prm = _prep(image, coc, table, params)
    acc = img.dtype
    g = grad.to(acc).contiguous()
    o = out.to(acc).contiguous()
    dn = den.to(acc).contiguous()
    d_img = torch.empty_like(img)
    d_coc = torch.empty_like(c)
    B, C, H, W = img.shape
    err = ctypes.create_string_buffer(256)
    fn = lib.lensblur_backward_f64 if acc == torch.float64 else lib.lensblur_backward_f32
    rc = fn(_ptr(g), _ptr(img), _ptr(c), _ptr(tab), tab.shape[0], tab.shape[1], prm,
            0 if method == "gather" else 1, B, C, H, W, _ptr(o), _ptr(dn), _ptr(d_img),
            _ptr(d_coc), _threads(img), err, len(err))
    if rc != 0:
        raise RuntimeError(f"lensblur native {method} backward failed: {err.value.decode()}")
    return d_img.to(image.dtype), d_coc.to(coc.dtype)


# =====================================================================================
# The operator and the backend entry point
# =====================================================================================

_OP = define_defocus_op("native", forward_impl, backward_impl)

_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _table(aperture: Aperture, dtype: torch.dtype) -> torch.Tensor:
    """The aperture's padded table (cached per aperture, dtype and version of the table tensor,
    so an in-place edit of ``aperture.table`` is never served stale)."""
    per_ap = _TABLES.setdefault(aperture, {})
    version = aperture.table._version if aperture.table is not None else 0
    hit = per_ap.get(dtype)
    if hit is None or hit[0] != version:
        hit = (version, aperture.table_padded(device="cpu", dtype=dtype).detach().contiguous())
        per_ap[dtype] = hit
    return hit[1]


def defocus(image: torch.Tensor, coc: torch.Tensor, aperture: Aperture, method: str) -> torch.Tensor:
    r"""Native backend entry (inputs already validated by :func:`lensblur.defocus`).

    Args:
        image: ``(B, C, H, W)`` CPU float tensor (float32 and float64 natively; other float
            dtypes accumulate in float32).
        coc: ``(B, 1, H, W)`` coc diameters in pixels (>= 0).
        aperture: the :class:`~lensblur.Aperture`.
        method: ``"gather"`` or ``"scatter"``.

    Returns:
        ``(B, C, H, W)`` blurred image in ``image``'s dtype, differentiable w.r.t. ``image`` and
        ``coc`` (exact gradients, the formulas of :mod:`lensblur.ops.reference`).

    Example:
        >>> img, coc = torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3.0)
        >>> if is_available("cpu"):
        ...     out = defocus(img, coc, Aperture.disk(), "gather")
    """
    _library()
    acc = _acc_dtype(image.dtype)
    out, _ = _OP(image.contiguous(), coc.to(acc).contiguous(), _table(aperture, acc),
                 aperture.kernel_params(), method)
    return out
