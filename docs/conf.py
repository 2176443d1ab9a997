"""Sphinx configuration for the lensblur documentation (``make docs``: ``sphinx-build -W``)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                  # lensblur, lensblur_models, benchmarks
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
os.environ.setdefault("TRITON_INTERPRET", "1")  # importing the Triton backend on CPU-only machines

import lensblur  # noqa: E402

project = "lensblur"
author = "the lensblur authors"
copyright = "2026, the lensblur authors"
release = version = lensblur.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "lensblur_api",
]

templates_path = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"

# autodoc: every public symbol comes from ``__all__`` (see _ext/lensblur_api.py)
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
autodoc_inherit_docstrings = False
autodoc_mock_imports = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# heavy optional imports must not make the build fail: modules that cannot be imported are
# listed as unavailable by the lensblur-api directive instead of warning
suppress_warnings = []

html_theme = "furo"
html_title = f"lensblur {release}"
html_static_path = ["_static"]
html_theme_options = {"sidebar_hide_name": False}
pygments_style = "sphinx"
