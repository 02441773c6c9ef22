"""Matching a checkpoint against a model's expected parameters, and format dispatch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .keys import detect_key_style, strip_key_prefix, timm_to_torchvision
from .pth import CheckpointError, load_pth, save_pth
from .safetensors import load_safetensors, save_safetensors

__all__ = ["LoadReport", "StateDictError", "match_state_dict", "load_weights", "save_weights"]


class StateDictError(ValueError):
    """Strict loading found missing, unexpected or shape-mismatched keys.

    The :class:`LoadReport` is available as ``.report``.
    """

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class LoadReport:
    """Outcome of matching a checkpoint against the expected parameter shapes.

    Attributes:
        loaded: names present in both with equal shapes (in expected order).
        missing: expected names absent from the checkpoint.
        unexpected: checkpoint names the model does not have.
        mismatched: ``(name, expected_shape, given_shape)`` for names present in both
            whose shapes differ.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every expected key loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self) -> str:
        """A ``load_state_dict``-style description of every problem (empty if none)."""
        lines = []
        if self.missing:
            lines.append("Missing key(s): " + ", ".join(f'"{k}"' for k in self.missing) + ".")
        if self.unexpected:
            lines.append("Unexpected key(s): " + ", ".join(f'"{k}"' for k in self.unexpected) + ".")
        for name, want, got in self.mismatched:
            lines.append(
                f"size mismatch for {name}: copying a param with shape {got} from checkpoint, "
                f"the shape in current model is {want}."
            )
        return "\n\t".join(lines)


def match_state_dict(
    expected: Mapping[str, tuple[int, ...]],
    given: Mapping[str, Any],
    strict: bool = True,
) -> LoadReport:
    """Compare a checkpoint with the parameter shapes a model expects.

    Every key, ``num_batches_tracked`` included, is treated alike.

    Args:
        expected: ``{name: shape}`` of the model.
        given: ``{name: array}`` from the checkpoint (anything with ``.shape``).
        strict: raise on any difference (like ``torch.nn.Module.load_state_dict``);
            with ``False`` the report is returned and the caller loads ``report.loaded``.

    Raises:
        StateDictError: ``strict`` and some key is missing, unexpected or mismatched;
            the message lists all of them.
    """
    report = LoadReport()
    for name, shape in expected.items():
        want = tuple(int(d) for d in shape)
        if name not in given:
            report.missing.append(name)
            continue
        got = tuple(int(d) for d in np.shape(given[name]))
        if got == want:
            report.loaded.append(name)
        else:
            report.mismatched.append((name, want, got))
    report.unexpected = [k for k in given if k not in expected]
    if strict and not report.ok:
        raise StateDictError("Error(s) in loading state_dict:\n\t" + report.message(), report)
    return report


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def load_weights(
    path: str | os.PathLike[str], dtype: np.dtype[Any] | type | None = np.float32
) -> dict[str, np.ndarray]:
    """Load a checkpoint of any supported kind as a torchvision-named state_dict.

    The format is recognised from the content, not the file name: a zip archive is read
    as a torch checkpoint (:func:`load_pth`, no torch needed), an 8-byte length followed
    by a JSON object as safetensors (:func:`load_safetensors`). Wrapper prefixes such as
    ``module.`` are stripped and timm key names are renamed to torchvision's.

    Args:
        path: ``.pth``/``.pt``/``.safetensors`` file.
        dtype: floating tensors are converted to it (default float32; ``None`` keeps
            them); integer tensors such as ``num_batches_tracked`` are kept.

    Raises:
        CheckpointError (a ValueError): unknown format, or a broken file.
        UnsafePickleError: a pickle that references a non-allow-listed global.
        KeyMappingError: keys in neither torchvision nor timm style.
    """
    source = os.fspath(path)
    with open(source, "rb") as f:
        head = f.read(9)
    if head[:4] in _ZIP_MAGIC:
        tensors = load_pth(source, dtype=dtype)
    elif len(head) == 9 and head[8:9] == b"{":
        tensors = load_safetensors(source, dtype=dtype)  # type: ignore[assignment]
    elif head[:1] == b"\x80":
        raise CheckpointError(
            f"{source}: a bare pickle (legacy torch.save format or plain pickle) cannot be "
            "loaded safely; re-save it with a recent torch.save, or convert to safetensors"
        )
    else:
        raise CheckpointError(
            f"{source}: unrecognised weight file: neither a torch zip checkpoint nor safetensors"
        )
    tensors = strip_key_prefix(tensors)
    if detect_key_style(tensors) == "timm":
        tensors = timm_to_torchvision(tensors)
    return tensors


def save_weights(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save a state_dict atomically, as safetensors if ``path`` ends in ``.safetensors``,
    otherwise as a torch zip checkpoint that ``torch.load(weights_only=True)`` reads.

    ``metadata`` is only stored in safetensors files.
    """
    if os.fspath(path).endswith(".safetensors"):
        save_safetensors(path, tensors, metadata)
    else:
        save_pth(path, tensors)
