"""leukemia.metrics against scikit-learn (an independent reference) on random and edge
cases: ties in the scores, a class never predicted, a single class present."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from leukemia import metrics as lm


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = rng.integers(0, 2, n)
    # coarse scores so that ties occur
    score = np.round(np.clip(y * 0.3 + rng.normal(0.35, 0.3, n), 0, 1), 1)
    pred = (score > 0.5).astype(int)
    assert lm.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert lm.weighted_f1(y, pred, 2) == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0)
    )
    assert lm.macro_f1(y, pred, 2) == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0)
    )
    assert lm.balanced_accuracy(y, pred, 2) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert np.array_equal(
        lm.confusion_matrix(y, pred, 2), skm.confusion_matrix(y, pred, labels=[0, 1])
    )
    p, r, f, s = lm.precision_recall_f1(y, pred, 2)
    rp, rr, rf, rs = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    assert np.allclose(p, rp) and np.allclose(r, rr) and np.allclose(f, rf)
    assert np.array_equal(s, rs)
    if 0 < y.sum() < n:
        assert lm.roc_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score))


def test_multiclass_weighted_f1_and_a_class_never_predicted() -> None:
    rng = np.random.default_rng(9)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 3, 300))  # class 3 rarely right
    pred[pred == 3] = 0  # and never predicted
    assert lm.weighted_f1(y, pred, 4) == pytest.approx(
        skm.f1_score(y, pred, average="weighted", zero_division=0)
    )


def test_roc_auc_edge_cases() -> None:
    assert np.isnan(lm.roc_auc([1, 1, 1], [0.2, 0.4, 0.9]))  # undefined with one class
    assert lm.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie is half right
    assert lm.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        lm.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="empty"):
        lm.accuracy([], [])


def test_classification_report_from_probabilities() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    logits = rng.normal(size=(80, 2)) + np.eye(2)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rep = lm.classification_report(y, prob, ("hem", "all"))
    pred = prob.argmax(1)
    assert rep["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert rep["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob[:, 1]))
    assert rep["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
    assert rep["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert rep["per_class"]["all"]["support"] == int(y.sum())
