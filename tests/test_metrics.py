"""leukemia.metrics against scikit-learn (an independent reference) on random and edge
cases: ties in the scores, a class never predicted, a single class present; and known
answers for calibration, threshold selection, subject-level aggregation and the bootstrap
(whole subjects resampled, seeded, undefined draws skipped)."""

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


def _tied_scores(rng: np.random.Generator, y: np.ndarray, decimals: int) -> np.ndarray:
    """Scores in [0, 1] that depend on y and are rounded, so that ties are common."""
    return np.round(np.clip(0.3 * y + rng.normal(0.35, 0.3, y.size), 0, 1), decimals)


@pytest.mark.parametrize("seed", range(8))
def test_curves_and_average_precision_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 400))
    y = rng.integers(0, 2, n)
    y[0] = 1  # scikit-learn's curves need a positive
    score = _tied_scores(rng, y, decimals=1 + seed % 3)
    for drop in (True, False):
        ours = lm.roc_curve(y, score, drop_intermediate=drop)
        ref = skm.roc_curve(y, score, drop_intermediate=drop)
        for a, b in zip(ours, ref, strict=True):
            assert a.shape == b.shape and np.allclose(a, b, equal_nan=True)
    for a, b in zip(
        lm.precision_recall_curve(y, score), skm.precision_recall_curve(y, score), strict=True
    ):
        assert a.shape == b.shape and np.allclose(a, b)
    assert lm.pr_auc(y, score) == pytest.approx(skm.average_precision_score(y, score))
    fpr, tpr, _ = lm.roc_curve(y, score)
    if 0 < y.sum() < n:  # the trapezoidal area under the curve is the Mann-Whitney AUC
        assert np.trapezoid(tpr, fpr) == pytest.approx(lm.roc_auc(y, score))


