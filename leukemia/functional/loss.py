"""Softmax cross-entropy on the C core, as torch.nn.functional.cross_entropy.

Mean reduction, optional per-class weights and label smoothing. Labels may be
int32 or int64 (converted, range-checked); floating-point labels are rejected.
"""

from __future__ import annotations

import numpy as np

from .. import _ext
from ._check import as_f32, check_finite


def _labels(labels: object, n: int, k: int) -> np.ndarray:
    """Labels [N] as contiguous int32, each in [0, K)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray of integers, got {type(labels).__name__}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype (int32 or int64), got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {labels.shape} but ({n},) was expected")
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"label {int(labels[i])} at row {i} is out of range [0, {k})")
    return np.ascontiguousarray(labels, dtype=np.int32)


def _number(v: object, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")


def _options(
    class_weight: np.ndarray | None, label_smoothing: float, k: int
) -> tuple[np.ndarray | None, float]:
    if class_weight is not None:
        class_weight = as_f32(class_weight, "class_weight", 1)
        if class_weight.shape != (k,):
            raise ValueError(f"class_weight has shape {class_weight.shape} but ({k},) was expected")
        check_finite(class_weight, "class_weight")
    _number(label_smoothing, "label_smoothing")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return class_weight, float(label_smoothing)


def cross_entropy_forward(
    logits: np.ndarray,
    labels: np.ndarray,
    class_weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of logits [N, K] -> (loss, prob [N, K] = softmax(logits))."""
    logits = as_f32(logits, "logits", 2)
    n, k = logits.shape
    if n < 1 or k < 1:
        raise ValueError(f"logits must be non-empty [N, K], got shape {logits.shape}")
    check_finite(logits, "logits")
    labels = _labels(labels, n, k)
    class_weight, eps = _options(class_weight, label_smoothing, k)
    prob = np.empty_like(logits)
    loss = _ext().cross_entropy_forward(prob, logits, labels, class_weight, eps)
    return float(loss), prob


def cross_entropy_backward(
    prob: np.ndarray,
    labels: np.ndarray,
    class_weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    dloss: float = 1.0,
) -> np.ndarray:
    """dlogits [N, K] = dloss * d(loss)/d(logits), from the prob of cross_entropy_forward."""
    prob = as_f32(prob, "prob", 2)
    n, k = prob.shape
    if n < 1 or k < 1:
        raise ValueError(f"prob must be non-empty [N, K], got shape {prob.shape}")
    labels = _labels(labels, n, k)
    class_weight, eps = _options(class_weight, label_smoothing, k)
    _number(dloss, "dloss")
    if not np.isfinite(dloss):
        raise ValueError(f"dloss must be finite, got {dloss!r}")
    dlogits = np.empty_like(prob)
    _ext().cross_entropy_backward(dlogits, prob, labels, class_weight, eps, float(dloss))
    return dlogits
