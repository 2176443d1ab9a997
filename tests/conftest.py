import os
import sys

import torch

# Triton kernels run under the interpreter on machines without a GPU; this must be set before
# triton is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))  # shared helpers such as backend_cases.py

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("lensblur", deadline=None, max_examples=15, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lensblur")

import pytest  # noqa: E402


# ----------------------------------------------------------------------------- device and dtype
# As in kornia's suite: ``pytest --device cuda`` runs every test that takes the ``device``
# fixture on the GPU (default: cpu); ``--dtype float32,float64`` picks the dtypes of the
# ``dtype`` fixture for tests that do not parametrise ``dtype`` themselves.
def pytest_addoption(parser):
    parser.addoption("--device", action="store", default="cpu",
                     help="torch device the device-parametrised tests run on (cpu, cuda, cuda:1, ...)")
    parser.addoption("--dtype", action="store", default="float32,float64",
                     help="comma-separated torch dtypes of the `dtype` fixture")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device of ``--device`` (``cpu`` by default)."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available")
    return dev


def pytest_generate_tests(metafunc):
    if "dtype" not in metafunc.fixturenames:
        return
    if any("dtype" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return    # the test chose its own dtypes
    names = [n.strip() for n in metafunc.config.getoption("--dtype").split(",") if n.strip()]
    dtypes = []
    for n in names:
        dt = getattr(torch, n, None)
        if not isinstance(dt, torch.dtype):
            raise pytest.UsageError(f"--dtype: unknown torch dtype {n!r}")
        dtypes.append(dt)
    metafunc.parametrize("dtype", dtypes, ids=names)
