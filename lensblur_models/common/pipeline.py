"""One pipeline shape for the three families.

A pipeline subclasses :class:`PipelineMixin` and

* registers its components by name (:meth:`PipelineMixin.register_components`; ``None`` for an
  absent optional one), listed in ``pipe.components``;
* answers ``pipe(...)`` under ``torch.no_grad()`` with an output dataclass (its ``run`` method
  does the work; a training path calls the differentiable method directly);
* saves to and loads from **one local folder**: ``pipeline.json`` (the pipeline class, each
  component's class and the pipeline's own settings) plus one subfolder per component, written
  by the component's own ``save_pretrained`` and read by its class's ``from_pretrained``.

Components that come from ``lensblur_models`` (networks, codecs, the depth wrapper, the
generator adapter) are saved; a plain callable (``depth_estimator=lambda aif: ...``) is recorded
as *external* and must be passed again to ``from_pretrained``.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Union

import torch

from lensblur import LensBlurError

__all__ = ["PipelineMixin", "PIPELINE_CONFIG"]

PIPELINE_CONFIG = "pipeline.json"


def _class_path(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _load_class(path: str):
    module, _, name = path.partition(":")
    if not module.startswith("lensblur_models."):
        raise LensBlurError(f"{PIPELINE_CONFIG} names component class {path!r}; only lensblur_models classes load")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


class PipelineMixin:
    """The shared pipeline shape (see the module docstring).

    Subclasses set ``_settings`` (a dict of JSON-able constructor arguments that are not
    components) and implement ``run(...)``, the body of ``__call__``.
    """

    _settings: Dict[str, Any] = {}

    def register_components(self, **components) -> None:
        """Register ``name=component`` pairs (also set as attributes)."""
        if not hasattr(self, "_component_names"):
            object.__setattr__(self, "_component_names", [])
        for name, comp in components.items():
            setattr(self, name, comp)
            if name not in self._component_names:
                self._component_names.append(name)

    @property
    def components(self) -> Dict[str, Any]:
        """The registered components by name (``None`` for absent optional ones)."""
        return {n: getattr(self, n) for n in getattr(self, "_component_names", [])}

    def run(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        """Run the pipeline for inference (``torch.no_grad()``); returns its output dataclass."""
        with torch.no_grad():
            return self.run(*args, **kwargs)

    def save_pretrained(self, path: Union[str, os.PathLike]) -> Path:
        """Write ``pipeline.json`` and one subfolder per component to the directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        parts, external = {}, []
        for name, comp in self.components.items():
            if comp is None:
                continue
            if not hasattr(comp, "save_pretrained") or not type(comp).__module__.startswith("lensblur_models."):
                external.append(name)  # a user callable: passed again at load time
                continue
            comp.save_pretrained(path / name)
            parts[name] = _class_path(comp)
        meta = {"class": _class_path(self), "components": parts, "external": external,
                "settings": self._settings}
        (path / PIPELINE_CONFIG).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load_components(cls, path: Union[str, os.PathLike]) -> tuple:
        """``(components, settings)`` read from a folder written by :meth:`save_pretrained`."""
        path = Path(path)
        meta_file = path / PIPELINE_CONFIG
        if not meta_file.is_file():
            raise LensBlurError(f"`path` {str(path)!r} is not a local pipeline folder (no {PIPELINE_CONFIG})")
        meta = json.loads(meta_file.read_text())
        saved = meta.get("class", "").rpartition(":")[2]
        if saved and saved != cls.__name__:
            raise LensBlurError(f"`path` {str(path)!r} holds a {saved}, not a {cls.__name__}")
        comps = {name: _load_class(cp).from_pretrained(path / name) for name, cp in meta.get("components", {}).items()}
        comps.update({name: _External(name) for name in meta.get("external", [])})
        return comps, meta.get("settings", {})

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], **overrides):
        """Load a pipeline saved by :meth:`save_pretrained`; ``overrides`` replace components or
        settings and must supply the external (unsaved callable) components."""
        comps, settings = cls.load_components(path)
        kwargs = {**settings, **comps, **overrides}
        missing = [n for n, v in kwargs.items() if isinstance(v, _External)]
        if missing:
            raise LensBlurError(f"`{missing[0]}` was a plain callable when the pipeline was saved: pass it again, "
                                f"e.g. from_pretrained(path, {missing[0]}=...)")
        return cls(**kwargs)


class _External:
    def __init__(self, name: str) -> None:
        self.name = name


