"""Linear layer on the C core: y = x w^T + b with torch's weight layout [OUT, IN]."""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32


def _check(x: np.ndarray, w: np.ndarray) -> None:
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"w has {w.shape[1]} input features but x has {x.shape[1]}")


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Like torch.nn.functional.linear: x [N, IN], w [OUT, IN], b [OUT] or None -> [N, OUT]."""
    x = as_f32(x, "x", 2)
    w = as_f32(w, "w", 2)
    _check(x, w)
    if b is not None:
        b = as_f32(b, "b", 1)
    y = np.empty((x.shape[0], w.shape[0]), np.float32)
    _ext().linear_forward(y, x, w, b)
    return y


def linear_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray, bias: bool = False, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients (dx [N, IN] or None, dw [OUT, IN], db [OUT] or None) from dy [N, OUT]."""
    dy = as_f32(dy, "dy", 2)
    x = as_f32(x, "x", 2)
    w = as_f32(w, "w", 2)
    _check(x, w)
    dx = np.empty_like(x) if need_dx else None
    dw = np.empty_like(w)
    db = np.empty(w.shape[0], np.float32) if bias else None
    _ext().linear_backward(dx, dw, db, dy, x, w)
    return dx, dw, db
