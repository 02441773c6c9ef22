"""Classification metrics in plain NumPy (no scikit-learn at run time).

Conventions follow scikit-learn, which the tests use as an independent reference where
it is installed, and the formulas otherwise:

* ``y_true`` holds integer class ids ``0..K-1``; ``y_pred`` too.
* Scores for ROC AUC, the curves, PR AUC and thresholds are the probability (or any
  monotone score) of the positive class; in this project class 1 is ALL (the blast
  class), class 0 HEM. A score is called positive when ``score >= threshold``.
* A class absent from both ``y_true`` and ``y_pred`` contributes precision, recall and
  F1 of 0 with support 0 (so it does not move the weighted F1, the C-NMC metric).
* A rate or area that is undefined on the data (ROC AUC with one class present,
  sensitivity without positives) is NaN, never a made-up 0 or 0.5: the bootstrap skips
  such draws and says how many it used.

Beyond the point metrics: ROC and precision-recall curves, calibration (ECE and the data
of a reliability diagram), threshold selection on validation data, bootstrap confidence
intervals that resample subjects, and per-subject aggregation of per-cell probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BootstrapCI",
    "OperatingPoint",
    "ReliabilityDiagram",
    "SubjectScores",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "classification_report",
    "confusion_matrix",
    "expected_calibration_error",
    "macro_f1",
    "pr_auc",
    "precision_recall_curve",
    "precision_recall_f1",
    "reliability_diagram",
    "roc_auc",
    "roc_curve",
    "select_threshold",
    "sensitivity_specificity",
    "subject_level",
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


def _binary_scores(y_true: object, score: object, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated binary labels (int64, 0/1) and finite float64 scores of the same length."""
    t = _labels(y_true, "y_true")
    try:
        s = np.asarray(score, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"score must be numeric, got {np.asarray(score).dtype}") from None
    if s.shape != t.shape:
        raise ValueError(f"score has shape {s.shape}, y_true {t.shape}")
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    if not np.all(np.isfinite(s)):
        raise ValueError("score holds NaN or Inf")
    if np.any(t > 1):
        raise ValueError(f"{fn} needs binary labels 0/1 (1 = positive), got class id {t.max()}")
    return t, s


