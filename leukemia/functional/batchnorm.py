"""Batch normalization on the C core (NCHW / NC NumPy in and out).

Modes, as in `torch.nn.BatchNorm2d` / `BatchNorm1d`:
  - "train": batch statistics (biased variance for the normalisation); the running
    statistics, when given, are updated IN PLACE like PyTorch:
    running = (1 - momentum) * running + momentum * batch, with the unbiased batch
    variance var * M / (M - 1), M = N*H*W. M must be > 1.
  - "eval": the running statistics normalise; no backward.
  - "frozen": as eval in the forward, and the backward treats the running statistics
    as constants (PyTorch's module.eval() with trainable weight/bias).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _ext
from ._check import as_f32, check_finite, nchw_to_nhwc, nhwc_to_nchw

_MODES = {"train": 0, "eval": 1, "frozen": 2}


def _mode(mode: str | bool) -> int:
    if isinstance(mode, bool):  # torch's `training` flag
        return 0 if mode else 1
    if mode not in _MODES:
        raise ValueError(f"mode must be 'train', 'eval', 'frozen' or a bool, got {mode!r}")
    return _MODES[mode]


def _check_x(x: object, name: str) -> np.ndarray:
    x = as_f32(x, name)
    if x.ndim not in (2, 4):
        raise ValueError(f"{name} must be [N, C, H, W] or [N, C], got shape {x.shape}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")
    return x


def _check_vec(v: object, name: str, c: int) -> np.ndarray:
    v = as_f32(v, name, 1)
    if v.shape != (c,):
        raise ValueError(f"{name} has shape {v.shape} but ({c},) was expected (channels of x)")
    return v


def _check_running(v: object, name: str, c: int, writable: bool) -> np.ndarray:
    """Running statistics are updated in place: no silent copies allowed."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(v).__name__}")
    if v.dtype != np.float32:
        raise TypeError(f"{name} must have dtype float32 (it is updated in place), got {v.dtype}")
    if v.shape != (c,):
        raise ValueError(f"{name} has shape {v.shape} but ({c},) was expected (channels of x)")
    if not v.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
    if writable and not v.flags.writeable:
        raise ValueError(f"{name} is read-only but train mode updates it in place")
    check_finite(v, name)
    return v


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _to_c(x: np.ndarray) -> np.ndarray:
    return nchw_to_nhwc(x) if x.ndim == 4 else x


def _from_c(x: np.ndarray) -> np.ndarray:
    return nhwc_to_nchw(x) if x.ndim == 4 else x


def batch_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    mode: str | bool = "train",
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch norm like torch.nn.functional.batch_norm; returns (y, mean, var).

    x [N, C, H, W] or [N, C]; gamma, beta, running_mean, running_var [C] float32.
    mean/var are what the backward needs: the batch mean and biased variance in
    "train" mode, copies of the running statistics in "eval"/"frozen" mode. In
    "train" mode running_mean/running_var (both or neither) are updated in place;
    "eval"/"frozen" need them and leave them unchanged.
    """
    m = _mode(mode)
    x = _check_x(x, "x")
    c = x.shape[1]
    gamma = _check_vec(gamma, "gamma", c)
    beta = _check_vec(beta, "beta", c)
    eps = _check_eps(eps)
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0.0 <= momentum <= 1.0
    ):
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if running_mean is None:
        if m != 0:
            raise ValueError("eval and frozen modes need running_mean and running_var")
    else:
        running_mean = _check_running(running_mean, "running_mean", c, m == 0)
        running_var = _check_running(running_var, "running_var", c, m == 0)
        if np.any(running_var < 0):
            raise ValueError("running_var must be >= 0")
    if m == 0:
        spatial = x.shape[2] * x.shape[3] if x.ndim == 4 else 1
        if x.shape[0] * spatial < 2:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input of shape {x.shape}"
            )
    xc = _to_c(x)
    y = np.empty_like(xc)
    mean = np.empty(c, np.float32)
    var = np.empty(c, np.float32)
    _ext().bn_forward(
        y, mean, var, xc, gamma, beta, running_mean, running_var, eps, float(momentum), m
    )
    return _from_c(y), mean, var


def batch_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray,
    mode: str | bool = "train",
    eps: float = 1e-5,
    need_dx: bool = True,
    need_dgamma: bool = True,
    need_dbeta: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients (dx, dgamma, dbeta) of batch_norm_forward given dy (shaped like x).

    mean/var are the ones batch_norm_forward returned: the batch statistics for
    "train" (gradient through them), the running ones for "frozen" (constants).
    "eval" has no backward. Gradients not asked for come back as None.
    """
    m = _mode(mode)
    if m == 1:
        raise ValueError(
            "eval mode has no backward; use mode='frozen' for gradients with running statistics"
        )
    x = _check_x(x, "x")
    dy = _check_x(dy, "dy")
    if dy.shape != x.shape:
        raise ValueError(f"dy has shape {dy.shape} but x has shape {x.shape}")
    c = x.shape[1]
    mean = _check_vec(mean, "mean", c)
    var = _check_vec(var, "var", c)
    gamma = _check_vec(gamma, "gamma", c)
    eps = _check_eps(eps)
    check_finite(mean, "mean")
    check_finite(var, "var")
    if np.any(var < 0):
        raise ValueError("var must be >= 0")
    xc = _to_c(x)
    dx = np.empty_like(xc) if need_dx else None
    dgamma = np.empty(c, np.float32) if need_dgamma else None
    dbeta = np.empty(c, np.float32) if need_dbeta else None
    _ext().bn_backward(dx, dgamma, dbeta, _to_c(dy), xc, mean, var, gamma, eps, m)
    return (_from_c(dx) if dx is not None else None), dgamma, dbeta
