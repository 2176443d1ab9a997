"""The documentation: it builds without a warning, its examples run, its pictures exist.

* ``sphinx-build -W`` into a temporary folder (the same command as ``make docs``), once per run
  (``slow``: the autosummary API pages, the Markdown include (myst-parser) and the CLI reference
  (sphinx-argparse) are checked in the built site);
* every public symbol of ``lensblur`` and ``lensblur_models`` appears in the API reference;
* the docstring examples of every ``lensblur`` module and the ``>>>`` examples of the pages run
  as doctests;
* the gallery script, the gallery page and the committed pictures agree.
"""

import doctest
import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lensblur

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    out = tmp_path_factory.mktemp("html")
    r = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
                        str(DOCS), str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    return r, out


@pytest.mark.slow
def test_docs_build_without_warnings(built_docs):
    r, out = built_docs
    assert r.returncode == 0, f"sphinx-build -W failed:\n{r.stderr[-4000:]}"
    for page in ("index", "install", "quickstart", "physics", "gallery", "gradients", "cli", "benchmarks",
                 "api", "api/lensblur", "api/submodules", "api/models", "api/generated/lensblur",
                 "api/generated/lensblur.layered", "api/generated/lensblur_models"):
        assert (out / f"{page}.html").is_file(), page
    index = (out / "index.html").read_text(encoding="utf-8")
    for page in ("layered", "augment", "models_genrefocus", "cli", "api"):   # every guide page in the toctree
        assert f'href="{page}.html"' in index, page
    cli_page = (out / "cli.html").read_text(encoding="utf-8")
    assert "--focal-length" in cli_page and "--depth-scale" in cli_page   # sphinx-argparse ran


def _ids(html: Path) -> set:
    return set(re.findall(r'id="([^"]+)"', html.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_api_reference_documents_every_public_symbol(built_docs):
    r, out = built_docs
    assert r.returncode == 0, r.stderr[-2000:]
    ids = set()
    for page in (out / "api").glob("**/*.html"):
        ids |= _ids(page)
    for page in out.glob("*.html"):       # guide pages may own some symbols (e.g. augment.rst)
        ids |= _ids(page)
    missing = [f"lensblur.{n}" for n in lensblur.__all__ if not n.startswith("__")
               and f"lensblur.{n}" not in ids]
    for mod in ("lensblur.testing", "lensblur.scene", "lensblur.io", "lensblur.exr", "lensblur.layered",
                "lensblur.defocus", "lensblur.render", "lensblur.optics", "lensblur.augment"):
        m = importlib.import_module(mod)
        missing += [f"{mod}.{n}" for n in m.__all__ if f"{mod}.{n}" not in ids
                    and not _documented_under_other_name(getattr(m, n), ids)]
    models = pytest.importorskip("lensblur_models")
    missing += [f"lensblur_models.{n}" for n in models.__all__ if f"lensblur_models.{n}" not in ids
                and not _documented_under_other_name(getattr(models, n), ids)]
    assert not missing, f"public symbols missing from the API reference: {missing}"
    # with their docstrings' shapes and units: e.g. the signature and a parameter of defocus
    api = re.sub(r"<[^>]+>", "", (out / "api" / "generated" / "lensblur.html").read_text(encoding="utf-8"))
    api = re.sub(r"\s+", " ", api)
    assert "circle-of-confusion" in api and "(B, C, H, W)" in api and "focus_distance_m" in api


def _documented_under_other_name(obj, ids) -> bool:
    """A guide page may own an object and document it under another public path (e.g.
    ``lensblur_models.genrefocus.RefocusPipeline`` for ``lensblur_models.RefocusPipeline``)."""
    leaf = getattr(obj, "__name__", None)
    top = (getattr(obj, "__module__", None) or "").split(".")[0]
    return bool(leaf and top) and any(i.startswith(top + ".") and i.endswith("." + leaf) for i in ids)


@pytest.mark.slow
def test_benchmark_tables_and_gallery_pictures_are_in_the_site(built_docs):
    r, out = built_docs
    assert r.returncode == 0, r.stderr[-2000:]
    bench = (out / "benchmarks.html").read_text(encoding="utf-8")
    assert "speed-up" in bench and "<table" in bench and "_images/throughput_vs_coc_fwd.png" in bench
    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    for name in _gallery_script().PICTURES:       # Sphinx copies images into _images/
        assert f'src="_images/{name}.png"' in gallery and (out / "_images" / f"{name}.png").is_file(), name


def _gallery_script():
    name = "lensblur_docs_gallery"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "gallery.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod          # dataclasses look their module up while it executes
        spec.loader.exec_module(mod)
    return sys.modules[name]


def test_gallery_script_page_and_pictures_agree():
    gallery = _gallery_script()
    rst = (DOCS / "gallery.rst").read_text(encoding="utf-8")
    shown = set(re.findall(r"_static/gallery/([\w.]+)\.png", rst))
    assert shown == set(gallery.PICTURES), "gallery.rst and docs/gallery.py list different pictures"
    from PIL import Image

    for name, pic in gallery.PICTURES.items():
        path = DOCS / "_static" / "gallery" / f"{name}.png"
        assert path.is_file(), f"{path} missing: run python docs/gallery.py"
        with Image.open(path) as im:
            h, w = pic.size
            if pic.crop is not None:
                t, l, b, rr = pic.crop
                h, w = round(b * h) - round(t * h), round(rr * w) - round(l * w)
            assert im.size == (w, h), name


def test_gallery_pictures_show_the_physics():
    """The committed f-number sweep gets sharper as the aperture closes, and the script's
    renderer runs (a quick, tiny picture)."""
    import numpy as np
    from PIL import Image

    def sharpness(name):
        a = np.asarray(Image.open(DOCS / "_static" / "gallery" / f"{name}.png")).astype(float)
        return np.abs(np.diff(a, axis=1)).mean()

    s = [sharpness(f"fnumber_{n}") for n in ("1.4", "2.8", "5.6", "11")]
    assert s == sorted(s), s
    small = _gallery_script().render_picture(_gallery_script().PICTURES["depth"], scale=0.25)
    assert small.shape == (1, 3, 50, 80) and float(small.min()) >= 0 and float(small.max()) <= 1


def _lensblur_modules():
    names = ["lensblur"]
    for info in pkgutil.walk_packages(lensblur.__path__, "lensblur."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("modname", _lensblur_modules())
def test_docstring_examples(modname):
    try:
        module = importlib.import_module(modname)
    except ImportError as exc:  # an optional dependency of that module is missing
        pytest.skip(f"{modname}: {exc}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    globs = {"torch": torch}
    for test in finder.find(module, modname, globs=dict(vars(module), **globs)):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {modname} (see stdout)"


DOC_PAGES = sorted(p.name for p in DOCS.glob("*.rst") if ">>>" in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", DOC_PAGES)
def test_page_examples(page):
    result = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=DOCTEST_FLAGS,
                              verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} failing example(s) in {page}"
