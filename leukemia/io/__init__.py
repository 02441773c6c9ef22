"""Weights in and out, without torch.

* :func:`load_pth` / :func:`save_pth`: torch zip checkpoints through an allow-listing
  unpickler (no code from the pickle ever runs).
* :func:`load_safetensors` / :func:`save_safetensors`: safetensors, fully validated.
* :func:`timm_to_torchvision` / :func:`torchvision_to_timm` / :func:`detect_key_style`:
  parameter-name mapping for EfficientNet and EfficientNetV2.
* :func:`match_state_dict`: strict or lenient matching against a model's expected shapes.
* :func:`load_weights` / :func:`save_weights`: a loader that recognises the format from the
  content (and renames timm keys), a saver that picks it from the file name.
* :func:`atomic_write`: temporary file + fsync + rename, used by every writer here.
"""

from __future__ import annotations

from .atomic import atomic_write
from .errors import CheckpointError, UnsafePickleError
from .keys import (
    KeyMappingError,
    detect_key_style,
    strip_key_prefix,
    timm_to_torchvision,
    torchvision_to_timm,
)
from .pth import load_pth, save_pth, unwrap_state_dict
from .safetensors import load_safetensors, read_safetensors_header, save_safetensors
from .state_dict import (
    LoadReport,
    StateDictError,
    load_weights,
    match_state_dict,
    save_weights,
)

__all__ = [
    "CheckpointError",
    "KeyMappingError",
    "LoadReport",
    "StateDictError",
    "UnsafePickleError",
    "atomic_write",
    "detect_key_style",
    "load_pth",
    "load_safetensors",
    "load_weights",
    "match_state_dict",
    "read_safetensors_header",
    "save_pth",
    "save_safetensors",
    "save_weights",
    "strip_key_prefix",
    "timm_to_torchvision",
    "torchvision_to_timm",
    "unwrap_state_dict",
]
