"""Argument normalisation shared by the layer-level NumPy API.

The C binding checks again (dtype, rank, contiguity, writability); these helpers
give the friendlier messages and the NCHW <-> NHWC conversions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._util import is_int


def as_f32(x: object, name: str, ndim: int | None = None) -> np.ndarray:
    """Return `x` as a C-contiguous, aligned float32 array (a copy if it is a strided
    view or sits at an odd address); TypeError for other dtypes."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return np.require(x, requirements="CA")


def check_finite(x: np.ndarray, name: str) -> None:
    """ValueError if `x` holds NaN or Inf."""
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> contiguous, aligned [N, H, W, C]."""
    return np.require(x.transpose(0, 2, 3, 1), requirements="CA")


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """[N, H, W, C] -> contiguous, aligned [N, C, H, W]."""
    return np.require(x.transpose(0, 3, 1, 2), requirements="CA")


def pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of ints."""
    if is_int(v):
        return int(v), int(v)  # type: ignore[arg-type]
    if isinstance(v, Sequence) and len(v) == 2 and all(is_int(i) for i in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
