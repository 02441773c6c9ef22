"""Dropout and stochastic depth on the C core (elementwise: any shape).

The masks come from a counter-based generator: they depend only on the seed and
the element index (the sample index for stochastic depth), never on the thread
count. Kept values are scaled by float32(1 / (1 - p)), as PyTorch does; p == 1
gives zeros.
"""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32


def _p(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"p must be a float in [0, 1], got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:  # also rejects NaN
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return float(p)


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


def _flags(a: object, name: str) -> np.ndarray:
    """A mask as contiguous uint8 (bool is accepted and viewed as uint8)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of uint8, got {type(a).__name__}")
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (or bool), got {a.dtype}")
    return np.ascontiguousarray(a)


def dropout_forward(x: np.ndarray, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training-mode dropout: (y, mask) with y = x * mask / (1 - p), mask uint8 of x's shape."""
    x = as_f32(x, "x")
    y = np.empty_like(x)
    mask = np.empty(x.shape, np.uint8)
    _ext().dropout_forward(y, mask, x, _p(p), _seed(seed))
    return y, mask


def dropout_backward(dy: np.ndarray, mask: np.ndarray, p: float) -> np.ndarray:
    """dx = dy * mask / (1 - p) for the mask of dropout_forward."""
    dy = as_f32(dy, "dy")
    mask = _flags(mask, "mask")
    if mask.shape != dy.shape:
        raise ValueError(f"mask has shape {mask.shape} but dy has shape {dy.shape}")
    dx = np.empty_like(dy)
    _ext().dropout_backward(dx, dy, mask, _p(p))
    return dx


def stochastic_depth_forward(x: np.ndarray, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """torchvision StochasticDepth, mode "row", training: (y, keep) with keep [N] uint8.

    y[n] = x[n] * keep[n] / (1 - p); x has a leading batch axis.
    """
    if isinstance(x, np.ndarray) and x.ndim < 1:  # checked first: as_f32 makes 0-d 1-d
        raise ValueError("x must have a leading batch axis, got a 0-d array")
    x = as_f32(x, "x")
    y = np.empty_like(x)
    keep = np.empty(x.shape[0], np.uint8)
    _ext().stochastic_depth_forward(y, keep, x, _p(p), _seed(seed))
    return y, keep


def stochastic_depth_backward(dy: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    """dx[n] = dy[n] * keep[n] / (1 - p) for the flags of stochastic_depth_forward."""
    if isinstance(dy, np.ndarray) and dy.ndim < 1:  # checked first: as_f32 makes 0-d 1-d
        raise ValueError("dy must have a leading batch axis, got a 0-d array")
    dy = as_f32(dy, "dy")
    keep = _flags(keep, "keep")
    if keep.shape != (dy.shape[0],):
        raise ValueError(f"keep has shape {keep.shape} but ({dy.shape[0]},) was expected")
    dx = np.empty_like(dy)
    _ext().stochastic_depth_backward(dx, dy, keep, _p(p))
    return dx
