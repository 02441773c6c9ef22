"""Optimizers (torch.optim's SGD, Adam, AdamW) stepped in the C core over a model's flat
parameter arena."""

from .optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
