"""Classification metrics in plain NumPy (no scikit-learn at run time).

Conventions follow scikit-learn, which the tests use as an independent reference where
it is installed, and the formulas otherwise:

* ``y_true`` holds integer class ids ``0..K-1``; ``y_pred`` too.
* Scores for ROC AUC are the probability (or any monotone score) of the positive class;
  in this project class 1 is ALL (the blast class), class 0 HEM.
* A class absent from both ``y_true`` and ``y_pred`` contributes precision, recall and
  F1 of 0 with support 0 (so it does not move the weighted F1, the C-NMC metric).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "classification_report",
    "confusion_matrix",
    "macro_f1",
    "precision_recall_f1",
    "roc_auc",
    "weighted_f1",
]


def _labels(y: object, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
            raise TypeError(f"{name} must hold integer class ids, got dtype {a.dtype}")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} holds a negative class id ({a.min()})")
    return a.astype(np.int64, copy=False)


def _pair(y_true: object, y_pred: object) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries, y_pred {p.size}")
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    return t, p


def confusion_matrix(y_true: object, y_pred: object, num_classes: int | None = None) -> np.ndarray:
    """Counts [K, K]: row = true class, column = predicted class."""
    t, p = _pair(y_true, y_pred)
    k = int(max(t.max(), p.max()) + 1) if num_classes is None else int(num_classes)
    if t.max() >= k or p.max() >= k:
        raise ValueError(f"class ids must be < num_classes={k}")
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def accuracy(y_true: object, y_pred: object) -> float:
    """Fraction of correct predictions."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def precision_recall_f1(
    y_true: object, y_pred: object, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, F1, support); 0 where a ratio is 0/0."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(0)
    support = cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    return precision, recall, f1, support.astype(np.int64)


def weighted_f1(y_true: object, y_pred: object, num_classes: int | None = None) -> float:
    """F1 per class averaged with weights = class support (the C-NMC 2019 metric)."""
    _, _, f1, support = precision_recall_f1(y_true, y_pred, num_classes)
    return float(np.sum(f1 * support) / support.sum())


def macro_f1(y_true: object, y_pred: object, num_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 over the classes present in y_true."""
    _, _, f1, support = precision_recall_f1(y_true, y_pred, num_classes)
    return float(np.mean(f1[support > 0]))


def balanced_accuracy(y_true: object, y_pred: object, num_classes: int | None = None) -> float:
    """Mean recall over the classes present in y_true."""
    _, recall, _, support = precision_recall_f1(y_true, y_pred, num_classes)
    return float(np.mean(recall[support > 0]))


def roc_auc(y_true: object, score: object) -> float:
    """Area under the ROC curve for binary labels (1 positive) and scores.

    Computed as the Mann-Whitney statistic with mid-ranks for ties, which equals the
    trapezoidal area under the ROC curve. NaN when only one class is present (the AUC
    is undefined then; callers report it as such rather than as 0.5).
    """
    t = _labels(y_true, "y_true")
    s = np.asarray(score, np.float64)
    if s.shape != t.shape:
        raise ValueError(f"score has shape {s.shape}, y_true {t.shape}")
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    if not np.all(np.isfinite(s)):
        raise ValueError("score holds NaN or Inf")
    if np.any(t > 1):
        raise ValueError("roc_auc needs binary labels 0/1")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(t.size, np.float64)
    # Mid-ranks: every member of a run of equal scores gets the run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], t.size]
    mid = (starts + ends + 1) / 2.0  # 1-based mean rank of each run
    ranks[order] = np.repeat(mid, ends - starts)
    return float((ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_report(
    y_true: object,
    prob: np.ndarray,
    class_names: Sequence[str] | None = None,
    positive: int = 1,
) -> dict[str, object]:
    """Every metric the trainer and ``leukemia evaluate`` print, from probabilities [N, K].

    Returns a JSON-ready dict: accuracy, balanced_accuracy, weighted_f1, macro_f1,
    roc_auc (of class ``positive`` when K == 2), per-class precision/recall/F1/support,
    sensitivity and specificity of the positive class (K == 2), the confusion matrix
    and the number of samples.
    """
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 2:
        raise ValueError(f"prob must be [N, K], got shape {prob.shape}")
    t = _labels(y_true, "y_true")
    k = prob.shape[1]
    pred = prob.argmax(1)
    precision, recall, f1, support = precision_recall_f1(t, pred, k)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    out: dict[str, object] = {
        "n": int(t.size),
        "accuracy": accuracy(t, pred),
        "balanced_accuracy": balanced_accuracy(t, pred, k),
        "weighted_f1": weighted_f1(t, pred, k),
        "macro_f1": macro_f1(t, pred, k),
        "per_class": {
            names[c]: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in range(k)
        },
        "confusion_matrix": confusion_matrix(t, pred, k).tolist(),
    }
    if k == 2:
        out["roc_auc"] = roc_auc(t == positive, prob[:, positive])
        out["sensitivity"] = float(recall[positive])
        out["specificity"] = float(recall[1 - positive])
    return out
