"""Every line packager.core.gates writes, whole (name, value, limit, verdict, reason), on cases
counted by hand and with scikit-learn and scipy; the undefined metrics with the reason each
gives; PPV/NPV and the paired test at their edges; custom metrics from a real entry point put on
sys.path in-process (issue 28: the gates' survivors under mutation testing)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from packager.core.config import GatesConfig
from packager.core.errors import UserError
from packager.core.gates import check_custom, custom_gates, metric_gates, predictive_values
from packager.core.metrics import clinical
from packager.core.schema import from_dict
from packager.core.status import GateVerdict
from packager.core.target import Check
from packager.reports.evidence import evidence

THRESHOLD = 0.5
NO_REF = "undefined: no reference to compare with"
# 6 positives, 6 negatives; the target misses one positive the reference finds and calls two
# negatives positive that the reference got right (tests/test_gates.py uses the same cases).
LABELS = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
REF = [0.9, 0.8, 0.7, 0.6, 0.6, 0.4, 0.1, 0.2, 0.3, 0.4, 0.1, 0.6]
TGT = [0.9, 0.8, 0.7, 0.6, 0.4, 0.4, 0.6, 0.7, 0.3, 0.4, 0.1, 0.6]


def lines(
    labels: list[int], target: list[float], reference: list[float] | None, **gates: object
) -> dict[str, Check]:
    y = np.array(labels)
    two = lambda p: np.stack([1 - np.array(p), np.array(p)], axis=1)  # noqa: E731
    probs, ref = two(target), None if reference is None else two(reference)
    g = from_dict(GatesConfig, dict(gates), "gates")
    ev = evidence(y, probs, ref, THRESHOLD, 1, None, g)
    return {c.name: c for c in metric_gates(clinical(probs, y, 1, THRESHOLD, ref), ev, g)}


def row(c: Check) -> tuple:
    """A gate line as compared here: name, value, limit, verdict, reason (its interval is
    checked on its own where the test computes one)."""
    return (c.name, c.value, c.limit, c.passed, c.verdict, c.reason)


def want(name: str, value: float | None, limit: float, passed: bool, reason: str = "") -> tuple:
    verdict = (
        GateVerdict.undefined
        if value is None
        else GateVerdict.passed
        if passed
        else GateVerdict.failed
    )
    return (name, value, limit, passed, verdict, reason)


def specificity(p: list[float]) -> float:
    tn, fp, _, _ = confusion_matrix(LABELS, np.array(p) >= THRESHOLD).ravel()
    return tn / (tn + fp)


def test_every_metric_gate_line_whole() -> None:
    y = np.array(LABELS)
    spec, ref_spec = specificity(TGT), specificity(REF)  # 3/6 and 5/6
    auc, ref_auc = roc_auc_score(y, TGT), roc_auc_score(y, REF)
    flips = np.mean((np.array(TGT) >= THRESHOLD) != (np.array(REF) >= THRESHOLD))
    two = lambda p: np.stack([1 - np.array(p), np.array(p)], axis=1)  # noqa: E731
    ev = evidence(y, two(TGT), two(REF), THRESHOLD, 1, None, from_dict(GatesConfig, {}, "g"))
    ece = ev["calibration"]["target"]["ece"] - ev["calibration"]["reference"]["ece"]
    assert ece != 0
    got = lines(
        LABELS,
        TGT,
        REF,
        min_specificity=0.5,  # exactly: passes
        max_specificity_drop=0.4,
        min_auc=0.9,
        max_auc_drop=0.01,
        max_flip_rate=0.25,
        max_ece_increase=1.0,
    )
    assert [row(c) for c in got.values()] == [
        want("min_specificity", round(spec, 6), 0.5, True),
        want("max_specificity_drop", round(ref_spec - spec, 6), 0.4, True),
        want("min_auc", round(auc, 6), 0.9, auc >= 0.9),
        want("max_auc_drop", round(ref_auc - auc, 6), 0.01, False),
        want("max_flip_rate", round(flips, 6), 0.25, True),
        want("max_ece_increase", round(ece, 6), 1.0, True),
    ]
    # the recorded intervals: Wilson (statsmodels) for the proportions
    wilson = lambda k, n: proportion_confint(k, n, alpha=0.05, method="wilson")  # noqa: E731
    assert got["min_specificity"].ci95 == pytest.approx(wilson(3, 6), abs=1e-12)
    assert got["max_flip_rate"].ci95 == pytest.approx(wilson(int(flips * 12), 12), abs=1e-12)
    assert round(ref_spec - spec, 6) == 0.333333  # the sixth place is kept, the seventh not


def test_a_negative_ece_increase_passes_a_zero_limit() -> None:
    """The target better calibrated than the reference: the increase is the difference, below
    zero, so a limit of 0 passes; swapped, the same difference fails it."""
    better = lines(LABELS, REF, TGT, max_ece_increase=0.0)["max_ece_increase"]
    worse = lines(LABELS, TGT, REF, max_ece_increase=0.0)["max_ece_increase"]
    assert better.value == -worse.value != 0
    assert better.passed != worse.passed


@pytest.mark.parametrize("reference", [REF[:6], None])
def test_undefined_metrics_fail_closed_with_their_reason(reference: list[float] | None) -> None:
    """Only positives: specificity, AUC and their drops are undefined, as are PPV/NPV (no
    specificity); with no reference, every comparison is undefined for that reason first."""
    got = lines(
        LABELS[:6],
        TGT[:6],
        reference,
        min_specificity=0.0,
        max_specificity_drop=1.0,
        min_auc=0.0,
        max_auc_drop=1.0,
        prevalence=0.1,
        min_ppv=0.0,
        min_npv=0.0,
        max_flip_rate=1.0,
        max_ece_increase=1.0,
        paired_alpha=0.05,
    )
    no_neg, absent = "undefined: no negatives in the data", "undefined: one class is absent"
    ppv_why = "undefined: no negatives in the data, or no positive decisions at prevalence 0.1"
    expected = {
        "min_specificity": (0.0, no_neg),
        "max_specificity_drop": (1.0, no_neg if reference else NO_REF),
        "min_auc": (0.0, absent),
        "max_auc_drop": (1.0, absent if reference else NO_REF),
        "min_ppv": (0.0, ppv_why),
        "min_npv": (0.0, ppv_why),
    }
    if reference is None:
        expected |= {"max_flip_rate": (1.0, NO_REF), "max_ece_increase": (1.0, NO_REF)}
        expected |= {"paired_alpha": (0.05, NO_REF)}
    for name, (limit, why) in expected.items():
        assert row(got[name]) == want(name, None, limit, False, why), name
        assert got[name].status == "failed"


def test_predictive_values_follow_bayes_rule() -> None:
    for sens, spec, prev in [(0.9, 0.8, 0.1), (0.5, 0.5, 0.5), (0.3, 0.95, 0.02)]:
        # 10,000 cases at the prevalence, counted
        pos, neg = 10_000 * prev, 10_000 * (1 - prev)
        tp, fn, tn, fp = sens * pos, (1 - sens) * pos, spec * neg, (1 - spec) * neg
        ppv, npv = predictive_values(sens, spec, prev)
        assert ppv == pytest.approx(tp / (tp + fp)) and npv == pytest.approx(tn / (tn + fn))
    # no positive decisions at all: PPV undefined; no negative decisions: NPV undefined
    assert predictive_values(0.0, 1.0, 0.1) == (None, pytest.approx(0.9))
    assert predictive_values(1.0, 0.0, 0.1) == (pytest.approx(0.1), None)
    assert predictive_values(0.9, None, 0.1) == (None, None)


def test_paired_gate_lines_whole() -> None:
    """The target worse among negatives (2 discordant pairs, both against it): the exact
    binomial p; the target better: 1.0 and why."""
    p = binomtest(2, 2, 0.5).pvalue
    assert row(lines(LABELS, TGT, REF, paired_alpha=0.6)["paired_alpha"]) == want(
        "paired_alpha", p, 0.6, False, "exact McNemar p"
    )
    assert row(lines(LABELS, REF, TGT, paired_alpha=0.05)["paired_alpha"]) == want(
        "paired_alpha", 1.0, 0.05, True, "the target is not worse among positives or negatives"
    )


def test_equal_discordant_counts_are_not_worse() -> None:
    """Among positives the target misses one case the reference finds and finds one the
    reference misses: a tie is not worse (exact p would be 1.0 either way; the reason says)."""
    labels = [1, 1, 1, 0, 0]
    ref, tgt = [0.9, 0.2, 0.8, 0.1, 0.2], [0.2, 0.9, 0.8, 0.1, 0.2]
    got = lines(labels, tgt, ref, paired_alpha=0.05)["paired_alpha"]
    assert row(got) == want(
        "paired_alpha", 1.0, 0.05, True, "the target is not worse among positives or negatives"
    )


METRICS = """
    import numpy as np

    def balanced_accuracy(labels, probs, metadata):
        pred = probs[:, 1] >= 0.5
        y = labels == 1
        return (np.mean(pred[y]) + np.mean(~pred[~y])) / 2

    def boom(labels, probs, metadata):
        raise RuntimeError("no data for this")

    def nan(labels, probs, metadata):
        return float("nan")

    def sites(labels, probs, metadata):
        return len(set(metadata["site"]))
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real distribution (dist-info with entry points) on sys.path, as `pip install` leaves
    one: three packager.metrics entry points."""
    (tmp_path / "tiny_metrics.py").write_text(textwrap.dedent(METRICS))
    info = tmp_path / "tiny_metrics-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-metrics\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text(
        "[packager.metrics]\nbalanced_accuracy = tiny_metrics:balanced_accuracy\n"
        "boom = tiny_metrics:boom\nnan = tiny_metrics:nan\nsites = tiny_metrics:sites\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_custom_metric_lines_whole(plugins: None) -> None:
    y = np.array(LABELS)
    probs = np.stack([1 - np.array(TGT), np.array(TGT)], axis=1)
    pred = np.array(TGT) >= 0.5
    value = (np.mean(pred[y == 1]) + np.mean(~pred[y == 0])) / 2  # (4/6 + 4/6) / 2
    custom = {
        "balanced_accuracy": {"min": value, "max": value},
        "boom": {"min": 0.0},
        "nan": {"max": 1.0},
    }
    g = from_dict(GatesConfig, {"custom": custom}, "gates")
    check_custom(g)
    src = "packager.metrics balanced_accuracy from tiny-metrics 1.2.0"
    assert [row(c) for c in custom_gates(g, y, probs, {})] == [
        want("custom:balanced_accuracy:max", round(value, 6), value, True, src),
        want("custom:balanced_accuracy:min", round(value, 6), value, True, src),
        want(
            "custom:boom:min",
            None,
            0.0,
            False,
            "undefined: boom raised RuntimeError: no data for this "
            "(packager.metrics boom from tiny-metrics 1.2.0)",
        ),
        want(
            "custom:nan:max",
            None,
            1.0,
            False,
            "undefined: nan is not finite (packager.metrics nan from tiny-metrics 1.2.0)",
        ),
    ]
    tighter = {"balanced_accuracy": {"min": value + 1e-6, "max": value - 1e-6}}
    g = from_dict(GatesConfig, {"custom": tighter}, "gates")
    assert [c.passed for c in custom_gates(g, y, probs, {})] == [False, False]


def test_custom_metrics_get_the_cases(plugins: None) -> None:
    """Each metric is called with the labels, the probabilities and the metadata, in order."""
    y = np.array([1, 0, 1, 0])
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.9, 0.1]])
    custom = {"balanced_accuracy": {"min": 0.0}, "sites": {"min": 0.0}}
    g = from_dict(GatesConfig, {"custom": custom}, "gates")
    got = custom_gates(g, y, probs, {"site": np.array(["a", "b", "a", "c"])})
    assert [c.value for c in got] == [0.5, 3]


def test_an_unknown_custom_metric_names_those_installed(plugins: None) -> None:
    g = from_dict(GatesConfig, {"custom": {"no_such": {"min": 0.5}}}, "gates")
    with pytest.raises(UserError) as exc:
        check_custom(g)
    assert str(exc.value) == (
        "[gates.custom] no_such: no 'packager.metrics' entry point of that name "
        "(balanced_accuracy, boom, nan, sites); install the package that provides it"
    )


def test_an_unknown_custom_metric_with_none_installed() -> None:
    g = from_dict(GatesConfig, {"custom": {"no_such": {"min": 0.5}}}, "gates")
    with pytest.raises(UserError, match=r"of that name \(none installed\); install"):
        check_custom(g)


@pytest.mark.parametrize(
    ("positives", "verdict"),
    [(20, "pass"), (19, "insufficient evidence"), (0, "insufficient evidence"), (400, "pass")],
)
def test_min_finding_positives_at_its_limit(positives: int, verdict: str) -> None:
    from packager.core.gates import finding_positives

    line = finding_positives(positives, GatesConfig()).to_dict()  # the default limit, 20
    assert (line["name"], line["value"], line["limit"]) == ("min_finding_positives", positives, 20)
    assert line["verdict"] == verdict and line["passed"] == (verdict == "pass")
    assert line["decided_on"] == "point"
    if verdict == "pass":
        assert line["reason"] == ""
    else:
        assert line["reason"] == (
            f"insufficient evidence: {positives} positive images, fewer than 20; add positives "
            "to the validation data or lower min_finding_positives ([gates], or per finding in "
            "[gates.findings.<name>])"
        )
    own = finding_positives(5, GatesConfig(min_finding_positives=5)).to_dict()
    assert own["verdict"] == "pass" and own["limit"] == 5
