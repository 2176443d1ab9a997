"""Two small Sphinx directives for the lensblur docs.

``.. lensblur-api:: MODULE``
    Documents every public symbol of ``MODULE`` (its ``__all__``) with autodoc: the module
    docstring, then one ``autoclass``/``autofunction``/``autodata`` per name, so that a symbol
    added to ``__all__`` appears in the reference without editing the docs.  Options:
    ``:skip-reexported: PKG`` leaves out objects that ``PKG`` already exports (documented on
    ``PKG``'s page); ``:heading: TEXT`` adds a section title.  A module that cannot be imported
    (an optional dependency missing, or not written yet) becomes a one-line note instead of a
    warning, so ``sphinx-build -W`` stays green on a partial install.

``.. lensblur-toctree::``
    A ``toctree`` that silently drops entries whose page does not exist yet, and with ``:rest:``
    appends the top-level pages no other toctree lists (where a ``*`` line stands, else at the end).

``.. lensblur-markdown:: PATH``
    Includes a Markdown file (such as ``benchmarks/RESULTS.md``) by converting the subset that
    our generated reports use — headings, pipe tables, bullet lists, paragraphs, images, inline
    code and bold — into reStructuredText.  Sphinx has no Markdown reader without extra packages.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import posixpath
import re
import types
from pathlib import Path
from typing import List

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.directives.other import TocTree
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)


def public_names(module: types.ModuleType) -> List[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
    return [n for n in names if not n.startswith("__")]


def _exported_ids(pkg: str) -> set:
    mod = importlib.import_module(pkg)
    return {id(getattr(mod, n)) for n in public_names(mod) if hasattr(mod, n)}


class LensblurApi(SphinxDirective):
    required_arguments = 1
    has_content = False
    option_spec = {"skip-reexported": directives.unchanged, "heading": directives.unchanged,
                   "no-module-doc": directives.flag}

    def run(self):
        modname = self.arguments[0]
        try:
            module = importlib.import_module(modname)
        except Exception as exc:  # optional dependency missing: say so in the page, no warning
            logger.info(f"lensblur-api: {modname} not importable ({exc!r})")
            para = nodes.paragraph(text=f"{modname} is not importable in this build: {exc}")
            return [nodes.note("", para)]
        # the reference pages (api/...) defer to guide pages that document an object themselves
        elsewhere = set()
        if self.env.docname.startswith("api/"):
            elsewhere = _documented_ids(Path(self.env.srcdir))
        module_elsewhere = id(module) in elsewhere
        skip = set()
        if "skip-reexported" in self.options:
            skip = _exported_ids(self.options["skip-reexported"])
        lines: List[str] = []
        heading = self.options.get("heading")
        if heading:
            lines += [heading, "-" * len(heading), ""]
        # `lensblur.render` is both a module and the function the package exports under that
        # name: index the function (what users call), describe the module without an index entry
        parent, _, leaf = modname.rpartition(".")
        shadowed = bool(parent) and getattr(importlib.import_module(parent), leaf, module) is not module
        noindex = ["   :no-index:"] if module_elsewhere or shadowed else []
        if "no-module-doc" in self.options:
            lines += [f".. py:module:: {modname}", *noindex, ""]
        else:
            lines += [f".. automodule:: {modname}", *noindex, ""]
        for name in public_names(module):
            obj = getattr(module, name, None)
            if obj is None and not hasattr(module, name):
                logger.warning(f"lensblur-api: {modname}.__all__ names {name!r}, which does not exist",
                               location=self.get_location())
                continue
            if id(obj) in skip or isinstance(obj, types.ModuleType):
                continue
            target = f"{modname}.{name}"
            # documented on another page (e.g. a guide with its own autoclass): no second index entry
            opts = ["   :no-index:"] if module_elsewhere or id(obj) in elsewhere else []
            if inspect.isclass(obj):
                kind = "exception" if issubclass(obj, BaseException) else "class"
                lines += [f".. auto{kind}:: {target}", "   :members:", *opts, ""]
            elif callable(obj):
                lines += [f".. autofunction:: {target}", *opts, ""]
            elif _has_doc_comment(modname, name):      # ``#: ...`` above the assignment
                if _long_value(obj):
                    opts.append("   :no-value:")
                lines += [f".. autodata:: {target}", *opts, ""]
            else:   # no comment: autodata would show the docstring of the value's type (dict...)
                value = [f"   :value: {repr(obj)}"] if not _long_value(obj) else []
                lines += [f".. py:data:: {name}", f"   :module: {modname}", *value, *opts, ""]
        container = nodes.section() if heading else nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]),
                                 container)
        return container.children


def _resolve(name: str, is_module: bool = False):
    """The object a dotted name refers to, the way autodoc reads it: ``automodule`` imports the
    whole name; ``autoclass``/``autofunction``/... take the last part as an attribute of the
    rest (so ``pkg.f`` is the function ``f`` even when a module ``pkg/f.py`` exists)."""
    try:
        if is_module:
            return importlib.import_module(name)
        parent, _, leaf = name.rpartition(".")
        if not parent:
            return None
        owner = _resolve(parent, is_module=True)
        if owner is None:
            owner = _resolve(parent)
        return getattr(owner, leaf, None) if owner is not None else None
    except Exception:
        return None


_DIRECTIVE = re.compile(r"^\.\. (auto(?:module|class|function|exception|data|attribute)|"
                        r"py:(?:module|class|function|exception|data)|lensblur-api)::[ \t]*(\S+)[ \t]*\n"
                        r"((?:[ \t]+:[^\n]*\n)*)", re.M)


def _documented_ids(srcdir: Path) -> set:
    """``id()`` of every object that a guide page (outside ``api/``) documents *with an index
    entry*, whether by ``autoclass`` and friends or by a ``lensblur-api`` directive, whatever
    name it uses (``:no-index:`` entries and ``:skip-reexported:`` names do not count)."""
    ids = set()
    for rst in srcdir.rglob("*.rst"):
        rel = rst.relative_to(srcdir).parts
        if rel[0] in ("_build", "api"):
            continue
        text = rst.read_text(encoding="utf-8", errors="replace")
        for m in _DIRECTIVE.finditer(text):
            kind, name, options = m.groups()
            opts = dict((o.strip().split(":", 2)[1], o.strip().split(":", 2)[2].strip())
                        for o in options.splitlines() if o.strip().count(":") >= 2)
            if "no-index" in opts or "noindex" in opts:
                continue
            if kind != "lensblur-api":
                obj = _resolve(name, is_module=kind.endswith("module"))
                if obj is not None:
                    ids.add(id(obj))
                continue
            try:
                mod = importlib.import_module(name)
            except Exception:
                continue
            skip = _exported_ids(opts["skip-reexported"]) if opts.get("skip-reexported") else set()
            ids.add(id(mod))
            ids.update(i for i in (id(getattr(mod, n)) for n in public_names(mod) if hasattr(mod, n))
                       if i not in skip)
    return ids


def _has_doc_comment(modname: str, name: str) -> bool:
    from sphinx.pycode import ModuleAnalyzer

    try:
        return ("", name) in ModuleAnalyzer.for_module(modname).find_attr_docs()
    except Exception:
        return False


def _long_value(obj) -> bool:
    return len(repr(obj)) > 80


# ----------------------------------------------------------------------------- markdown
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)\s*$")


def _inline(text: str) -> str:
    def code(m):
        end = m.end()
        tail = "\\ " if end < len(m.string) and (m.string[end].isalnum() or m.string[end] == "_") else ""
        return f"``{m.group(1)}``{tail}"
    text = _CODE.sub(code, text)
    return _LINK.sub(lambda m: f"`{m.group(1)} <{m.group(2)}>`__", text)


def markdown_to_rst(md: str, base: str, levels: str = "-~^") -> List[str]:
    """Convert our reports' Markdown subset to reStructuredText lines; ``base`` prefixes image
    paths (relative to the including document).  Level-1 headings are dropped (the including
    page has its own title); ``##`` maps to ``levels[0]`` and so on."""
    out: List[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("#"):
            depth = len(line) - len(line.lstrip("#"))
            title = _inline(line[depth:].strip())
            if depth >= 2:
                out += [title, levels[min(depth - 2, len(levels) - 1)] * len(title), ""]
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            out += [".. list-table::", "   :header-rows: 1", ""]
            for row in rows:
                for j, cell in enumerate(row):
                    text = _inline(cell)
                    if re.fullmatch(r"[-*+]", text):      # a lone bullet character: literal
                        text = "\\" + text
                    out.append(f"   {'* -' if j == 0 else '  -'} {text or ' '}")
            out.append("")
        elif _IMAGE.match(line):
            alt, path = _IMAGE.match(line).groups()
            out += [f".. image:: {base}/{path}", f"   :alt: {alt}", ""]
            i += 1
        else:
            out.append(_inline(line))
            i += 1
    return out


class LensblurMarkdown(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        rel = self.arguments[0]
        src_dir = Path(self.env.doc2path(self.env.docname)).parent
        path = (src_dir / rel).resolve()
        self.env.note_dependency(str(path))
        if not path.is_file():
            logger.warning(f"lensblur-markdown: {path} not found", location=self.get_location())
            return []
        base = str(Path(rel).parent).replace("\\", "/")
        rst = markdown_to_rst(path.read_text(encoding="utf-8"), base)
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(rst, source=str(path)), container)
        return container.children


class LensblurToctree(TocTree):
    """``toctree`` that drops entries whose document does not exist (pages written by other
    contributors may land later) and, with ``:rest:``, appends every other top-level page that
    no toctree lists, so that a new page never breaks ``-W`` with "not in any toctree"."""

    option_spec = dict(TocTree.option_spec, rest=directives.flag)

    def run(self):
        found = self.env.found_docs
        here = self.env.docname
        kept, listed, slot = [], set(), None
        for entry in self.content:
            name = entry.strip()
            if name == "*":                 # where the :rest: pages go (default: the end)
                slot = len(kept)
                continue
            target = re.sub(r"^.*<(.+)>$", r"\1", name)
            if not name or target in found:
                kept.append(entry)
                listed.add(target)
        if "rest" in self.options:
            in_trees = _docs_in_toctrees(Path(self.env.srcdir))
            rest = [doc for doc in sorted(found) if "/" not in doc and doc != here
                    and doc not in listed and doc not in in_trees]
            slot = len(kept) if slot is None else slot
            kept[slot:slot] = rest
        self.content = StringList(kept, source=self.get_source_info()[0])
        return super().run()


def _docs_in_toctrees(srcdir: Path) -> set:
    """Documents named by plain ``toctree`` directives anywhere in the sources."""
    names = set()
    for rst in srcdir.rglob("*.rst"):
        if "_build" in rst.parts:
            continue
        text = rst.read_text(encoding="utf-8", errors="replace")
        for block in re.finditer(r"^\.\. (?:lensblur-)?toctree::[^\n]*\n((?:[ \t]+.*\n|\n)*)", text, re.M):
            base = rst.parent.relative_to(srcdir)
            for line in block.group(1).splitlines():
                entry = line.strip()
                if entry and not entry.startswith(":"):
                    entry = re.sub(r"^.*<(.+)>$", r"\1", entry)
                    if entry.startswith("/"):
                        names.add(entry.lstrip("/"))
                    else:
                        names.add(posixpath.normpath(posixpath.join(base.as_posix(), entry)))
    return names


class LensblurArgparse(SphinxDirective):
    """``.. lensblur-argparse:: SUBCOMMAND``: the ``--help`` text of ``lensblur SUBCOMMAND``,
    taken from :func:`lensblur.cli.build_parser` at build time so it never goes stale."""

    required_arguments = 1

    def run(self):
        import os

        from lensblur.cli import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        name = self.arguments[0]
        if name not in sub.choices:
            logger.warning(f"lensblur-argparse: no subcommand {name!r}", location=self.get_location())
            return []
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "96"
        try:
            text = sub.choices[name].format_help()
        finally:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
        text = re.sub(r"\(default: (cpu|cuda)\)", "(default: cuda when available, else cpu)", text)
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _reread_toctree_pages(app, env, added, changed, removed):
    """Pages with a ``lensblur-toctree`` depend on which pages exist: re-read them every build."""
    pages = []
    for doc in env.found_docs:
        path = Path(env.doc2path(doc))
        if path.is_file() and "lensblur-toctree::" in path.read_text(encoding="utf-8", errors="replace"):
            pages.append(doc)
    return pages


def setup(app):
    app.connect("env-get-outdated", _reread_toctree_pages)
    app.add_directive("lensblur-argparse", LensblurArgparse)
    app.add_directive("lensblur-api", LensblurApi)
    app.add_directive("lensblur-toctree", LensblurToctree)
    app.add_directive("lensblur-markdown", LensblurMarkdown)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
