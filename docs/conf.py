"""Sphinx configuration for the lensblur documentation (``make docs``: ``sphinx-build -W``)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                  # lensblur, lensblur_models, benchmarks
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
    "sphinx.ext.autosummary",   # the API pages: one page per module, every name of its __all__
    "myst_parser",              # Markdown pages and includes (benchmarks/RESULTS.md)
    "sphinxarg.ext",            # the CLI reference from lensblur.cli.build_parser
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"

# autosummary: the API pages list each module's ``__all__`` (templates in _templates/autosummary)
autosummary_generate = True
autosummary_ignore_module_all = False
autosummary_imported_members = True
myst_heading_anchors = 2

# autodoc
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

suppress_warnings = []


def _resolve(name: str):
    """The object a dotted name means in ``.. autofunction::`` & co.: attributes first (so
    ``lensblur.render`` is the function, not the module of that name), modules where needed."""
    import importlib

    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                return None
    return obj


def _api_page_context() -> dict:
    """What the API pages (``_templates/autosummary/module.rst``) leave out.

    ``skipped``: ``module.name`` entries documented (and indexed) elsewhere: objects that a package
    (``lensblur``, ``lensblur_models``) re-exports are documented on the package's page, and
    objects that a guide page documents itself (``.. autoclass::`` & co.) are documented there.
    ``unindexed``: modules whose automodule must not be indexed, because a guide page indexes the
    module or the package's attribute of that name is a function (``lensblur.render``)."""
    import importlib
    import re

    elsewhere, guide_modules = set(), set()
    for page in (ROOT / "docs").glob("*.rst"):
        text = page.read_text(encoding="utf-8")
        elsewhere |= {id(_resolve(n)) for n, opts in
                      re.findall(r"^\.\. auto(?:class|function|data|exception):: (\S+)\n((?:   :.*\n)*)",
                                 text, re.M) if ":no-index:" not in opts}
        for mod, opts in re.findall(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", text, re.M):
            if ":no-index:" in opts:
                continue
            guide_modules.add(mod)
            listed = re.search(r":members:(.*)", opts)
            if listed is not None:
                m = importlib.import_module(mod)
                names = [n.strip() for n in listed.group(1).split(",") if n.strip()] or m.__all__
                elsewhere |= {id(getattr(m, n)) for n in names}
    skipped, unindexed = set(), set(guide_modules)
    for pkg in ("lensblur", "lensblur_models"):
        top = importlib.import_module(pkg)
        exported = {id(getattr(top, n)) for n in top.__all__ if hasattr(top, n)}
        for modname, mod in list(sys.modules.items()):
            if mod is None or not (modname == pkg or modname.startswith(pkg + ".")):
                continue
            parent, _, leaf = modname.rpartition(".")
            if parent and getattr(sys.modules.get(parent), leaf, mod) is not mod:
                unindexed.add(modname)
            for n in getattr(mod, "__all__", []):
                obj_id = id(getattr(mod, n, None))
                if obj_id in elsewhere or (modname != pkg and obj_id in exported):
                    skipped.add(f"{modname}.{n}")
    return {"skipped": sorted(skipped), "unindexed": sorted(unindexed)}


import lensblur_models  # noqa: E402,F401  (so that its submodules are in sys.modules)
import lensblur.cli, lensblur.exr, lensblur.io, lensblur.layered, lensblur.learnable  # noqa: E402,F401,E401
import lensblur.augment, lensblur.scene, lensblur.ops.reference  # noqa: E402,F401,E401

autosummary_context = _api_page_context()

html_theme = "furo"
html_title = f"lensblur {release}"
html_static_path = ["_static"]
html_theme_options = {"sidebar_hide_name": False}
pygments_style = "sphinx"
