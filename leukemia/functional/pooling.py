"""Global average / max pooling on the C core: x [N, C, H, W] -> [N, C]."""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32, nchw_to_nhwc, nhwc_to_nchw


def _forward(x: np.ndarray, kind: str) -> np.ndarray:
    x = as_f32(x, "x", 4)
    y = np.empty((x.shape[0], x.shape[1]), np.float32)
    _ext().gpool_forward(y, nchw_to_nhwc(x), kind)
    return y


def _backward(dy: np.ndarray, x: np.ndarray, kind: str) -> np.ndarray:
    dy = as_f32(dy, "dy", 2)
    x = as_f32(x, "x", 4)
    if dy.shape != x.shape[:2]:
        raise ValueError(f"dy has shape {dy.shape} but x {x.shape} needs {x.shape[:2]}")
    n, c, h, w = x.shape
    dx = np.empty((n, h, w, c), np.float32)
    _ext().gpool_backward(dx, dy, nchw_to_nhwc(x), kind)
    return nhwc_to_nchw(dx)


def _no_nan(x: np.ndarray) -> None:
    # oneDNN's max skips NaN while torch propagates it: refuse rather than differ.
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and np.isnan(x).any():
        raise ValueError("x contains NaN (global max pooling needs NaN-free input)")


def global_avg_pool_forward(x: np.ndarray) -> np.ndarray:
    """Mean over H, W: like adaptive_avg_pool2d(x, 1) flattened to [N, C]."""
    return _forward(x, "avg")


def global_avg_pool_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx [N, C, H, W] (= dy / (H * W) everywhere) from dy [N, C]; x gives the shape."""
    return _backward(dy, x, "avg")


def global_max_pool_forward(x: np.ndarray) -> np.ndarray:
    """Max over H, W: like adaptive_max_pool2d(x, 1) flattened to [N, C]."""
    _no_nan(x)
    return _forward(x, "max")


def global_max_pool_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx [N, C, H, W]: dy routed to the first (row-major) argmax of each plane, as torch.

    The forward is recomputed on x to find the argmax.
    """
    _no_nan(x)
    return _backward(dy, x, "max")
