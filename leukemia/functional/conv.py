"""conv2d on the C core (NCHW NumPy in, NCHW NumPy out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _ext
from ._check import as_f32, is_int, nchw_to_nhwc, nhwc_to_nchw, pair

Padding = int | Sequence[int] | str


def conv_padding(
    padding: Padding, kernel: tuple[int, int], stride: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Padding as (top, left, bottom, right).

    Accepts an int, (ph, pw), (top, left, bottom, right), "symmetric" ((k-1)//2, as
    torchvision) or "same" (TensorFlow's asymmetric SAME: the extra pixel goes to the
    bottom/right).
    """
    if isinstance(padding, str):
        if padding == "symmetric":
            return ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2) * 2  # type: ignore[return-value]
        if padding == "same":
            pads = []
            for k, s, n in zip(kernel, stride, size, strict=True):
                out = -(-n // s)
                pads.append(max((out - 1) * s + k - n, 0))
            return pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2
        raise ValueError(f"padding must be an int, a tuple, 'symmetric' or 'same', got {padding!r}")
    if isinstance(padding, Sequence) and len(padding) == 4:
        if not all(is_int(p) for p in padding):
            raise ValueError(f"padding must hold ints, got {padding!r}")
        top, left, bottom, right = (int(p) for p in padding)
        return top, left, bottom, right
    ph, pw = pair(padding, "padding")  # type: ignore[arg-type]
    return ph, pw, ph, pw


def _plan(
    x: np.ndarray, w: np.ndarray, stride: int | Sequence[int], padding: Padding, groups: int
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    if not is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    s = pair(stride, "stride")
    if min(s) < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    p = conv_padding(padding, (w.shape[2], w.shape[3]), s, (x.shape[2], x.shape[3]))
    if min(p) < 0:
        raise ValueError(f"padding must be >= 0, got {p}")
    return s, p


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: int | Sequence[int] = 1,
    padding: Padding = 0,
    groups: int = 1,
) -> np.ndarray:
    """2-D convolution like torch.nn.functional.conv2d.

    x [N, C, H, W], w [OC, C/groups, KH, KW], b [OC] or None -> y [N, OC, OH, OW].
    """
    x = as_f32(x, "x", 4)
    w = as_f32(w, "w", 4)
    if b is not None:
        b = as_f32(b, "b", 1)
    s, p = _plan(x, w, stride, padding, groups)
    n, _, h, wd = x.shape
    oh = (h + p[0] + p[2] - w.shape[2]) // s[0] + 1
    ow = (wd + p[1] + p[3] - w.shape[3]) // s[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {w.shape[2:]} is larger than the padded input {x.shape[2:]}")
    y = np.empty((n, oh, ow, w.shape[0]), np.float32)
    _ext().conv2d_forward(y, nchw_to_nhwc(x), w, b, s, p, int(groups))
    return nhwc_to_nchw(y)


def conv2d_backward(
    dy: np.ndarray,
    x: np.ndarray,
    w: np.ndarray,
    bias: bool = False,
    stride: int | Sequence[int] = 1,
    padding: Padding = 0,
    groups: int = 1,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients (dx, dw, db) of conv2d_forward given dy [N, OC, OH, OW]."""
    dy = as_f32(dy, "dy", 4)
    x = as_f32(x, "x", 4)
    w = as_f32(w, "w", 4)
    s, p = _plan(x, w, stride, padding, groups)
    oh = (x.shape[2] + p[0] + p[2] - w.shape[2]) // s[0] + 1
    ow = (x.shape[3] + p[1] + p[3] - w.shape[3]) // s[1] + 1
    if dy.shape != (x.shape[0], w.shape[0], oh, ow):
        raise ValueError(
            f"dy has shape {dy.shape} but {(x.shape[0], w.shape[0], oh, ow)} was expected"
        )
    dx = np.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), np.float32) if need_dx else None
    dw = np.empty_like(w)
    db = np.empty(w.shape[0], np.float32) if bias else None
    _ext().conv2d_backward(dx, dw, db, nchw_to_nhwc(dy), nchw_to_nhwc(x), w, s, p, int(groups))
    return (nhwc_to_nchw(dx) if dx is not None else None), dw, db
