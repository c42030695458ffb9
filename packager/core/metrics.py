"""Clinical metrics: sensitivity with a Wilson interval, specificity, AUC (with a stratified
bootstrap interval when a gate decides on it), flips against a reference, and one class against
the rest for every class."""

from __future__ import annotations

from typing import Any

import numpy as np

from packager.core.schema import typed
from packager.shipped.predict import probabilities


def to_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """(N, C) logits or probabilities (the bundles' own predict.py), rounded to the float32 that
    validation.npz stores: every metric is then recountable exactly from the stored arrays."""
    return probabilities(scores, kind).astype(np.float32).astype(np.float64)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval (statsmodels); (0, 1) when there is nothing to count."""
    if n == 0:
        return (0.0, 1.0)
    from statsmodels.stats.proportion import proportion_confint  # ~0.3 s: only when counting

    lo, hi = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return (max(0.0, float(lo)), min(1.0, float(hi)))


def _finite(score: np.ndarray) -> np.ndarray:
    """Scores as the decisions read them: NaN is 0 (decides negative), +/-Inf are 1 / 0."""
    return np.nan_to_num(np.asarray(score, np.float64), nan=0.0, posinf=1.0, neginf=0.0)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """AUC (scikit-learn, ties counted half); None when one class is absent."""
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, _finite(score)))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over every threshold (for plots)."""
    from sklearn.metrics import roc_curve as curve

    fpr, tpr, _ = curve(np.asarray(y, bool), _finite(score), drop_intermediate=False)
    return fpr, tpr


def decisions(probs: np.ndarray, positive: Any, threshold: Any) -> np.ndarray:
    """Positive-class decisions (p >= threshold) of (N, C) probabilities, (N,); with lists of
    columns and thresholds (a multi-label model's findings, LabelsConfig.operating_points),
    one decision per finding, (N, F). NaN decides negative."""
    p = np.nan_to_num(probs[:, positive], nan=0.0, posinf=1.0, neginf=0.0)
    return p >= np.asarray(threshold)


def predicted_classes(probs: np.ndarray, positive: int, threshold: float) -> np.ndarray:
    """One class per image as the bundle decides: the positive class where p(positive) >=
    threshold, else the most probable other class (NaN ranks lowest)."""
    p = np.nan_to_num(np.asarray(probs, np.float64), nan=-np.inf)
    p[:, positive] = -np.inf
    return np.where(decisions(probs, positive, threshold), positive, np.argmax(p, axis=1))


def class_confusion(
    probs: np.ndarray, labels: np.ndarray, positive: int, threshold: float, names: list[str]
) -> dict[str, dict[str, int]]:
    """Per class name, its one-vs-rest counts (tp, fn, tn, fp) on the predicted class."""
    pred = predicted_classes(probs, positive, threshold)
    out = {}
    for k, name in enumerate(names):
        y, d = labels == k, pred == k
        out[name] = {
            "tp": int((d & y).sum()),
            "fn": int((~d & y).sum()),
            "tn": int((~d & ~y).sum()),
            "fp": int((d & ~y).sum()),
        }
    return out


BOOTSTRAP_RESAMPLES = 2000  # seeded: the same arrays give the same interval on every host