def _binary_probs(y_true: object, prob_pos: object, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_binary_scores`, and the scores must be probabilities in [0, 1].

    Values at most 1e-6 outside are clipped: averaged or weighted probabilities (ensembles)
    can overshoot 1 by rounding.
    """
    t, p = _binary_scores(y_true, prob_pos, fn)
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(f"prob_pos must lie in [0, 1], got values in [{p.min():g}, {p.max():g}]")
    return t, np.clip(p, 0.0, 1.0)


def roc_auc(y_true: object, score: object) -> float:
    """Area under the ROC curve for binary labels (1 positive) and scores.

    Computed as the Mann-Whitney statistic with mid-ranks for ties, which equals the
    trapezoidal area under the ROC curve. NaN when only one class is present (the AUC
    is undefined then; callers report it as such rather than as 0.5).
    """
    t, s = _binary_scores(y_true, score, "roc_auc")
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


def _counts_at_thresholds(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """(false positives, true positives, threshold) at each distinct score, highest first.

    Entry ``k`` counts the samples called positive by ``score >= thresholds[k]``; a run of
    tied scores enters or leaves the positive side as a whole.
    """
    order = np.argsort(-s, kind="mergesort")
    sorted_s = s[order]
    # index of the last member of each run of equal scores
    last = np.r_[np.flatnonzero(sorted_s[1:] != sorted_s[:-1]), s.size - 1]
    tps = np.cumsum(t[order])[last]
    fps = last + 1 - tps
    return fps, tps, sorted_s[last]


def roc_curve(
    y_true: object, score: object, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of binary labels (1 positive) against scores: ``(fpr, tpr, thresholds)``.

    ``thresholds`` decrease: ``+inf`` first (nothing called positive, the point (0, 0)),
    then every distinct score; point ``k`` is ``fpr = FP / N``, ``tpr = TP / P`` of the
    rule ``score >= thresholds[k]``, so tied scores move together and the last point is
    (1, 1). ``drop_intermediate`` drops points collinear with their neighbours on a
    horizontal or vertical run (they change neither the plot nor the area), as
    scikit-learn's ``roc_curve`` does by default. A rate whose class is absent (no
    negatives for ``fpr``, no positives for ``tpr``) is NaN throughout.
    """
    t, s = _binary_scores(y_true, score, "roc_curve")
    fps, tps, thr = _counts_at_thresholds(t, s)
    if drop_intermediate and fps.size > 2:
        # keep a point where either count's second difference is non-zero: a corner
        corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps, thr = fps[corner], tps[corner], thr[corner]
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thr = np.r_[np.inf, thr]
    n_pos, n_neg = tps[-1], fps[-1]
    fpr = fps / n_neg if n_neg > 0 else np.full(fps.shape, np.nan)
    tpr = tps / n_pos if n_pos > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def precision_recall_curve(
    y_true: object, score: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve: ``(precision, recall, thresholds)`` in scikit-learn's order.

    ``thresholds`` are the distinct scores in increasing order; ``precision[k] =
    TP / (TP + FP)`` and ``recall[k] = TP / P`` for the rule ``score >= thresholds[k]``.
    Both arrays carry one extra last point, precision 1 and recall 0 (nothing called
    positive), so recall decreases along the arrays. Recall is NaN when ``y_true`` has no
    positive (scikit-learn sets it to 1 with a warning).
    """
    t, s = _binary_scores(y_true, score, "precision_recall_curve")
    fps, tps, thr = _counts_at_thresholds(t, s)
    precision = tps / (tps + fps)  # every threshold calls at least one sample positive
    n_pos = tps[-1]
    recall = tps / n_pos if n_pos > 0 else np.full(tps.shape, np.nan)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def pr_auc(y_true: object, score: object) -> float:
    """Area under the precision-recall curve as average precision (AP).

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct scores from highest to lowest,
    ``R_0 = 0``: the precision at each threshold weighted by the recall it adds (the
    step-wise, not trapezoidal, area; scikit-learn's ``average_precision_score``). A
    chance-level ranking scores about the positive rate, not 0.5. NaN when ``y_true``
    has no positive (undefined); 1.0 when it has no negative.
    """
    t, s = _binary_scores(y_true, score, "pr_auc")
    fps, tps, _ = _counts_at_thresholds(t, s)
    n_pos = tps[-1]
    if n_pos == 0:
        return float("nan")
    gained = np.diff(np.r_[0, tps])  # positives added at each threshold
    return float(np.sum(gained * (tps / (tps + fps))) / n_pos)


def sensitivity_specificity(
    y_true: object, y_pred: object, positive: int = 1
) -> tuple[float, float]:
    """Sensitivity and specificity of class ``positive`` against all other classes.

    Sensitivity (recall, true positive rate) ``= TP / (TP + FN)`` over the samples whose
    true class is ``positive``; specificity (true negative rate) ``= TN / (TN + FP)`` over
    the others, where a negative is any prediction other than ``positive``. Each is NaN
    when its denominator is 0 (no positive, respectively no negative, in ``y_true``).
    """
    t, p = _pair(y_true, y_pred)
    if int(positive) != positive or positive < 0:
        raise ValueError(f"positive must be a class id >= 0, got {positive!r}")
    is_pos, called_pos = t == positive, p == positive
    n_pos = int(is_pos.sum())
    n_neg = t.size - n_pos
    sens = float(np.sum(is_pos & called_pos) / n_pos) if n_pos else float("nan")
    spec = float(np.sum(~is_pos & ~called_pos) / n_neg) if n_neg else float("nan")
    return sens, spec


# ---------------------------------------------------------------------------- calibration


@dataclass(frozen=True, eq=False)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram of the positive-class probability.

    Attributes:
        edges: bin edges, ``[n_bins + 1]``; bin ``b`` holds ``edges[b] < p <= edges[b+1]``
            and the first bin also ``p == edges[0]``.
        mean_predicted: mean predicted probability per bin (the x of a point), NaN if empty.
        observed_frequency: fraction of positives per bin (the y), NaN if empty.
        counts: samples per bin (int64).
    """

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed_frequency: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error of these bins (see :func:`expected_calibration_error`)."""
        full = self.counts > 0
        gap = np.abs(self.observed_frequency[full] - self.mean_predicted[full])
        return float(np.sum(self.counts[full] * gap) / self.counts.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists; an empty bin's means are None."""

        def _list(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "edges": [float(e) for e in self.edges],
            "mean_predicted": _list(self.mean_predicted),
            "observed_frequency": _list(self.observed_frequency),
            "counts": [int(c) for c in self.counts],
            "ece": self.ece,
        }


def reliability_diagram(
    y_true: object, prob_pos: object, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityDiagram:
    """Bin the positive-class probabilities; per bin the mean prediction and the outcome.

    ``strategy="uniform"``: ``n_bins`` equal-width bins over [0, 1]. ``"quantile"``: edges
    at the ``b / n_bins`` quantiles of ``prob_pos`` (``np.percentile``, linear
    interpolation), so bins hold about equally many samples; repeated probabilities can
    leave some empty. Bin membership follows scikit-learn's ``calibration_curve`` (a value
    on an inner edge belongs to the lower bin), so its ``(prob_true, prob_pred)`` are this
    diagram's ``observed_frequency`` and ``mean_predicted`` over the non-empty bins.
    A perfectly calibrated model has ``observed_frequency == mean_predicted`` in every bin.
    """
    t, p = _binary_probs(y_true, prob_pos, "reliability_diagram")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        # percent, as calibration_curve computes them, so that edges agree to the last bit
        edges = np.percentile(p, np.linspace(0.0, 1.0, n_bins + 1) * 100)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    bins = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_predicted = np.bincount(bins, weights=p, minlength=n_bins) / counts
        observed = np.bincount(bins, weights=t, minlength=n_bins) / counts
    return ReliabilityDiagram(edges, mean_predicted, observed, counts.astype(np.int64))


def expected_calibration_error(
    y_true: object, prob_pos: object, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """Expected calibration error of the positive-class probability.

    ``ECE = sum_b (n_b / N) * |observed_frequency_b - mean_predicted_b|`` over the
    non-empty bins of :func:`reliability_diagram` (same ``n_bins`` and ``strategy``):
    0 for a calibrated model, at most 1. This is the binary (positive-class) ECE, the
    quantity a reliability diagram shows; it depends on the binning, so report
    ``n_bins`` and ``strategy`` with it.
    """
    return reliability_diagram(y_true, prob_pos, n_bins, strategy).ece


# ---------------------------------------------------------------------------- thresholds


class OperatingPoint(NamedTuple):
    """A decision threshold and what it achieves on the data it was chosen on.

    A sample is called positive when ``score >= threshold``.
    """

    threshold: float
    sensitivity: float
    specificity: float


def select_threshold(
    y_true: object, score: object, method: str = "youden", target: float = 0.95
) -> OperatingPoint:
    """Choose a decision threshold on validation data; returns it with its operating point.

    The candidates are the distinct values of ``score`` (rule: positive when ``score >=
    threshold``), so the threshold is a validation score and every candidate is an
    operating point actually reached.

    * ``method="youden"`` maximises Youden's J = sensitivity + specificity - 1 =
      TP/P - FP/N (compared exactly, in integers: ``TP*N - FP*P``). Ties: the highest
      threshold among those with the maximal J (the fewest positive calls), which is
      ``argmax(tpr - fpr)`` over :func:`roc_curve`'s order.
    * ``method="sensitivity"`` takes the highest threshold whose sensitivity is at least
      ``target`` (in (0, 1]); as the threshold falls specificity can only fall, so this is
      the most specific threshold meeting the target. It always exists: the lowest score
      calls every sample positive.

    Both classes must be present in ``y_true``.
    """
    t, s = _binary_scores(y_true, score, "select_threshold")
    fps, tps, thr = _counts_at_thresholds(t, s)
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            "select_threshold needs both classes in y_true, got "
            f"{n_pos} positive(s) and {n_neg} negative(s)"
        )
    if method == "youden":
        k = int(np.argmax(tps * n_neg - fps * n_pos))  # first = highest threshold
    elif method == "sensitivity":
        if not 0 < target <= 1:
            raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
        k = int(np.flatnonzero(tps / n_pos >= target)[0])
    else:
        raise ValueError(f"method must be 'youden' or 'sensitivity', got {method!r}")
    return OperatingPoint(float(thr[k]), float(tps[k] / n_pos), float(1 - fps[k] / n_neg))


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True, eq=False)
class BootstrapCI:
    """A point estimate with a percentile bootstrap confidence interval.

    Attributes:
        estimate: the metric on the full data.
        low, high: the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the draws' values.
        alpha: 0.05 for a 95 % interval.
        n_boot: draws made; n_used: draws where the metric was defined (finite).
        unit: what was resampled, ``"subjects"`` or ``"images"``; n_units: how many there are.
        values: the finite draw values, in draw order.
    """

    estimate: float
    low: float
    high: float
    alpha: float
    n_boot: int
    n_used: int
    unit: str
    n_units: int
    values: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the draw values)."""
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "alpha": self.alpha,
            "n_boot": self.n_boot,
            "n_used": self.n_used,
            "unit": self.unit,
            "n_units": self.n_units,
        }

    def __str__(self) -> str:
        return (
            f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}] "
            f"({100 * (1 - self.alpha):g} % CI, {self.n_used}/{self.n_boot} draws over "
            f"{self.n_units} {self.unit})"
        )


def _group_index(groups: object, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subject ids sorted, subject index per sample, samples per subject) of ``groups``."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must be 1-D with one entry per sample ({n}), got {g.shape}")
    if g.dtype == object and any(v is None for v in g):
        raise ValueError("groups holds None: every sample needs a subject id")
    try:
        ids, inverse = np.unique(g, return_inverse=True)
    except TypeError:
        raise TypeError("groups mixes id types that cannot be compared") from None
    return ids, inverse.reshape(n), np.bincount(inverse.reshape(n), minlength=ids.size)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: object,
    y_pred_or_score: object,
    groups: object | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of ``metric_fn(y_true, y_pred_or_score)``.

    Without ``groups`` each draw resamples the N samples with replacement. With
    ``groups`` (a subject id per sample) each draw picks as many subjects as there are,
    with replacement, and takes *all* images of every pick (a subject drawn twice
    contributes its images twice). Images of one subject are correlated, so only
    subject resampling gives an interval for new patients; image resampling is narrower
    than it should be. ``y_pred_or_score`` may have more axes (e.g. probabilities
    ``[N, K]``); draws index its first axis.

    A draw where ``metric_fn`` returns NaN or Inf (the metric undefined, e.g. ROC AUC on
    a draw with one class only) is skipped; ``n_used`` says how many draws counted. The
    interval is then conditional on the metric being defined. ``metric_fn`` should
    return NaN rather than raise in that case (this module's metrics do).
    The interval is ``[q(alpha/2), q(1 - alpha/2)]`` of the used draws' values
    (``np.quantile``, linear interpolation). The same ``seed`` gives the same interval.
    """
    t = np.asarray(y_true)
    v = np.asarray(y_pred_or_score)
    if t.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {t.shape}")
    if v.ndim == 0 or v.shape[0] != t.size:
        raise ValueError(
            f"y_pred_or_score must have one row per sample ({t.size}), got shape {v.shape}"
        )
    if t.size == 0:
        raise ValueError("no samples: y_true is empty")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    estimate = float(metric_fn(t, v))
    if not np.isfinite(estimate):
        raise ValueError(f"the metric is undefined on the full data (it returned {estimate})")
    if groups is None:
        unit, n_units = "images", t.size
        members = counts = starts = None
    else:
        ids, inverse, counts = _group_index(groups, t.size)
        unit, n_units = "subjects", ids.size
        members = np.argsort(inverse, kind="stable")  # samples grouped by subject
        starts = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)
    values = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        picks = rng.integers(0, n_units, n_units)
        if members is None:
            idx = picks
        else:
            # the members of every picked subject, concatenated: position q of the draw
            # that falls in pick j reads members[starts[j's subject] + q - (j's offset)]
            sizes = counts[picks]
            shift = np.repeat(starts[picks] - (np.cumsum(sizes) - sizes), sizes)
            idx = members[np.arange(shift.size) + shift]
        values[b] = float(metric_fn(t[idx], v[idx]))
    used = values[np.isfinite(values)]
    if used.size == 0:
        raise ValueError(f"the metric was undefined on all {n_boot} bootstrap draws")
    low, high = np.quantile(used, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(
        estimate=estimate,
        low=float(low),
        high=float(high),
        alpha=float(alpha),
        n_boot=int(n_boot),
        n_used=int(used.size),
        unit=unit,
        n_units=int(n_units),
        values=used,
    )


# ------------------------------------------------------------------------- subject level


@dataclass(frozen=True, eq=False)
class SubjectScores:
    """Per-subject labels, scores and calls from per-cell probabilities.

    Arrays are aligned, one entry per subject, in ``np.unique`` order of the ids; feed
    them to this module's metrics (``accuracy(s.y_true, s.pred)``, ``roc_auc(s.y_true,
    s.score)``, ``bootstrap_ci(..., s.y_true, s.score)`` resamples subjects).

    Attributes:
        subjects: the subject ids.
        y_true: the subject's label (all its cells carry it), int64.
        score: mean probability (``rule="mean"``) or fraction of cells called positive
            (``rule="fraction"``).
        pred: the call, 1 when ``score >= call_threshold``, int64.
        n_cells: cells per subject.
        rule: "mean" or "fraction".
        call_threshold: the subject-level threshold ``pred`` used.
    """

    subjects: np.ndarray
    y_true: np.ndarray
    score: np.ndarray
    pred: np.ndarray
    n_cells: np.ndarray
    rule: str
    call_threshold: float


def subject_level(
    y_true: object,
    prob_pos: object,
    groups: object,
    rule: str = "mean",
    threshold: float = 0.5,
    min_fraction: float = 0.5,
) -> SubjectScores:
    """Aggregate per-cell positive-class probabilities into one score and call per subject.

    * ``rule="mean"``: score = the mean of the subject's cell probabilities; the subject
      is called positive when ``score >= threshold``.
    * ``rule="fraction"``: a cell is called positive when ``prob >= threshold``; score =
      the fraction of the subject's cells called positive; the subject is called positive
      when ``score >= min_fraction`` (default: at least half its cells).

    Every cell of a subject must carry the same label (0/1), which becomes the subject's
    label; a subject with mixed labels is refused, named, since it has no single truth.
    """
    t, p = _binary_probs(y_true, prob_pos, "subject_level")
    ids, inverse, counts = _group_index(groups, t.size)
    positives = np.bincount(inverse, weights=t, minlength=ids.size)
    mixed = np.flatnonzero((positives > 0) & (positives < counts))
    if mixed.size:
        names = ", ".join(
            f"{ids[i].item()!r} ({int(positives[i])} of {counts[i]} cells labelled 1)"
            for i in mixed[:5]
        )
        more = f" and {mixed.size - 5} more" if mixed.size > 5 else ""
        raise ValueError(
            f"subject(s) with cells of both labels: {names}{more}; a subject-level "
            "label needs every cell of a subject to carry the same label"
        )
    if rule == "mean":
        score = np.bincount(inverse, weights=p, minlength=ids.size) / counts
        call_threshold = float(threshold)
    elif rule == "fraction":
        called = (p >= threshold).astype(np.float64)
        score = np.bincount(inverse, weights=called, minlength=ids.size) / counts
        call_threshold = float(min_fraction)
    else:
        raise ValueError(f"rule must be 'mean' or 'fraction', got {rule!r}")
    return SubjectScores(
        subjects=ids,
        y_true=(positives > 0).astype(np.int64),
        score=score,
        pred=(score >= call_threshold).astype(np.int64),
        n_cells=counts.astype(np.int64),
        rule=rule,
        call_threshold=call_threshold,
    )


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
    and the number of samples. With K == 2 also pr_auc (average precision) and ece (of
    the positive class's probability, 15 uniform bins). Predictions are the argmax.
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
        out["pr_auc"] = pr_auc(t == positive, prob[:, positive])
        out["ece"] = expected_calibration_error(t == positive, prob[:, positive])
        out["sensitivity"] = float(recall[positive])
        out["specificity"] = float(recall[1 - positive])
    return out
