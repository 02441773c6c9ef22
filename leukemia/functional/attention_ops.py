"""Attention helpers on the C core: mean/max over channels and softmax over positions.

Max over channels follows torch.max(x, dim=1).values: on ties the first maximal
channel is the argmax and receives the whole gradient (torch.amax would split it).
"""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32, nchw_to_nhwc, nhwc_to_nchw


def channel_stats_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [N, C, H, W] -> (y [N, 2, H, W] = [mean over C, max over C], argmax [N, H, W] int32)."""
    x = as_f32(x, "x", 4)
    n, c, h, w = x.shape
    if c < 1:
        raise ValueError(f"x must have at least one channel, got shape {x.shape}")
    y = np.empty((n, h, w, 2), np.float32)
    argmax = np.empty((n, h, w), np.int32)
    _ext().channel_stats_forward(y, argmax, nchw_to_nhwc(x))
    return nhwc_to_nchw(y), argmax


def channel_stats_backward(dy: np.ndarray, argmax: np.ndarray, channels: int) -> np.ndarray:
    """dx [N, C, H, W] from dy [N, 2, H, W] and the argmax of channel_stats_forward."""
    dy = as_f32(dy, "dy", 4)
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    n, two, h, w = dy.shape
    if two != 2:
        raise ValueError(f"dy must have 2 channels (mean, max), got shape {dy.shape}")
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32:
        raise TypeError("argmax must be the int32 numpy.ndarray returned by channel_stats_forward")
    if argmax.shape != (n, h, w):
        raise ValueError(f"argmax has shape {argmax.shape} but {(n, h, w)} was expected")
    dx = np.empty((n, h, w, int(channels)), np.float32)
    _ext().channel_stats_backward(dx, nchw_to_nhwc(dy), np.ascontiguousarray(argmax))
    return nhwc_to_nchw(dx)


def spatial_softmax_forward(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of x [N, L] (L = H*W positions)."""
    x = as_f32(x, "x", 2)
    y = np.empty_like(x)
    _ext().spatial_softmax_forward(y, x)
    return y


def spatial_softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx [N, L] from dy and the forward output y."""
    dy = as_f32(dy, "dy", 2)
    y = as_f32(y, "y", 2)
    if dy.shape != y.shape:
        raise ValueError(f"dy has shape {dy.shape} but y has shape {y.shape}")
    dx = np.empty_like(y)
    _ext().spatial_softmax_backward(dx, dy, y)
    return dx
