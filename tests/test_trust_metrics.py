"""packager.core.metrics on data that is not perfectly separated (false positives, false negatives,
tied scores, scores exactly at the threshold), against scikit-learn and statsmodels, which share
no code with it (issue 28 item 2: a swapped sensitivity denominator passed tests/test_metrics.py,
whose data has no FP and no FN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve
from statsmodels.stats.proportion import proportion_confint

from packager.core.config import parse_config
from packager.core.metrics import (
    auc_ci95,
    clinical,
    overlap,
    predicted_classes,
    roc_auc,
    roc_curve,
    to_probabilities,
    wilson,
)
from packager.runtime.validate import gate_checks
from tests.test_verdicts import bootstrap_pairs


def _overlapping(
    n: int, classes: int, seed: int, decimals: int | None = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and (N, classes) probabilities whose classes overlap; rounded to `decimals` so
    scores tie and some sit exactly on a 0.05-step threshold."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(0.0, 1.0, (n, classes))
    logits[np.arange(n), y] += 1.2  # informative, far from separable
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    if decimals is not None:
        probs = np.round(probs, decimals)
    return y, probs


@pytest.mark.parametrize(
    ("classes", "positive", "threshold", "seed"),
    [(2, 1, 0.5, 0), (2, 1, 0.35, 1), (2, 0, 0.6, 2), (3, 2, 0.3, 3), (3, 0, 0.45, 4)],
)
def test_clinical_with_fp_and_fn_equals_sklearn_and_statsmodels(
    classes: int, positive: int, threshold: float, seed: int
) -> None:
    y, probs = _overlapping(700, classes, seed)
    c = clinical(probs, y, positive, threshold)
    truth = y == positive
    p = probs[:, positive]
    pred = p >= threshold
    tn, fp, fn, tp = confusion_matrix(truth, pred, labels=[False, True]).ravel()
    assert min(tn, fp, fn, tp) >= 10, "the data must hold every kind of error"
    assert (p == threshold).any(), "and scores exactly at the threshold (decided positive)"
    assert c.confusion == {"tp": tp, "fn": fn, "tn": tn, "fp": fp}
    assert (c.n, c.positives) == (len(y), truth.sum())
    assert c.sensitivity == pytest.approx(recall_score(truth, pred), abs=1e-15)
    assert c.specificity == pytest.approx(recall_score(truth, pred, pos_label=False), abs=1e-15)
    assert c.accuracy == pytest.approx(accuracy_score(truth, pred), abs=1e-15)
    assert c.auc == pytest.approx(roc_auc_score(truth, p), abs=1e-12)
    lo, hi = proportion_confint(tp, tp + fn, alpha=0.05, method="wilson")
    assert c.sensitivity_ci95 == pytest.approx((lo, hi), abs=1e-12)
    lo, hi = proportion_confint(tn, tn + fp, alpha=0.05, method="wilson")
    assert c.specificity_ci95 == pytest.approx((lo, hi), abs=1e-12)
    assert c.finite


def test_reference_comparison_with_flips_both_ways() -> None:
    y, ref = _overlapping(600, 2, 5)
    rng = np.random.default_rng(6)
    p1 = np.clip(ref[:, 1] + rng.normal(0, 0.08, len(y)), 0, 1)
    tgt = np.stack([1 - p1, p1], axis=1)
    c = clinical(tgt, y, 1, 0.5, reference=ref)
    truth = y == 1
    pred, ref_pred = p1 >= 0.5, ref[:, 1] >= 0.5
    lost = int((truth & ref_pred & ~pred).sum())
    gained = int((truth & ~ref_pred & pred).sum())
    assert lost >= 5 and gained >= 5, "flips both ways among the positives"
    assert c.reference_sensitivity == pytest.approx(recall_score(truth, ref_pred), abs=1e-15)
    assert c.sensitivity_drop == pytest.approx(
        recall_score(truth, ref_pred) - recall_score(truth, pred), abs=1e-15
    )
    assert c.sensitivity_drop == pytest.approx((lost - gained) / truth.sum(), abs=1e-15)
    assert c.flipped == np.flatnonzero(pred != ref_pred).tolist()
    assert c.max_abs_diff == pytest.approx(np.abs(p1 - ref[:, 1]).max(), abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_with_ties_equals_sklearn(seed: int) -> None:
    y, probs = _overlapping(500, 2, seed, decimals=1)  # heavy ties
    assert roc_auc(y == 1, probs[:, 1]) == pytest.approx(
        roc_auc_score(y == 1, probs[:, 1]), abs=1e-12
    )


def test_roc_curve_equals_sklearn() -> None:
    # Distinct scores: every case is its own threshold, the same points as sklearn's full curve.
    y, probs = _overlapping(400, 2, 7, decimals=None)
    p = probs[:, 1]
    assert len(np.unique(p)) == len(p)
    fpr, tpr = roc_curve(y == 1, p)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y == 1, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
    # Tied scores: sklearn's points (one per distinct threshold) all lie on packager's curve.
    y, probs = _overlapping(400, 2, 8, decimals=1)
    fpr, tpr = roc_curve(y == 1, probs[:, 1])
    sk_fpr, sk_tpr, _ = sk_roc_curve(y == 1, probs[:, 1], drop_intermediate=False)
    ours = set(zip(np.round(fpr, 12), np.round(tpr, 12), strict=True))
    assert set(zip(np.round(sk_fpr, 12), np.round(sk_tpr, 12), strict=True)) <= ours


@pytest.mark.parametrize(("k", "n"), [(0, 7), (1, 1), (3, 3), (5, 17), (95, 100), (388, 390)])
def test_wilson_equals_statsmodels(k: int, n: int) -> None:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson(k, n) == pytest.approx((lo, hi), abs=1e-12)


def test_to_probabilities_rounds_to_the_stored_float32_and_softmaxes_only_logits() -> None:
    rng = np.random.default_rng(9)
    raw = rng.random((50, 3))
    p = raw / raw.sum(1, keepdims=True)
    got = to_probabilities(p, "probabilities")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, p.astype(np.float32).astype(np.float64))
    assert not np.array_equal(got, p)  # the float32 rounding really happened
    logits = rng.normal(0, 3, (50, 3))
    e = np.exp(logits - logits.max(1, keepdims=True))
    expected = (e / e.sum(1, keepdims=True)).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(to_probabilities(logits, "logits"), expected)


@pytest.mark.parametrize(("n_pos", "n_neg"), [(1, 9), (9, 1), (1, 1)])
def test_roc_with_a_single_case_of_a_class_equals_sklearn(n_pos: int, n_neg: int) -> None:
    y = np.array([1] * n_pos + [0] * n_neg)  # integer labels, as a caller may pass them
    s = np.linspace(0.05, 0.95, len(y))[np.random.default_rng(n_pos).permutation(len(y))]
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)


def test_non_finite_scores_count_as_documented() -> None:
    # NaN and -inf count as p = 0, +inf as p = 1 (metrics.clinical's rule), next to scores that
    # are exactly 0 and 1, so any other replacement value changes the ranks.
    y = np.array([1, 1, 1, 0, 0, 0, 1, 0, 1, 0])
    p = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, 0.3, 0.7, np.nan, 0.0, np.inf])
    ref_p = np.array([0.2, 0.9, 0.1, 0.1, 0.8, 0.3, 0.6, 0.4, 0.1, 0.7])
    c = clinical(np.stack([1 - p, p], 1), y, 1, 0.5, reference=np.stack([1 - ref_p, ref_p], 1))
    counted = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 0.3, 0.7, 0.0, 0.0, 1.0])
    assert not c.finite
    assert c.auc == pytest.approx(roc_auc_score(y, counted), abs=1e-12)
    assert c.max_abs_diff == pytest.approx(np.abs(counted - ref_p).max(), abs=1e-15)
    assert c.confusion == {"tp": 2, "fn": 3, "tn": 3, "fp": 2}


def test_no_positives_fails_the_sensitivity_gate_closed() -> None:
    y = np.zeros(20, int)
    p = np.linspace(0.0, 0.4, 20)
    two = np.stack([1 - p, p], 1)
    c = clinical(two, y, 1, 0.5, reference=two)  # no ZeroDivisionError either
    assert c.positives == 0 and c.auc is None
    checks = {ch.name: ch for ch in gate_checks(c, parse_config({}, Path.cwd()), False)}
    assert not checks["min_sensitivity"].passed, "no positive was seen: it cannot pass"
    # With no negatives instead, specificity has no interval rather than Wilson's (0, 1).
    ones = clinical(two, np.ones(20, int), 1, 0.5)
    assert ones.specificity is None and ones.specificity_ci95 is None
    want = proportion_confint(0, 20, alpha=0.05, method="wilson")  # every score is below 0.5
    assert ones.sensitivity_ci95 == pytest.approx(want, abs=1e-12)


def test_non_finite_scores_tie_with_the_values_they_decide_as() -> None:
    """+Inf ranks as 1.0, -Inf and NaN as 0.0, in the target's AUC, the reference's and the ROC
    curve: each ties with a real score of exactly that value (a larger stand-in such as the
    largest float would rank above it and change every number below)."""
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    raw = [np.inf, 1.0, -np.inf, 0.0, np.nan, 0.0, 0.7, 0.2]
    read = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.2]  # written out by hand
    assert roc_auc(y == 1, np.array(raw)) == roc_auc_score(y, read)
    fpr, tpr = roc_curve(y == 1, np.array(raw))
    want_fpr, want_tpr, _ = sk_roc_curve(y, read, drop_intermediate=False)
    assert np.array_equal(fpr, want_fpr) and np.array_equal(tpr, want_tpr)
    two = lambda p: np.stack([1 - np.asarray(p), np.asarray(p)], axis=1)  # noqa: E731
    finite = two([0.9, 0.1, 0.8, 0.3, 0.6, 0.4, 0.7, 0.2])
    c = clinical(finite, y, 1, 0.5, reference=two(raw))
    assert c.reference_auc == roc_auc_score(y, read)
    assert c.auc_drop == roc_auc_score(y, read) - roc_auc_score(y, finite[:, 1])
    assert roc_auc_score(y, read) not in (0.5, 1.0)  # not a degenerate example


def test_nan_ranks_lowest_among_the_other_classes() -> None:
    """The class of an image below the positive threshold is the most probable other class;
    a NaN probability ranks below every number, 0.0 included (expected classes by hand)."""
    probs = np.array(
        [
            [np.nan, 0.0, 0.3],  # 0.0 beats NaN: class 1
            [np.nan, 0.2, 0.1],  # class 1
            [0.0, np.nan, 0.4],  # class 0
            [0.3, np.nan, 0.6],  # viral at its threshold: 2
        ]
    )
    assert predicted_classes(probs, 2, 0.5).tolist() == [1, 1, 0, 2]


def test_auc_interval_of_a_small_sample_is_a_percentile_bootstrap() -> None:
    """12 positives, 12 negatives, AUC 0.965: a skewed statistic, where a bias-corrected (BCa)
    interval's lower bound lies about 0.07 below the percentile one. Against the plain
    percentile loop of tests/test_verdicts.py with its own seed (Monte Carlo spread about
    0.01 here), on 0/1 integer labels as well as booleans."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(12, bool), np.zeros(12, bool)]
    s = np.clip(np.where(y, 0.75, 0.3) + rng.normal(0, 0.15, 24), 0, 1)
    assert roc_auc_score(y, s) == pytest.approx(0.9653, abs=1e-4)
    want = bootstrap_pairs(y, s, None)
    assert auc_ci95(y, s) == pytest.approx(want, abs=0.03)
    assert auc_ci95(y.astype(int), s) == auc_ci95(y, s)
    # the drop against a reference that ranks the images alike is 0 in every resample
    assert auc_ci95(y, s, s**2) == (0.0, 0.0)
    # one class absent: no interval (a bootstrap could not resample it)
    assert auc_ci95(y[:12], s[:12]) is None and auc_ci95(~y[:12], s[:12], s[:12]) is None


@pytest.mark.parametrize(
    ("a", "b", "shared"),
    [
        ([0.1, 0.3], [0.3, 0.5], True),  # touching, either order
        ([0.3, 0.5], [0.1, 0.3], True),
        ([0.1, 0.5], [0.2, 0.3], True),  # one inside the other, either order
        ([0.2, 0.3], [0.1, 0.5], True),
        ([0.1, 0.3], [0.31, 0.5], False),  # apart, either order
        ([0.5, 0.6], [0.1, 0.3], False),
        (None, [0.1, 0.3], False),  # a missing interval ties with nothing
        ([0.1, 0.3], None, False),
    ],
)
def test_intervals_overlap_when_they_share_a_point(
    a: list[float] | None, b: list[float] | None, shared: bool
) -> None:
    assert overlap(a, b) is shared
