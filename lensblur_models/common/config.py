"""One configuration base for every ``lensblur_models`` network: presets and one naming.

Every architecture config is a dataclass deriving from :class:`ModelConfig`, with the same field
names across the families:

=================  ==========================================================================
``in_channels``    channels of the image or latent the network reads (3 RGB, 16 FLUX latents)
``patch_size``     pixels (or latent pixels) per token side
``dim``            transformer width
``depth``          number of transformer blocks
``heads``          attention heads
``mlp_ratio``      MLP hidden width / ``dim``
=================  ==========================================================================

Presets live in one class attribute, ``PRESETS = {"tiny": {...}, "small": {...}, "base":
{...}}``, read by :meth:`ModelConfig.tiny`, :meth:`ModelConfig.small` and
:meth:`ModelConfig.base` (keyword arguments override a preset's values).  The network classes
(:class:`~lensblur_models.common.LensBlurModel`) take these fields as their constructor arguments;
``Net.from_config(config)`` builds one from a config instance.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class MyConfig(ModelConfig):
    ...     in_channels: int = 3
    ...     dim: int = 64
    ...     PRESETS = {"tiny": {"dim": 16}}
    >>> MyConfig.tiny(in_channels=1).to_dict()
    {'in_channels': 1, 'dim': 16}
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict

from lensblur import LensBlurError

__all__ = ["ModelConfig"]


@dataclasses.dataclass
class ModelConfig:
    """Base of the architecture configs (a dataclass; see the module docstring)."""

    PRESETS: ClassVar[Dict[str, Dict[str, Any]]] = {}

    @classmethod
    def preset(cls, name: str, **overrides):
        """The preset ``name`` (``"tiny"``, ``"small"``, ``"base"``) with ``overrides`` applied."""
        if name not in cls.PRESETS:
            raise LensBlurError(f"unknown preset `name` {name!r} for {cls.__name__}; expected one of "
                                f"{', '.join(sorted(cls.PRESETS))}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def tiny(cls, **overrides):
        """A few thousand to a few hundred thousand parameters: CPU tests and examples."""
        return cls.preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides):
        """DiT-S / ViT-S sized (tens of millions of parameters)."""
        return cls.preset("small", **overrides)

    @classmethod
    def base(cls, **overrides):
        """DiT-B / ViT-B sized, for GPU training."""
        return cls.preset("base", **overrides)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (tuples stay tuples)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with ``changes`` applied (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)