def auc_ci95(
    y: np.ndarray, score: np.ndarray, reference: np.ndarray | None = None
) -> tuple[float, float] | None:
    """95% interval of the AUC of `score`, or with `reference` of the AUC drop (reference's
    minus score's, on the same images): scipy's percentile bootstrap, resampling positives and
    negatives separately (every resample has both classes) and, for the drop, the same images
    for both scores. None when one class is absent."""
    from scipy.stats import bootstrap, mannwhitneyu

    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return None
    s = _finite(score)
    r = None if reference is None else _finite(reference)

    def auc(v: np.ndarray, ip: np.ndarray, ineg: np.ndarray) -> np.ndarray:
        # Mann-Whitney U / (n_pos * n_neg) is the AUC with ties counted half, as sklearn's.
        pos, neg = v[y][ip], v[~y][ineg]
        return mannwhitneyu(pos, neg, axis=-1).statistic / (pos.shape[-1] * neg.shape[-1])

    def statistic(ip: np.ndarray, ineg: np.ndarray, axis: int = -1) -> np.ndarray:
        return auc(s, ip, ineg) if r is None else auc(r, ip, ineg) - auc(s, ip, ineg)

    res = bootstrap(
        (np.arange(int(y.sum())), np.arange(int((~y).sum()))),
        statistic,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        batch=100,
        rng=np.random.default_rng(0),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def flipped(probs: np.ndarray, other: np.ndarray, positive: Any, threshold: Any) -> list[int]:
    """Indices whose decision differs between two runs' (N, C) probabilities (any finding's,
    with lists: see `decisions`)."""
    differ = decisions(probs, positive, threshold) != decisions(other, positive, threshold)
    return [int(i) for i in np.flatnonzero(differ.reshape(len(differ), -1).any(axis=1))]


@typed
class Clinical:
    """The metrics of one run; packager.core.documents types report.json's clinical section with it."""

    n: int
    positives: int
    threshold: float
    sensitivity: float
    sensitivity_ci95: tuple[float, float]
    specificity: float | None
    accuracy: float
    auc: float | None
    confusion: dict[str, int]
    finite: bool
    reference_sensitivity: float | None = None
    sensitivity_drop: float | None = None
    flipped: list[int] | None = None
    max_abs_diff: float | None = None
    reference_specificity: float | None = None
    specificity_drop: float | None = None
    reference_auc: float | None = None
    auc_drop: float | None = None
    # Per class name: one class against the rest on the predicted class (predicted_classes).
    classes: dict[str, dict[str, int]] | None = None
    specificity_ci95: tuple[float, float] | None = None  # None: no negatives


def clinical(
    probs: np.ndarray,
    labels: np.ndarray,
    positive: int,
    threshold: float,
    reference: np.ndarray | None = None,
    names: list[str] | None = None,
) -> Clinical:
    """Metrics of positive-class decisions (p >= threshold), one-vs-rest for multi-class; with
    the class `names`, each class's counts against the rest too."""
    finite = bool(np.isfinite(probs).all())
    p = np.nan_to_num(probs[:, positive], nan=0.0, posinf=1.0, neginf=0.0)
    y = labels == positive
    pred = decisions(probs, positive, threshold)
    tp, fn = int((pred & y).sum()), int((~pred & y).sum())
    tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
    n_pos, n_neg = tp + fn, tn + fp
    out = Clinical(
        n=len(labels),
        positives=n_pos,
        threshold=threshold,
        sensitivity=tp / n_pos if n_pos else 0.0,
        sensitivity_ci95=wilson(tp, n_pos),
        specificity=tn / n_neg if n_neg else None,
        specificity_ci95=wilson(tn, n_neg) if n_neg else None,
        accuracy=(tp + tn) / len(labels),
        auc=roc_auc(y, p),
        confusion={"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        finite=finite,
        classes=None
        if names is None
        else class_confusion(probs, labels, positive, threshold, names),
    )
    if reference is not None:
        ref = reference[:, positive]
        ref_pred = decisions(reference, positive, threshold)
        ref_tp, ref_tn = int((ref_pred & y).sum()), int((~ref_pred & ~y).sum())
        out.reference_sensitivity = ref_tp / n_pos if n_pos else 0.0
        out.sensitivity_drop = out.reference_sensitivity - out.sensitivity
        if out.specificity is not None:
            out.reference_specificity = ref_tn / n_neg
            out.specificity_drop = out.reference_specificity - out.specificity
        out.reference_auc = roc_auc(y, np.nan_to_num(ref, nan=0.0, posinf=1.0, neginf=0.0))
        if out.auc is not None and out.reference_auc is not None:
            out.auc_drop = out.reference_auc - out.auc
        out.flipped = flipped(probs, reference, positive, threshold)
        out.max_abs_diff = float(np.max(np.abs(p - ref)))
    return out


def overlap(a: list[float] | None, b: list[float] | None) -> bool:
    """Whether two intervals share a point; False when either is missing (then nothing can be
    called a tie)."""
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
