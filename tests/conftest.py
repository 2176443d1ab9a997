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
