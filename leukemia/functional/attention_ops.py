"""Attention helpers on the C core: mean/max over channels, softmax over positions,
the spatial gate (a one-channel map times every channel) and the attention-weighted
sum over positions (attention pooling).

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


def _spatial_mul_args(x: np.ndarray, map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = as_f32(x, "x", 4)
    map = as_f32(map, "map", 4)
    n, c, h, w = x.shape
    if c < 1:
        raise ValueError(f"x must have at least one channel, got shape {x.shape}")
    if map.shape != (n, 1, h, w):
        raise ValueError(f"map has shape {map.shape} but x {x.shape} needs {(n, 1, h, w)}")
    return x, map


def spatial_mul_forward(x: np.ndarray, map: np.ndarray) -> np.ndarray:
    """y [N, C, H, W] = x * map for a one-channel map [N, 1, H, W] (spatial attention gate)."""
    x, map = _spatial_mul_args(x, map)
    xh = nchw_to_nhwc(x)
    y = np.empty_like(xh)
    # [N, 1, H, W] and its NHWC form [N, H, W, 1] share one memory layout.
    _ext().spatial_mul_forward(y, xh, map.reshape(x.shape[0], x.shape[2], x.shape[3], 1))
    return nhwc_to_nchw(y)


def spatial_mul_backward(
    dy: np.ndarray, x: np.ndarray, map: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(dx = dy * map [N, C, H, W], dmap [N, 1, H, W] = sum over C of dy * x) from dy."""
    x, map = _spatial_mul_args(x, map)
    dy = as_f32(dy, "dy", 4)
    if dy.shape != x.shape:
        raise ValueError(f"dy has shape {dy.shape} but x has {x.shape}")
    n, _, h, w = x.shape
    dyh = nchw_to_nhwc(dy)
    dx = np.empty_like(dyh)
    dmap = np.empty((n, h, w, 1), np.float32)
    _ext().spatial_mul_backward(dx, dmap, dyh, nchw_to_nhwc(x), map.reshape(n, h, w, 1))
    return nhwc_to_nchw(dx), dmap.reshape(n, 1, h, w)


def _weighted_sum_args(x: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [N, C, H, W] as its NHWC view [N, H*W, C], and a [N, H*W]."""
    x = as_f32(x, "x", 4)
    a = as_f32(a, "a", 2)
    n, c, h, w = x.shape
    if n < 1 or c < 1 or h * w < 1:
        raise ValueError(f"x must have positive sizes, got shape {x.shape}")
    if a.shape != (n, h * w):
        raise ValueError(f"a has shape {a.shape} but x {x.shape} needs {(n, h * w)} (N, H*W)")
    return nchw_to_nhwc(x).reshape(n, h * w, c), a


def weighted_sum_forward(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """p [N, C] = sum over positions of a [N, H*W] * x [N, C, H, W] (attention pooling)."""
    xs, a = _weighted_sum_args(x, a)
    p = np.empty((xs.shape[0], xs.shape[2]), np.float32)
    _ext().weighted_sum_forward(p, xs, a)
    return p


def weighted_sum_backward(
    dp: np.ndarray, x: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(dx [N, C, H, W] = a * dp, da [N, H*W] = dp . x at each position) from dp [N, C]."""
    x = as_f32(x, "x", 4)
    xs, a = _weighted_sum_args(x, a)
    dp = as_f32(dp, "dp", 2)
    if dp.shape != x.shape[:2]:
        raise ValueError(f"dp has shape {dp.shape} but x {x.shape} needs {x.shape[:2]}")
    dx = np.empty_like(xs)
    da = np.empty_like(a)
    _ext().weighted_sum_backward(dx, da, dp, xs, a)
    n, c, h, w = x.shape
    return nhwc_to_nchw(dx.reshape(n, h, w, c)), da
