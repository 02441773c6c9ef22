"""The Trainer's configuration: one dataclass, written to ``RUN_DIR/config.json``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .._util import is_int
from .cache import parse_bytes

__all__ = ["ARCH_ALIASES", "RESUME_MAY_CHANGE", "TrainConfig", "resolve_arch"]

ARCH_ALIASES = {
    "b3": "efficientnet_b3",
    "efficientnet-b3": "efficientnet_b3",
    "efficientnet_b3": "efficientnet_b3",
    "v2s": "efficientnet_v2_s",
    "v2-s": "efficientnet_v2_s",
    "v2_s": "efficientnet_v2_s",
    "efficientnetv2-s": "efficientnet_v2_s",
    "efficientnet_v2_s": "efficientnet_v2_s",
}

# Settings that do not change what is computed, so a resumed run may use other values.
RESUME_MAY_CHANGE = frozenset({"loader_workers", "cache", "cache_memory", "checkpoint_every"})


def resolve_arch(name: str) -> str:
    """torchvision's architecture name for ``name`` (``b3``, ``v2s``, or the full name)."""
    key = str(name).strip().lower()
    if key not in ARCH_ALIASES:
        raise ValueError(f"unknown architecture {name!r}; use b3 or v2s")
    return ARCH_ALIASES[key]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``).

    Attributes:
        arch: ``"b3"``/``"efficientnet_b3"`` or ``"v2s"``/``"efficientnet_v2_s"``.
        head: ``"multi_attention"`` (the study's), ``"linear"``, ``"channel_attention"``,
            ``"spatial_attention"``.
        policy: ``"last_block"``, ``"head"``, ``"all"``, a list of state_dict prefixes, or
            None for the head's default (``last_block`` for attention heads).
        weights: None (random initialisation), ``"imagenet"`` or a weights file.
        size: image side fed to the model (None: the architecture's, 300 / 384).
        epochs, batch_size: the schedule (the last incomplete batch is dropped, since
            batch-statistics BatchNorm needs more than one image). ``batch_size`` is the
            global batch: with N MPI ranks each takes ``batch_size / N`` images per step.
        lr: learning rate of the head; backbone_lr: of the trainable backbone layers
            (None: lr / 10).
        weight_decay: AdamW's decoupled decay (not applied to norms and biases).
        warmup: fraction of all steps spent in the linear warm-up of the cosine schedule.
        min_lr: learning rate at the end of the cosine.
        label_smoothing: as in torch's cross_entropy.
        class_weights: ``"balanced"`` (n / (K * count) from the training side), None, or
            one weight per class.
        max_grad_norm: global gradient-norm clipping (None: off).
        dropout, stochastic_depth: None keeps the model's defaults.
        augment: random crops, flips, rotations, stain and colour jitter; False feeds the
            deterministic evaluation transform (and makes the feature cache possible).
        cache: the frozen-prefix feature cache: ``"auto"`` (on when the training
            transform is deterministic), True (required; an error if impossible), False.
        cache_memory: memory for the caches (bytes or ``"2GiB"``); beyond it they spill
            to a file in the run directory.
        patience: stop after this many epochs without a better validation weighted F1
            (None: never).
        seed: initialisation, shuffling, augmentation, dropout and stochastic depth.
        threads: the C core's threads (None: as set, see ``leukemia.get_num_threads``; with
            several MPI ranks, each rank's share of its machine's cores).
        loader_workers: image-decoding threads (None: the measured default, see README).
        eval_batch_size: batch for validation and prediction, per process (None: twice
            the training images per process and step).
        checkpoint_every: also write ``last.ckpt`` every this many steps (0: at the end
            of each epoch only).
        split: how the validation side was chosen when fit() made it (recorded).
        val_fraction: share of the images held out when fit() makes the split.
    """

    arch: str = "efficientnet_b3"
    head: str = "multi_attention"
    policy: str | list[str] | None = None
    weights: str | None = None
    size: int | None = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    backbone_lr: float | None = None
    weight_decay: float = 1e-2
    warmup: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    class_weights: str | list[float] | None = "balanced"
    max_grad_norm: float | None = 1.0
    dropout: float | None = None
    stochastic_depth: float | None = None
    augment: bool = True
    cache: str | bool = "auto"
    cache_memory: int | str = "2GiB"
    patience: int | None = None
    seed: int = 0
    threads: int | None = None
    loader_workers: int | None = None
    eval_batch_size: int | None = None
    checkpoint_every: int = 0
    split: str = "patient"
    val_fraction: float = 0.2
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ValueError/TypeError naming the first bad one."""
        self.arch = resolve_arch(self.arch)
        from ..models.efficientnet import HEADS

        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if isinstance(self.policy, tuple):
            self.policy = list(self.policy)

        def count(name: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not is_int(v) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

        def real(name: str, lo: float, hi: float = math.inf, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")

        count("epochs", 1)
        count("batch_size", 2)
        count("size", 16, allow_none=True)
        count("seed", 0)
        count("threads", 1, allow_none=True)
        count("loader_workers", 0, allow_none=True)
        count("eval_batch_size", 1, allow_none=True)
        count("checkpoint_every", 0)
        count("patience", 1, allow_none=True)
        real("lr", 0.0, 10.0)
        real("backbone_lr", 0.0, 10.0, allow_none=True)
        real("weight_decay", 0.0, 10.0)
        real("warmup", 0.0, 1.0)
        real("min_lr", 0.0, 10.0)
        real("label_smoothing", 0.0, 1.0)
        real("max_grad_norm", 0.0, math.inf, allow_none=True)
        real("dropout", 0.0, 0.999, allow_none=True)
        real("stochastic_depth", 0.0, 0.999, allow_none=True)
        real("val_fraction", 0.01, 0.99)
        if self.cache not in ("auto", True, False):
            raise ValueError(f"cache must be 'auto', True or False, got {self.cache!r}")
        if self.cache is True and self.augment:
            raise ValueError(
                "cache=True needs a deterministic training transform (augment=False): "
                "augmented images differ every epoch"
            )
        parse_bytes(self.cache_memory)
        if self.split not in ("patient", "image", "given"):
            raise ValueError(f"split must be 'patient', 'image' or 'given', got {self.split!r}")
        cw = self.class_weights
        if not (cw is None or cw == "balanced"):
            if isinstance(cw, str) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in cw
            ):
                raise ValueError(
                    f"class_weights must be 'balanced', None or positive numbers, got {cw!r}"
                )
            self.class_weights = [float(w) for w in cw]
        if not isinstance(self.augment, bool):
            raise TypeError(f"augment must be a bool, got {self.augment!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown training option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)
