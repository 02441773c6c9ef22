"""Broadcast channel multiply and elementwise add on the C core (NCHW NumPy)."""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32, nchw_to_nhwc, nhwc_to_nchw


def _chmul_args(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = as_f32(x, "x", 4)
    s = as_f32(s, "s", 2)
    if s.shape != x.shape[:2]:
        raise ValueError(f"s has shape {s.shape} but x {x.shape} needs {x.shape[:2]}")
    return x, s


def channel_mul_forward(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """y [N, C, H, W] = x * s[:, :, None, None] for s [N, C] (SE gate, channel attention)."""
    x, s = _chmul_args(x, s)
    xh = nchw_to_nhwc(x)
    y = np.empty_like(xh)
    _ext().chmul_forward(y, xh, s)
    return nhwc_to_nchw(y)


def channel_mul_backward(
    dy: np.ndarray, x: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(dx = dy * s, ds [N, C] = sum over H, W of dy * x) from dy [N, C, H, W]."""
    x, s = _chmul_args(x, s)
    dy = as_f32(dy, "dy", 4)
    if dy.shape != x.shape:
        raise ValueError(f"dy has shape {dy.shape} but x has {x.shape}")
    dyh = nchw_to_nhwc(dy)
    dx = np.empty_like(dyh)
    ds = np.empty_like(s)
    _ext().chmul_backward(dx, ds, dyh, nchw_to_nhwc(x), s)
    return nhwc_to_nchw(dx), ds


def add_forward(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b for two float32 arrays of the same shape (no broadcasting)."""
    a = as_f32(a, "a")
    b = as_f32(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"b has shape {b.shape} but a has {a.shape}")
    y = np.empty_like(a)
    _ext().add_forward(y, a, b)
    return y
