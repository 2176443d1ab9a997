"""The shared floor of the three model families.

* :class:`ModelConfig` — the config base: ``tiny()`` / ``small()`` / ``base()`` presets and one
  naming (``in_channels``, ``patch_size``, ``dim``, ``depth``, ``heads``, ``mlp_ratio``).
* :class:`LensBlurModel` — ``diffusers`` ``ModelMixin`` + ``ConfigMixin``: ``save_pretrained`` /
  ``from_pretrained(path, torch_dtype=...)`` and gradient checkpointing from the library.
* :mod:`.checks` — the argument checks every public boundary uses.
* :mod:`.flux` — :class:`FluxAdapterBase`, the one FLUX transformer + LoRA adapter that each
  family subclasses for its conditioning (imported lazily: it needs ``peft``).
* :mod:`.depth` — :class:`DepthEstimator`, the one ``transformers`` depth wrapper.
* :mod:`.train` — the one Accelerate training loop (:func:`~lensblur_models.common.train.train_loop`);
  :mod:`.data` — the streaming image dataset.
"""

from .checks import check_int, check_pair, check_tensor4, check_transformer_args
from .config import ModelConfig
from .depth import DepthEstimator
from .modeling import LensBlurModel

__all__ = ["ModelConfig", "LensBlurModel", "DepthEstimator", "check_int", "check_pair", "check_tensor4",
           "check_transformer_args"]
