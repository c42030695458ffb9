import numpy as np
import pytest

from packager.core.metrics import clinical, flipped, roc_auc, to_probabilities, wilson


def test_sensitivity_matches_an_independent_count() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    p1 = np.clip(labels * 0.6 + rng.random(500) * 0.5, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    c = clinical(probs, labels, positive=1, threshold=0.5)
    tp = sum(1 for y, p in zip(labels, p1, strict=True) if y == 1 and p >= 0.5)
    tn = sum(1 for y, p in zip(labels, p1, strict=True) if y == 0 and p < 0.5)
    assert c.sensitivity == tp / (labels == 1).sum()
    assert c.specificity == tn / (labels == 0).sum()
    assert c.confusion["tp"] == tp and c.positives == (labels == 1).sum()


def test_wilson_interval_known_value() -> None:
    lo, hi = wilson(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-4) and hi == pytest.approx(0.9785, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_auc_with_ties_equals_pairwise_definition() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.4, 0.8, 0.2, 0.9, 0.9])
    pairs = [(a, b) for a in s[y == 1] for b in s[y == 0]]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert roc_auc(y, s) == pytest.approx(expected)
    assert roc_auc(np.ones(3), np.arange(3.0)) is None


def test_flips_and_drop_against_reference() -> None:
    labels = np.array([1, 1, 1, 0])
    ref = np.array([[0.1, 0.9], [0.4, 0.6], [0.2, 0.8], [0.9, 0.1]])
    new = np.array([[0.1, 0.9], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    c = clinical(new, labels, 1, 0.5, reference=ref)
    assert c.flipped == [1, 3]
    assert c.sensitivity_drop == pytest.approx(1 / 3)
    assert c.max_abs_diff == pytest.approx(0.6)


def test_multiclass_one_vs_rest_and_softmax() -> None:
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    probs = to_probabilities(logits, "logits")
    assert np.allclose(probs.sum(1), 1)
    c = clinical(probs, np.array([0, 1, 2]), positive=1, threshold=0.5)
    assert c.sensitivity == 1.0 and c.specificity == 1.0


def test_non_finite_scores_are_flagged() -> None:
    probs = np.array([[np.nan, np.nan], [0.2, 0.8]])
    assert not clinical(probs, np.array([1, 1]), 1, 0.5).finite


def test_flipped_matches_a_plain_recount_with_non_finite_rows() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random((300, 3)), rng.random((300, 3))
    b[:5] = a[:5]  # agreeing rows
    a[7, 2], b[7, 2] = np.nan, 0.9  # NaN decides negative: a flip
    a[8, 2], b[8, 2] = 0.9, np.inf  # +inf decides positive: no flip
    a[9, 2], b[9, 2] = -np.inf, 0.1  # -inf decides negative: no flip

    def positive(p: float) -> bool:
        return bool(p >= 0.3) and not np.isnan(p)

    got = flipped(a, b, positive=2, threshold=0.3)
    expected = [i for i in range(300) if positive(a[i, 2]) != positive(b[i, 2])]
    assert got == expected and 7 in got and 8 not in got and 9 not in got
    assert not set(got) & set(range(5))
