"""The model base: ``diffusers`` ``ModelMixin`` + ``ConfigMixin`` for every native network.

A network subclasses :class:`LensBlurModel`, names its architecture dataclass in ``config_class``
(a :class:`~lensblur_models.common.ModelConfig` with the presets) and decorates its constructor
with ``diffusers.configuration_utils.register_to_config``.  The constructor's arguments *are*
the config, so the library provides:

* ``net.save_pretrained(dir)`` -> ``dir/config.json`` + ``dir/diffusion_pytorch_model.safetensors``;
* ``Net.from_pretrained(dir, torch_dtype=torch.bfloat16)`` (local directories; nothing is
  downloaded when ``dir`` exists);
* ``net.enable_gradient_checkpointing()`` (every :class:`~lensblur_models.nn.TokenTransformer`
  inside recomputes its blocks in the backward pass);
* ``net.config`` (a frozen dict with attribute access, e.g. ``net.config.dim``).

:meth:`LensBlurModel.from_config` also accepts a config dataclass, so
``Net.from_config(NetConfig.tiny())`` builds the tiny preset.

Example:
    >>> import tempfile, torch
    >>> from lensblur_models import RefocusDiT, RefocusDiTConfig
    >>> net = RefocusDiT.from_config(RefocusDiTConfig.tiny())
    >>> with tempfile.TemporaryDirectory() as d:
    ...     net.save_pretrained(d)
    ...     back = RefocusDiT.from_pretrained(d, torch_dtype=torch.bfloat16)
    >>> back.dtype, back.config.dim == net.config.dim
    (torch.bfloat16, True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Optional, Type, Union

from diffusers import ConfigMixin, ModelMixin

from lensblur import LensBlurError

from .config import ModelConfig

__all__ = ["LensBlurModel"]


class LensBlurModel(ModelMixin, ConfigMixin):
    """Base class of the native networks (see the module docstring).

    Class attributes:
        config_class: the :class:`~lensblur_models.common.ModelConfig` dataclass of the network.
    """

    config_name = "config.json"
    config_class: ClassVar[Optional[Type[ModelConfig]]] = None
    _supports_gradient_checkpointing = True

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs: bool = False, **kwargs):
        """Build a network from a config: a ``config_class`` instance, a dict or ``net.config``."""
        if isinstance(config, ModelConfig):
            if cls.config_class is not None and not isinstance(config, cls.config_class):
                raise TypeError(f"`config` must be a {cls.config_class.__name__}, got {type(config).__name__}")
            config = config.to_dict()
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        """Load a network written by ``save_pretrained`` from a **local** directory.

        Keyword arguments go to ``diffusers.ModelMixin.from_pretrained`` (``torch_dtype``,
        ``subfolder``, ``device_map`` ...).  The directory must hold a network of this class.
        """
        path = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        config_file = path / cls.config_name
        if not config_file.is_file():
            raise LensBlurError(f"`pretrained_model_name_or_path` {str(path)!r} must be a local directory with "
                                f"{cls.config_name} (nothing is downloaded)")
        name = json.loads(config_file.read_text()).get("_class_name")
        if name not in (None, cls.__name__):
            raise LensBlurError(f"`pretrained_model_name_or_path` {str(path)!r} holds a {name}, not a {cls.__name__}")
        return super().from_pretrained(os.fspath(pretrained_model_name_or_path), **kwargs)

    def architecture(self) -> ModelConfig:
        """This network's config as its ``config_class`` dataclass (``net.config`` is a frozen dict)."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(self.config_class)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.config.items() if k in names}
        return self.config_class(**values)
