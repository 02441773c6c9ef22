"""Training: the Trainer, its configuration, run directories, checkpoints and the
frozen-prefix feature cache. See :class:`Trainer` and :func:`fit`."""

from .cache import FeatureCache, parse_bytes
from .checkpoint import Checkpoint, CheckpointMismatch, load_checkpoint, save_checkpoint
from .config import TrainConfig, resolve_arch
from .rundir import RunDirError
from .trainer import (
    DEFAULT_LOADER_WORKERS,
    FitResult,
    Trainer,
    TrainingError,
    TrainingInterrupted,
    fit,
)

__all__ = [
    "DEFAULT_LOADER_WORKERS",
    "Checkpoint",
    "CheckpointMismatch",
    "FeatureCache",
    "FitResult",
    "RunDirError",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "fit",
    "load_checkpoint",
    "parse_bytes",
    "resolve_arch",
    "save_checkpoint",
]
