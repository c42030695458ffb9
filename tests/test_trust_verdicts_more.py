"""The verdict lines of packager.core.gates as a safety officer reads them (issue 28: the
survivors of `decide`, the class, PPV/NPV and custom gates after the verdict merge): each reason
text exactly, what each line decided on, the undefined lines of each gate with their reason, the
float slack at its edge, and the side read from a gate's name. Counts are by hand (written out
next to the cases), intervals from statsmodels, predictive values by counting 10,000 cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix
from statsmodels.stats.proportion import proportion_confint

from packager.core.config import GatesConfig
from packager.core.gates import (
    SLACK,
    custom_gates,
    decide,
    metric_gates,
    sensitivity_gates,
    side_of,
)
from packager.core.metrics import clinical
from packager.core.schema import from_dict
from packager.core.status import Basis, GateVerdict
from packager.core.target import Check
from tests.test_trust_gates import LABELS, TGT, THRESHOLD, lines, plugins  # noqa: F401

POINT_ONLY = "decided on the point estimate: packager has no 95% interval for this metric"
NO_POS = "undefined: no positives in the data"


def row(c: Check) -> tuple:
    return (c.name, c.value, c.limit, c.passed, c.verdict, c.reason, c.decided_on)


def gates(**values: object) -> GatesConfig:
    return from_dict(GatesConfig, dict(values), "gates")


def two(p: list[float]) -> np.ndarray:
    return np.stack([1 - np.array(p), np.array(p)], axis=1)


@pytest.mark.parametrize(
    ("name", "side"),
    [
        ("max_flip_rate", "max"),
        ("max_sensitivity_drop", "max"),
        ("custom:dice:max", "max"),
        ("custom:dice:min", "min"),
        ("min_auc", "min"),
        ("min_sensitivity[class=viral]", "min"),
        ("paired_alpha", "min"),
    ],
)
def test_a_gates_side_is_read_from_its_name(name: str, side: str) -> None:
    assert side_of(name) == side


def test_a_value_within_the_slack_of_its_limit_passes_and_one_past_it_fails() -> None:
    """SLACK absorbs float rounding only: at exactly limit -/+ SLACK a gate passes, at twice
    the slack it fails (floats near 0.9 are about 1e-16 apart, so both are distinct values)."""
    for value, passed in [(0.9 - SLACK, True), (0.9 - 2 * SLACK, False)]:
        assert decide("min_auc", value, 0.9, "min", None, False, "").passed is passed
    for value, passed in [(0.1 + SLACK, True), (0.1 + 2 * SLACK, False)]:
        assert decide("max_flip_rate", value, 0.1, "max", None, False, "").passed is passed


LOWER, UPPER = Basis.lower, Basis.upper
OK, FAIL, SHORT = GateVerdict.passed, GateVerdict.failed, GateVerdict.insufficient


@pytest.mark.parametrize(
    ("args", "want"),
    [
        # a bound that meets the limit: the bound, its sign and the limit
        (("min_x", 0.9, 0.8, "min", (0.85, 0.95)), (True, OK, "95% lower bound 0.85 ≥ 0.8", LOWER)),
        (("max_x", 0.02, 0.05, "max", (0.01, 0.03)), (True, OK, "95% upper bound 0.03 ≤ 0.05", UPPER)),
        # neither the bound nor the point: which way the point misses
        (("min_x", 0.7, 0.8, "min", (0.6, 0.8)), (False, FAIL, "the point estimate 0.7 is below 0.8", LOWER)),
        (("max_x", 0.1, 0.05, "max", (0.05, 0.2)), (False, FAIL, "the point estimate 0.1 is above 0.05", UPPER)),
        # the point meets the limit, the bound does not
        (
            ("min_x", 0.9, 0.8, "min", (0.7, 0.95)),
            (False, SHORT, "the point estimate 0.9 meets 0.8, but its 95% lower bound 0.7 "
             "does not: the data cannot show it", LOWER),
        ),
        (
            ("max_x", 0.04, 0.05, "max", (0.01, 0.09)),
            (False, SHORT, "the point estimate 0.04 meets 0.05, but its 95% upper bound 0.09 "
             "does not: the data cannot show it", UPPER),
        ),
    ],
)  # fmt: skip
def test_each_bound_decision_says_what_it_decided_on(args: tuple, want: tuple) -> None:
    name, value, limit, side, ci = args
    why = "packager.metrics dice from seg-metrics 0.3"  # what the metric is, then the decision
    got = decide(name, value, limit, side, ci, True, "no such images", why)
    assert (got.passed, got.verdict, got.reason, got.decided_on) == (
        want[0],
        want[1],
        f"{why}; {want[2]}",
        want[3],
    )
    bare = decide(name, value, limit, side, ci, True, "no such images")  # the note alone
    assert bare.reason == want[2] and bare.ci95 == ci
    on_point = decide(name, value, limit, side, ci, False, "")  # the interval is only recorded
    assert (on_point.reason, on_point.decided_on, on_point.ci95) == ("", Basis.point, ci)


def test_no_positives_leave_both_sensitivity_gates_undefined() -> None:
    """Three negatives, a reference: min_sensitivity and max_sensitivity_drop have no
    denominator. The line says so and what it would have decided on."""
    c = clinical(two([0.2, 0.7, 0.1]), np.array([0, 0, 0]), 1, THRESHOLD, two([0.2, 0.2, 0.1]))
    assert c.positives == 0 and c.sensitivity_drop is not None  # recorded, but not judged
    for bounds, basis in [(False, (Basis.point, Basis.point)), (True, (LOWER, UPPER))]:
        got = sensitivity_gates(c, GatesConfig(), None, bounds, True)
        assert [row(x) for x in got] == [
            ("min_sensitivity", None, 0.98, False, GateVerdict.undefined, NO_POS, basis[0]),
            ("max_sensitivity_drop", None, 0.005, False, GateVerdict.undefined, NO_POS, basis[1]),
        ]


def test_ppv_and_npv_without_positives_are_undefined_for_that_reason() -> None:
    got = lines([0, 0, 0, 0], [0.2, 0.7, 0.1, 0.4], None, prevalence=0.1, min_ppv=0.0, min_npv=0.0)
    assert [row(got[k]) for k in ("min_ppv", "min_npv")] == [
        (k, None, 0.0, False, GateVerdict.undefined, NO_POS, Basis.point)
        for k in ("min_ppv", "min_npv")
    ]


def test_npv_above_its_floor_passes_and_says_it_decided_on_the_point() -> None:
    """LABELS/TGT: sensitivity 4/6, specificity 3/6 (scikit-learn). At prevalence 0.1, counted
    over 10,000 cases: NPV = 4500 / (4500 + 333.3) = 0.931, PPV = 666.7 / (666.7 + 4500)."""
    tn, fp, fn, tp = confusion_matrix(LABELS, np.array(TGT) >= THRESHOLD).ravel()
    pos, neg = 10_000 * 0.1, 10_000 * 0.9
    npv = (tn / (tn + fp) * neg) / (tn / (tn + fp) * neg + fn / (tp + fn) * pos)
    ppv = (tp / (tp + fn) * pos) / (tp / (tp + fn) * pos + fp / (tn + fp) * neg)
    for decide_on, reason in [("point", ""), ("ci", POINT_ONLY)]:
        got = lines(
            LABELS, TGT, None, prevalence=0.1, min_ppv=0.1, min_npv=0.9, decide_on=decide_on
        )
        assert row(got["min_npv"]) == (
            "min_npv", round(npv, 6), 0.9, True, OK, reason, Basis.point
        )  # fmt: skip
        assert row(got["min_ppv"]) == (
            "min_ppv", round(ppv, 6), 0.1, True, OK, reason, Basis.point
        )  # fmt: skip


NAMES = ["normal", "bacterial", "viral"]
# (normal, bacterial, viral) probabilities; viral is the positive class at 0.5. No viral image:
#   labels 0 0 0 0 | 1 1 1
#   pred   0 0 0 1 | 1 1 2
# normal: tp 3 fn 1 tn 3 fp 0; bacterial: tp 2 fn 1 tn 3 fp 1; viral: tp 0 fn 0 tn 6 fp 1.
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.7, 0.1],
        [0.3, 0.1, 0.6],
    ]
)
Y = np.array([0, 0, 0, 0, 1, 1, 1])


def wilson(k: int, n: int) -> tuple[float, float]:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def test_class_gate_lines_whole() -> None:
    c = clinical(PROBS, Y, 2, 0.5, None, NAMES)
    assert c.classes == {
        "normal": {"tp": 3, "fn": 1, "tn": 3, "fp": 0},
        "bacterial": {"tp": 2, "fn": 1, "tn": 3, "fp": 1},
        "viral": {"tp": 0, "fn": 0, "tn": 6, "fp": 1},
    }
    classes = {
        "normal": {"min_specificity": 0.4},  # 3/3, well above its floor
        "viral": {"min_sensitivity": 0.4, "min_specificity": 0.4},  # no viral image: undefined
    }
    for decide_on, basis in [("point", Basis.point), ("ci", LOWER)]:
        got = metric_gates(c, None, gates(classes=classes, decide_on=decide_on))
        lo = wilson(3, 3)[0]
        spec_why = "" if decide_on == "point" else f"95% lower bound {lo:.4g} ≥ 0.4"
        assert [row(x) for x in got] == [
            ("min_specificity[class=normal]", 1.0, 0.4, True, OK, spec_why, basis),
            (
                "min_sensitivity[class=viral]",
                None,
                0.4,
                False,
                GateVerdict.undefined,
                "undefined: no images of class viral in the data",
                basis,
            ),
            ("min_specificity[class=viral]", round(6 / 7, 6), 0.4, True, OK, "", Basis.point)
            if decide_on == "point"
            else (
                "min_specificity[class=viral]",
                round(6 / 7, 6),
                0.4,
                True,
                OK,
                f"95% lower bound {wilson(6, 7)[0]:.4g} ≥ 0.4",
                LOWER,
            ),
        ]
        assert got[0].ci95 == pytest.approx(wilson(3, 3), abs=1e-12)


def test_a_class_with_every_image_has_no_specificity() -> None:
    c = clinical(PROBS[:3], Y[:3], 2, 0.5, None, NAMES)  # three normal images, nothing else
    got = metric_gates(c, None, gates(classes={"normal": {"min_specificity": 0.0}}))
    assert [row(x) for x in got] == [
        (
            "min_specificity[class=normal]",
            None,
            0.0,
            False,
            GateVerdict.undefined,
            "undefined: no images of another class than normal in the data",
            Basis.point,
        )
    ]


def test_class_gates_on_metrics_counted_without_the_class_names_are_a_bug_not_a_pass() -> None:
    c = clinical(PROBS, Y, 2, 0.5)  # no names: no per-class counts
    with pytest.raises(ValueError) as exc:
        metric_gates(c, None, gates(classes={"normal": {"min_sensitivity": 0.5}}))
    assert str(exc.value) == "no per-class counts for class 'normal'"


def test_a_custom_gate_on_bounds_says_it_decided_on_the_point(plugins: None) -> None:  # noqa: F811
    """A custom metric has no interval: with decide_on = "ci" the line still decides on its value,
    and says so after naming the metric's source."""
    y, probs = np.array(LABELS), two(TGT)
    value = (4 / 6 + 3 / 6) / 2  # balanced accuracy: sensitivity 4/6, specificity 3/6
    g = gates(custom={"balanced_accuracy": {"min": 0.5}}, decide_on="ci")
    src = "packager.metrics balanced_accuracy from tiny-metrics 1.2.0"
    assert [row(x) for x in custom_gates(g, y, probs, {})] == [
        ("custom:balanced_accuracy:min", round(value, 6), 0.5, True, OK, f"{src}; {POINT_ONLY}",
         Basis.point),
    ]  # fmt: skip
