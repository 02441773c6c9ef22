"""SiLU, sigmoid, ReLU and ReLU6 on the C core (elementwise: any shape, float32)."""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32

KINDS = ("silu", "sigmoid", "relu", "relu6")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def activation_forward(kind: str, x: np.ndarray) -> np.ndarray:
    """y = act(x) for kind in 'silu', 'sigmoid', 'relu', 'relu6' (x of any shape)."""
    kind = _kind(kind)
    x = as_f32(x, "x")
    if kind in ("relu", "relu6") and np.isnan(x).any():
        # oneDNN's ReLU/clip turn NaN into 0 where PyTorch propagates it; refuse rather
        # than hide a diverging input.
        raise ValueError(f"x contains NaN ({kind} would map it to 0, unlike PyTorch)")
    y = np.empty_like(x)
    _ext().act_forward(y, x, kind)
    return y


def activation_backward(
    kind: str, dy: np.ndarray, x: np.ndarray | None = None, y: np.ndarray | None = None
) -> np.ndarray:
    """dx = dy * act'(.). SiLU, ReLU and ReLU6 need the input x; sigmoid needs the output y.

    At the kinks the gradient follows PyTorch: relu'(0) = 0, relu6' is 0 at 0 and 6.
    """
    kind = _kind(kind)
    dy = as_f32(dy, "dy")
    if kind == "sigmoid":
        if y is None:
            raise ValueError("activation_backward: sigmoid needs the forward output y")
        y = as_f32(y, "y")
    else:
        if x is None:
            raise ValueError(f"activation_backward: {kind} needs the forward input x")
        x = as_f32(x, "x")
    dx = np.empty_like(dy)
    _ext().act_backward(dx, dy, x, y, kind)
    return dx


def silu_forward(x: np.ndarray) -> np.ndarray:
    """SiLU (swish): x * sigmoid(x), like torch.nn.functional.silu."""
    return activation_forward("silu", x)


def sigmoid_forward(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), like torch.sigmoid."""
    return activation_forward("sigmoid", x)


def relu_forward(x: np.ndarray) -> np.ndarray:
    """max(x, 0), like torch.nn.functional.relu."""
    return activation_forward("relu", x)


def relu6_forward(x: np.ndarray) -> np.ndarray:
    """min(max(x, 0), 6), like torch.nn.functional.relu6."""
    return activation_forward("relu6", x)
