"""Training checkpoints: model, optimizer, schedule, trainer state and history in one
safetensors file, written atomically.

Layout: tensors ``model/<state_dict key>`` (num_batches_tracked included) and
``optim/<state name>`` (the optimizer's compact state arrays and per-group step counts);
everything else is JSON in the ``__metadata__`` entry ``leukemia.checkpoint``: the format
tag and version, architecture, head, classes, policy, the optimizer's groups and
hyper-parameters, the schedule's state, the trainer's position (epoch, step within the
epoch, global step), its bookkeeping (best score, early-stopping counter, partial epoch
sums) and the history so far. Because the file is written to a temporary name, fsync'ed
and renamed (:func:`leukemia.io.atomic_write`), a reader only ever sees a complete
checkpoint, whatever moment the writer was killed at.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.safetensors import load_safetensors, save_safetensors

__all__ = ["Checkpoint", "CheckpointMismatch", "load_checkpoint", "save_checkpoint"]

FORMAT = "leukemia.checkpoint"
VERSION = 1
_META = "leukemia.checkpoint"


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to another architecture, head or class count."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read.

    Attributes:
        path: the file.
        model: the model's state_dict.
        optimizer: the optimizer's ``state_dict()`` (None if it was not saved).
        meta: the JSON part (arch, head, num_classes, policy, scheduler, trainer, history).
    """

    path: Path
    model: dict[str, np.ndarray]
    optimizer: dict[str, Any] | None
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return int(self.meta["trainer"]["epoch"])

    @property
    def step_in_epoch(self) -> int:
        """Steps done in the epoch after :attr:`epoch` (0 at an epoch boundary)."""
        return int(self.meta["trainer"]["step_in_epoch"])

    def check_model(self, arch: str, head: str, num_classes: int) -> None:
        """Raise CheckpointMismatch unless the checkpoint is for this kind of model."""
        theirs = (self.meta["arch"], self.meta["head"], int(self.meta["num_classes"]))
        if theirs != (arch, head, int(num_classes)):
            raise CheckpointMismatch(
                f"{self.path} holds a {theirs[0]} with the {theirs[1]} head and {theirs[2]} "
                f"classes, not a {arch} with the {head} head and {num_classes} classes"
            )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Any,
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    trainer: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    tensors: dict[str, np.ndarray] = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_meta = None
    if optimizer is not None:
        state = optimizer.state_dict()
        for name, arr in state["state"].items():
            if arr is not None:
                tensors[f"optim/{name}"] = np.asarray(arr, np.float32)
        tensors["optim/steps"] = np.asarray(state["steps"], np.int64)
        opt_meta = {
            k: _jsonable(state[k]) for k in ("format", "version", "kind", "params", "param_groups")
        }
        opt_meta["state_names"] = sorted(state["state"])
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "head": model.head,
        "num_classes": model.num_classes,
        "policy": _jsonable(model.policy),
        "optimizer": opt_meta,
        "scheduler": None if scheduler is None else _jsonable(scheduler.state_dict()),
        "trainer": _jsonable(trainer or {"epoch": 0, "step_in_epoch": 0}),
        "history": _jsonable(history or []),
        **_jsonable(extra or {}),
    }
    save_safetensors(path, tensors, {_META: json.dumps(meta, allow_nan=True)})


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (ValueError if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    tensors, metadata = load_safetensors(path, dtype=None, with_metadata=True)
    raw = metadata.get(_META)
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not a leukemia training checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the checkpoint's metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a leukemia training checkpoint")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint version {meta.get('version')!r} is not supported (this "
            f"leukemia reads version {VERSION})"
        )
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    optimizer = None
    opt_meta = meta.get("optimizer")
    if opt_meta is not None:
        names = opt_meta.pop("state_names")
        optimizer = {
            **opt_meta,
            "params": [(n, tuple(s)) for n, s in opt_meta["params"]],
            "steps": tensors.get("optim/steps", np.zeros(0, np.int64)),
            "state": {n: tensors.get(f"optim/{n}") for n in names},
        }
        for g in optimizer["param_groups"]:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
            if isinstance(g.get("prefix"), list):
                g["prefix"] = tuple(g["prefix"])
    return Checkpoint(path, model, optimizer, meta)