def test_curve_edge_cases_and_a_hand_computed_average_precision() -> None:
    # ranked 1, 0, 1: precision 1 at recall 1/2, 2/3 at recall 1 -> AP = 1/2 + 1/3
    assert lm.pr_auc([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    assert lm.pr_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie enters as a whole
    assert np.isnan(lm.pr_auc([0, 0], [0.1, 0.2]))  # no positive: undefined
    assert lm.pr_auc([1, 1], [0.1, 0.2]) == 1.0
    fpr, tpr, thr = lm.roc_curve([1, 1, 1], [0.2, 0.4, 0.4])
    assert np.all(np.isnan(fpr)) and np.array_equal(tpr, [0, 2 / 3, 1])
    assert np.array_equal(thr, [np.inf, 0.4, 0.2])
    precision, recall, thr = lm.precision_recall_curve([0, 0], [0.3, 0.6])
    assert np.array_equal(precision, [0, 0, 1]) and np.isnan(recall[:-1]).all()
    with pytest.raises(ValueError, match="binary"):
        lm.roc_curve([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        lm.pr_auc([0, 1], [0.1])


def test_sensitivity_specificity() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 3, 200))
    for positive in range(3):
        sens, spec = lm.sensitivity_specificity(y, pred, positive)
        assert sens == pytest.approx(skm.recall_score(y == positive, pred == positive))
        assert spec == pytest.approx(skm.recall_score(y != positive, pred != positive))
    assert lm.sensitivity_specificity([1, 1, 0], [1, 0, 0]) == (0.5, 1.0)
    sens, spec = lm.sensitivity_specificity([0, 0], [1, 0])
    assert np.isnan(sens) and spec == 0.5  # no positive: sensitivity undefined


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_diagram_matches_calibration_curve(strategy: str) -> None:
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(7)
    for n_bins in (1, 5, 10, 15):
        p = np.round(rng.random(300), 1)  # many values on the uniform bin edges
        y = (rng.random(300) < p).astype(int)
        d = lm.reliability_diagram(y, p, n_bins, strategy)
        prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
        full = d.counts > 0
        assert np.allclose(d.observed_frequency[full], prob_true)
        assert np.allclose(d.mean_predicted[full], prob_pred)
        assert d.counts.sum() == 300 and d.edges.size == n_bins + 1
        assert np.isnan(d.mean_predicted[~full]).all()
        # ECE from its definition, over the bins scikit-learn reports
        ece = np.sum(d.counts[full] / 300 * np.abs(prob_true - prob_pred))
        assert lm.expected_calibration_error(y, p, n_bins, strategy) == pytest.approx(ece)


def test_expected_calibration_error_hand_computed() -> None:
    # two bins: {0.1, 0.2} predicts 0.15, observes 0.5; {0.8, 0.9} predicts 0.85, observes 0.5
    assert lm.expected_calibration_error([0, 1, 1, 0], [0.1, 0.2, 0.9, 0.8], 2) == pytest.approx(
        0.35
    )
    assert lm.expected_calibration_error([1, 0, 0, 0], [0.25] * 4, 4) == 0.0  # calibrated
    assert lm.expected_calibration_error([1, 1], [0.0, 0.0], 3) == 1.0  # as wrong as can be
    d = lm.reliability_diagram([1, 0, 0], [0.5, 0.0, 1.0], 2)
    assert d.counts.tolist() == [2, 1]  # 0.5 sits on the inner edge: the lower bin
    assert d.to_dict()["observed_frequency"] == [0.5, 0.0]
    assert lm.reliability_diagram([1], [0.9], 3).to_dict()["mean_predicted"][:2] == [None, None]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lm.expected_calibration_error([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lm.subject_level([0, 1], [-0.01, 0.5], ["a", "b"])
    # rounding of averaged probabilities is tolerated (and clipped), nothing more
    assert lm.expected_calibration_error([1], [1 + 2e-16], 2) == 0.0
    with pytest.raises(ValueError, match="strategy"):
        lm.reliability_diagram([0, 1], [0.5, 0.5], strategy="even")


def _brute_force_threshold(y: np.ndarray, s: np.ndarray, method: str, target: float):
    """Every distinct score tried with sensitivity_specificity; exact J with Fractions."""
    from fractions import Fraction

    best = None
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    for thr in sorted(set(s.tolist()), reverse=True):  # highest first: ties keep it
        call = (s >= thr).astype(int)
        tp, fp = int(np.sum(call & y)), int(np.sum(call & (1 - y)))
        if method == "youden":
            j = Fraction(tp, n_pos) - Fraction(fp, n_neg)
            if best is None or j > best[0]:
                best = (j, thr, *lm.sensitivity_specificity(y, call))
        elif tp / n_pos >= target:
            return thr, *lm.sensitivity_specificity(y, call)
    return best[1:]


def test_select_threshold_hand_computed_and_tie_rule() -> None:
    y = [0, 0, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    # J = 1/3, 2/3, 1/3, 2/3, 1/3, 0 from 0.6 down: the tie 0.5 / 0.3 goes to the higher
    assert lm.select_threshold(y, s) == pytest.approx((0.5, 2 / 3, 1.0))
    assert lm.select_threshold(y, s, "sensitivity", 0.95) == pytest.approx((0.3, 1.0, 2 / 3))
    assert lm.select_threshold(y, s, "sensitivity", 2 / 3) == pytest.approx((0.5, 2 / 3, 1.0))
    assert lm.select_threshold(y, s, "sensitivity", 0.1) == pytest.approx((0.6, 1 / 3, 1.0))
    thr, sens, spec = lm.select_threshold([0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5])
    assert (thr, sens, spec) == (0.5, 1.0, 0.0)  # one candidate only
    with pytest.raises(ValueError, match="both classes"):
        lm.select_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="target"):
        lm.select_threshold(y, s, "sensitivity", 1.5)
    with pytest.raises(ValueError, match="method"):
        lm.select_threshold(y, s, "f1")


@pytest.mark.parametrize("seed", range(4))
def test_select_threshold_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    y = rng.integers(0, 2, 150)
    y[:2] = [0, 1]
    s = _tied_scores(rng, y, decimals=1)  # ties make equal J at several thresholds likely
    for method, target in (("youden", 0.0), ("sensitivity", 0.9), ("sensitivity", 0.5)):
        got = lm.select_threshold(y, s, method, target)
        assert got == pytest.approx(_brute_force_threshold(y, s, method, target))
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    j = np.round((tpr - fpr) * y.sum() * (y.size - y.sum()))  # back to exact integers
    assert lm.select_threshold(y, s).threshold == thr[np.argmax(j)]


def test_subject_level_mean_and_fraction_rules() -> None:
    groups = ["b", "a", "a", "c", "b", "a"]
    y = [0, 1, 1, 1, 0, 1]
    p = [0.25, 0.9, 0.4, 0.5, 0.75, 0.6]
    mean = lm.subject_level(y, p, groups)
    assert mean.subjects.tolist() == ["a", "b", "c"]
    assert mean.y_true.tolist() == [1, 0, 1] and mean.n_cells.tolist() == [3, 2, 1]
    assert np.allclose(mean.score, [1.9 / 3, 0.5, 0.5])
    assert mean.pred.tolist() == [1, 1, 1]  # b and c sit on the threshold: called positive
    assert lm.subject_level(y, p, groups, threshold=0.55).pred.tolist() == [1, 0, 0]
    frac = lm.subject_level(y, p, groups, rule="fraction")
    assert np.allclose(frac.score, [2 / 3, 0.5, 1.0])  # cells at >= 0.5: .9 .6 | .75 | .5
    assert frac.pred.tolist() == [1, 1, 1]  # b: half its cells, and half calls the subject
    strict = lm.subject_level(y, p, groups, rule="fraction", min_fraction=0.6)
    assert strict.pred.tolist() == [1, 0, 1]
    high = lm.subject_level(y, p, groups, rule="fraction", threshold=0.8)
    assert np.allclose(high.score, [1 / 3, 0, 0]) and high.pred.tolist() == [0, 0, 0]
    # subject-level metrics come from the same functions
    assert lm.accuracy(mean.y_true, mean.pred) == pytest.approx(2 / 3)
    assert lm.roc_auc(mean.y_true, mean.score) == 0.75  # a beats b, c ties b


def test_subject_level_refuses_mixed_labels_and_bad_groups() -> None:
    with pytest.raises(ValueError, match=r"'H10' \(1 of 3 cells labelled 1\)"):
        lm.subject_level([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], ["H10", "H10", "H10", "7"])
    with pytest.raises(ValueError, match="rule"):
        lm.subject_level([0, 1], [0.1, 0.2], [1, 2], rule="median")
    with pytest.raises(ValueError, match="groups must be 1-D"):
        lm.subject_level([0, 1], [0.1, 0.2], [1, 2, 3])
    with pytest.raises(ValueError, match="None"):
        lm.subject_level([0, 1], [0.1, 0.2], np.array(["a", None], dtype=object))


def _clustered(n_subjects: int, per_subject: np.ndarray):
    """Labels, predictions and subject ids where each subject is all right or all wrong."""
    groups = np.repeat(np.arange(n_subjects), per_subject)
    y = np.repeat(np.arange(n_subjects) % 2, per_subject)
    subject_right = np.arange(n_subjects) % 3 != 0
    pred = np.where(subject_right[groups], y, 1 - y)
    return y, pred, groups


def test_bootstrap_with_groups_resamples_whole_subjects() -> None:
    sizes = np.array([1, 2, 3, 5, 8, 13, 4])
    y, _, groups = _clustered(sizes.size, sizes)
    image_id = np.arange(y.size)
    draws: list[np.ndarray] = []

    def record(t: np.ndarray, ids: np.ndarray) -> float:
        draws.append(ids.copy())
        return float(t.mean())

    ci = lm.bootstrap_ci(record, y, image_id, groups=groups, n_boot=200, seed=1)
    assert ci.unit == "subjects" and ci.n_units == sizes.size and ci.n_used == 200
    assert len(draws) == 201  # the full data, then every draw
    assert np.array_equal(np.sort(draws[0]), image_id)
    sizes_seen = set()
    for ids in draws[1:]:
        mult = np.bincount(ids, minlength=y.size)  # how often each image is in the draw
        per_subject = [mult[groups == g] for g in range(sizes.size)]
        assert all(np.all(m == m[0]) for m in per_subject)  # whole subjects only
        picks = np.array([m[0] for m in per_subject])
        assert picks.sum() == sizes.size  # as many picks as subjects
        assert ids.size == np.sum(picks * sizes)
        sizes_seen.add(ids.size)
    assert len(sizes_seen) > 5  # draws differ in size since subjects do

    draws.clear()
    lm.bootstrap_ci(record, y, image_id, n_boot=50, seed=1)
    assert {ids.size for ids in draws} == {y.size}  # image resampling keeps N
    assert any(np.unique(ids).size < y.size for ids in draws[1:])  # with replacement


def test_bootstrap_interval_properties() -> None:
    rng = np.random.default_rng(11)
    n = 2000
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.8, y, 1 - y)
    ci = lm.bootstrap_ci(lm.accuracy, y, pred, n_boot=1000, seed=3)
    assert ci.estimate == lm.accuracy(y, pred)
    assert ci.low < ci.estimate < ci.high
    # the binomial normal approximation gives the width for independent samples
    p = ci.estimate
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.15)
    again = lm.bootstrap_ci(lm.accuracy, y, pred, n_boot=1000, seed=3)
    assert (again.low, again.high) == (ci.low, ci.high)
    assert np.array_equal(again.values, ci.values)
    other = lm.bootstrap_ci(lm.accuracy, y, pred, n_boot=1000, seed=4)
    assert not np.array_equal(other.values, ci.values)
    narrow = lm.bootstrap_ci(lm.accuracy, y, pred, n_boot=1000, alpha=0.5, seed=3)
    assert ci.low < narrow.low < narrow.high < ci.high
    assert "95 % CI" in str(ci) and ci.to_dict()["n_used"] == 1000
    # probabilities [N, K] are resampled along the first axis
    prob = np.stack([1 - pred, pred], 1).astype(float)
    ci2 = lm.bootstrap_ci(lambda t, q: lm.accuracy(t, q.argmax(1)), y, prob, seed=3)
    assert (ci2.low, ci2.high) == (ci.low, ci.high)


def test_subject_resampling_is_wider_on_clustered_data() -> None:
    # 12 subjects x 50 images; a subject's images are all right or all wrong, so the
    # images carry the information of 12 samples, not 600
    y, pred, groups = _clustered(12, np.full(12, 50))
    by_image = lm.bootstrap_ci(lm.accuracy, y, pred, n_boot=500, seed=0)
    by_subject = lm.bootstrap_ci(lm.accuracy, y, pred, groups=groups, n_boot=500, seed=0)
    assert by_image.estimate == by_subject.estimate
    assert by_subject.high - by_subject.low > 3 * (by_image.high - by_image.low)
    # it matches resampling the 12 per-subject results as independent samples
    subj = lm.subject_level(y, pred.astype(float), groups)
    per_subject = lm.bootstrap_ci(lm.accuracy, subj.y_true, subj.pred, n_boot=500, seed=0)
    assert (per_subject.low, per_subject.high) == (by_subject.low, by_subject.high)


def test_bootstrap_skips_undefined_draws() -> None:
    # 2 of 8 subjects are positive: about (6/8)^8 = 10 % of the draws hold no positive
    sizes = np.full(8, 10)
    groups = np.repeat(np.arange(8), sizes)
    y = (groups < 2).astype(int)
    score = np.random.default_rng(5).random(y.size) + 0.2 * y
    both_classes = []

    def auc(t: np.ndarray, s: np.ndarray) -> float:
        both_classes.append(0 < t.sum() < t.size)
        return lm.roc_auc(t, s)

    ci = lm.bootstrap_ci(auc, y, score, groups=groups, n_boot=400, seed=2)
    assert ci.n_boot == 400 and ci.n_used == sum(both_classes[1:]) < 400
    assert ci.values.size == ci.n_used and np.isfinite(ci.values).all()
    with pytest.raises(ValueError, match="undefined on the full data"):
        lm.bootstrap_ci(lm.roc_auc, np.ones(5, int), np.arange(5.0))
    with pytest.raises(ValueError, match="one row per sample"):
        lm.bootstrap_ci(lm.accuracy, [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="alpha"):
        lm.bootstrap_ci(lm.accuracy, [0, 1], [0, 1], alpha=1.0)


def test_classification_report_adds_pr_auc_and_ece_for_two_classes() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 120)
    p1 = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, 120), 0, 1)
    prob = np.stack([1 - p1, p1], 1)
    rep = lm.classification_report(y, prob)
    old_keys = {"n", "accuracy", "balanced_accuracy", "weighted_f1", "macro_f1", "per_class"}
    old_keys |= {"confusion_matrix", "roc_auc", "sensitivity", "specificity"}
    assert old_keys <= set(rep)
    assert rep["pr_auc"] == pytest.approx(skm.average_precision_score(y, p1))
    assert rep["ece"] == pytest.approx(lm.expected_calibration_error(y, p1, 15))
    # positive = 0 scores class 0's column against y == 0
    rep0 = lm.classification_report(y, prob, positive=0)
    assert rep0["pr_auc"] == pytest.approx(skm.average_precision_score(y == 0, 1 - p1))
    three = lm.classification_report(rng.integers(0, 3, 30), rng.dirichlet(np.ones(3), 30))
    assert "pr_auc" not in three and "roc_auc" not in three
