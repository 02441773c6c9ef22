"""Optimizers (torch.optim's SGD, Adam, AdamW) stepped in the C core over a model's flat
parameter arena, and learning-rate schedules that act on their `param_groups`."""

from .lr_scheduler import CosineWarmup, LRScheduler, ReduceLROnPlateau, StepLR
from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "LRScheduler",
    "CosineWarmup",
    "StepLR",
    "ReduceLROnPlateau",
]
