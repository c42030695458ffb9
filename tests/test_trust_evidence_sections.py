"""What the sign-off shows from packager/reports/evidence.py, section by section, against hand
counts and independent computations (issue 28, mutation testing): the paired section's keys and
numbers (the exact McNemar critical count in exact fractions and from scipy's binomial test, the
detectable drop against scipy's binomial distribution and, at the critical count, its closed
form), its claim texts word for word, also exactly at each limit; the subgroup rows against plain
counts, statsmodels' Wilson interval and Newcombe's interval as tests/test_trust_evidence.py
writes it from the paper; the subgroup gates' verdicts and lines; the AUC intervals and the
evidence's top-level keys."""

from __future__ import annotations

import itertools
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from scipy.stats import binom, binomtest
from statsmodels.stats.proportion import proportion_confint

from packager.core.config import GatesConfig
from packager.core.metrics import BOOTSTRAP_RESAMPLES, auc_ci95, wilson
from packager.reports.evidence import (
    detectable_drop,
    evidence,
    evidence_checks,
    mcnemar_critical,
    subgroups,
)
from tests.test_trust_evidence import _paired_arrays, _two, newcombe_reference

# ---- the paired section ----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.1, 0.0625, 0.05, 0.04, 0.01, 0.001])
def test_mcnemar_critical_is_the_fewest_pairs_the_exact_test_calls_significant(
    alpha: float,
) -> None:
    # b discordant pairs all one way: two-sided exact p = 2 * 0.5**b (at most 1), in fractions;
    # 0.0625 is exactly 2 * 0.5**5, where p <= alpha must still count.
    fewest = next(
        b for b in itertools.count(1) if min(Fraction(1), Fraction(2, 2**b)) <= Fraction(alpha)
    )
    assert mcnemar_critical(alpha) == fewest
    assert binomtest(fewest, fewest, 0.5).pvalue <= alpha  # scipy agrees
    assert fewest == 1 or binomtest(fewest - 1, fewest - 1, 0.5).pvalue > alpha
    assert mcnemar_critical() == 6  # the default, 5% two-sided


@pytest.mark.parametrize("n", [6, 7, 100, 2000])
def test_detectable_drop_has_the_stated_power(n: int) -> None:
    drop = detectable_drop(n)
    assert drop is not None
    # P(at least 6 of n positives lost) = 80%; at n = 6 that is drop**6 = 0.8
    assert binom.sf(5, n, drop) == pytest.approx(0.8, abs=1e-9)
    if n == 6:
        assert drop == pytest.approx(0.8 ** (1 / 6), rel=1e-9)
    # 1% two-sided needs 8 pairs one way; 90% power
    other = detectable_drop(n, power=0.9, alpha=0.01)
    if n < 8:
        assert other is None
    else:
        assert other is not None and binom.sf(7, n, other) == pytest.approx(0.9, abs=1e-9)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_fewer_positives_than_the_critical_count_can_detect_no_drop(n: int) -> None:
    assert detectable_drop(n) is None


def test_the_paired_section_has_exactly_its_keys_and_numbers() -> None:
    # 100 positives: 80 both found, 14 the reference only, 2 the target only, 4 neither
    y, ref, tgt = _paired_arrays(80, 14, 2, 4, (60, 1, 7, 2))
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["paired"]
    assert set(ev) == {
        "positives",
        "negatives",
        "sensitivity_drop",
        "one_positive",
        "detectable_drop",
        "power",
        "alpha",
        "claims",
    }
    assert ev["sensitivity_drop"] == pytest.approx(12 / 100, abs=1e-15)
    assert ev["one_positive"] == 1 / 100
    assert (ev["power"], ev["alpha"]) == (0.8, 0.05)
    assert binom.sf(5, 100, ev["detectable_drop"]) == pytest.approx(0.8, abs=1e-9)
    assert ev["claims"] == [
        {
            "gate": "max_sensitivity_drop",
            "supported": False,
            "text": "the gate failed on the point estimate (12.00 pts > 0.50 pts); the smallest "
            "drop this set detects with 80% power is 7.79 pts, so a drop at the gate's limit "
            "would usually go unnoticed",
        },
        {
            "gate": "min_sensitivity",
            "supported": False,
            "text": "the gate failed on the point estimate (82.00% < 98.00%)",
        },
    ]


def test_one_positive_lost_of_one_is_a_drop_of_one() -> None:
    y, ref, tgt = _paired_arrays(0, 1, 0, 0, (5, 0, 0, 0))
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["paired"]
    assert (ev["sensitivity_drop"], ev["one_positive"], ev["detectable_drop"]) == (1.0, 1.0, None)
    assert [c["text"] for c in ev["claims"]] == [
        "the gate failed on the point estimate (100.00 pts > 0.50 pts); with 1 positives no drop "
        "can reach significance",
        "the gate failed on the point estimate (0.00% < 98.00%)",
    ]


def test_a_set_without_positives_supports_no_claim() -> None:
    y, ref, tgt = _paired_arrays(0, 0, 0, 0, (5, 1, 0, 0))
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["paired"]
    assert (ev["sensitivity_drop"], ev["one_positive"], ev["detectable_drop"]) == (0.0, None, None)
    assert ev["claims"] == [
        {
            "gate": "max_sensitivity_drop",
            "supported": False,
            "text": "too small to support it: the 95% interval of the paired drop reaches 100.00 "
            "pts, above the gate's 0.50 pts (0 positives; no positives); with 0 positives no "
            "drop can reach significance",
        },
        {
            "gate": "min_sensitivity",
            "supported": False,
            "text": "too small to support it: the set has no positives",
        },
    ]


def _claims(table: tuple[int, int, int, int], **gates: float) -> list[dict[str, Any]]:
    y, ref, tgt = _paired_arrays(*table, (50, 0, 0, 0))
    return evidence(y, tgt, ref, 0.5, 1, None, GatesConfig(**gates))["paired"]["claims"]


def test_a_drop_and_a_sensitivity_exactly_at_their_limits_are_not_failures() -> None:
    # 1 lost of 200: a drop of exactly 0.005 (the limit); 196 of 200 found: exactly 0.98. Neither
    # gate fails, and neither interval backs it.
    assert newcombe_reference(196, 1, 0, 3)[1] == pytest.approx(0.029201883444, abs=1e-11)
    assert proportion_confint(196, 200, method="wilson")[0] == pytest.approx(0.94971291, abs=1e-8)
    assert _claims((196, 1, 0, 3)) == [
        {
            "gate": "max_sensitivity_drop",
            "supported": False,
            "text": "too small to support it: the 95% interval of the paired drop reaches 2.92 "
            "pts, above the gate's 0.50 pts (200 positives; one positive is 0.50 pts); the "
            "smallest drop this set detects with 80% power is 3.92 pts, so a drop at the gate's "
            "limit would usually go unnoticed",
        },
        {
            "gate": "min_sensitivity",
            "supported": False,
            "text": "too small to support it: the sensitivity's 95% interval starts at 94.97%, "
            "below the gate's 98.00% (200 positives)",
        },
    ]


SUPPORTED_DROP = "supported: the 95% interval of the paired drop ends at 0.21 pts, within the "
SUPPORTED_SENS = {
    "gate": "min_sensitivity",
    "supported": True,
    "text": "supported: the sensitivity's 95% interval starts at 99.08%",
}


def test_a_large_set_supports_both_claims_also_exactly_at_the_bound() -> None:
    # 2000 positives, 1990 found by both, none discordant
    hi = newcombe_reference(1990, 0, 0, 10)[1]
    lo = proportion_confint(1990, 2000, method="wilson")[0]
    assert (hi, lo) == pytest.approx((0.0021355233599, 0.9908203040501), abs=1e-12)
    smallest = detectable_drop(2000)
    assert smallest is not None and binom.sf(5, 2000, smallest) == pytest.approx(0.8, abs=1e-9)
    drop = {"gate": "max_sensitivity_drop", "supported": True}
    assert _claims((1990, 0, 0, 10)) == [
        drop | {"text": SUPPORTED_DROP + "gate's 0.50 pts"},
        SUPPORTED_SENS,
    ]
    # A limit equal to the interval's end is supported; this set could not detect that drop.
    y, ref, tgt = _paired_arrays(1990, 0, 0, 10, (50, 0, 0, 0))
    ends_at = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["paired"]["positives"]
    assert ends_at["drop_ci95"][1] == pytest.approx(hi, abs=1e-12)
    assert _claims((1990, 0, 0, 10), max_sensitivity_drop=ends_at["drop_ci95"][1])[0] == drop | {
        "text": SUPPORTED_DROP + "gate's 0.21 pts; the smallest drop this set detects with 80% "
        "power is 0.40 pts, so a drop at the gate's limit would usually go unnoticed"
    }
    # A limit equal to the smallest detectable drop is detected with 80% power: no warning.
    assert _claims((1990, 0, 0, 10), max_sensitivity_drop=smallest)[0] == drop | {
        "text": SUPPORTED_DROP + "gate's 0.40 pts"
    }
    # A min_sensitivity equal to the interval's lower end is supported.
    assert _claims((1990, 0, 0, 10), min_sensitivity=wilson(1990, 2000)[0])[1] == SUPPORTED_SENS


def test_too_few_positives_for_significance_is_said() -> None:
    assert _claims((2, 1, 0, 0))[0]["text"] == (
        "the gate failed on the point estimate (33.33 pts > 0.50 pts); with 3 positives no drop "
        "can reach significance"
    )


# ---- subgroups -----------------------------------------------------------------------------

NAN = float("nan")
# (site, label, target p, reference p) at threshold 0.5; " A " reads as A, and None, NaN, "" and
# blanks as "(missing)"; a 41-character value is cut to 40 and "…", one of 40 is kept whole.
CASES = [
    (" A ", 1, 0.5, 0.9),  # exactly on the threshold: found
    ("A", 1, 0.4, 0.5),  # the reference finds it (exactly on the threshold), the target not
    ("A", 1, 0.9, 0.9),
    ("A", 0, 0.1, 0.1),
    ("A", 0, 0.6, 0.1),  # a false positive of the target only
    ("B", 1, 0.7, 0.7),
    ("B", 1, 0.2, 0.7),
    (None, 0, 0.2, 0.2),
    (NAN, 0, 0.8, 0.2),
    ("", 0, 0.3, 0.9),
    ("   ", 0, 0.1, 0.1),
    ("x" * 41, 1, 0.9, 0.9),
    ("y" * 40, 0, 0.1, 0.1),
]


def _wilson(k: int, n: int) -> list[float]:
    return list(proportion_confint(k, n, alpha=0.05, method="wilson"))


def _row(value: str, pos: tuple[int, int, int], neg: tuple[int, int], **ref: Any) -> dict:
    """A subgroup row from hand counts: pos = (positives, target found, reference found),
    neg = (negatives, target right)."""
    (n_pos, hits, ref_hits), (n_neg, right) = pos, neg
    sens = hits / n_pos if n_pos else None
    row = {
        "group": "site",
        "value": value,
        "n": n_pos + n_neg,
        "positives": n_pos,
        "negatives": n_neg,
        "sensitivity": sens,
        "sensitivity_ci95": _wilson(hits, n_pos) if n_pos else None,
        "specificity": right / n_neg if n_neg else None,
        "specificity_ci95": _wilson(right, n_neg) if n_neg else None,
        "reference_sensitivity": None,
        "sensitivity_drop": None,
        "sensitivity_drop_ci95": None,
        "flips": None,
        "new_misses": None,
        "verdict": "no subgroup gate",
        "gates": [],
    }
    if ref:
        row["reference_sensitivity"] = ref_hits / n_pos if n_pos else None
        row["sensitivity_drop"] = (ref_hits - hits) / n_pos if n_pos else None
        table = ref.pop("table", None)
        row["sensitivity_drop_ci95"] = list(newcombe_reference(*table)) if table else None
        row |= ref
    return row


def _same(got: list[dict], expected: list[dict]) -> None:
    assert [list(r) for r in got] == [list(r) for r in expected]  # the keys, in order
    for g, e in zip(got, expected, strict=True):
        for key, value in e.items():
            if isinstance(value, (float, list)):
                assert g[key] == pytest.approx(value, abs=1e-12), (e["value"], key)
            else:
                assert g[key] == value, (e["value"], key)


def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    site = np.array([c[0] for c in CASES], dtype=object)
    y, p, ref = (np.array([c[i] for c in CASES]) for i in (1, 2, 3))
    return site, y.astype(bool), p, ref, site.reshape(-1, 1)


def test_subgroup_rows_equal_hand_counts_with_and_without_a_reference() -> None:
    site, y, p, ref, column = _arrays()
    long, full = "x" * 40 + "…", "y" * 40
    compared = [
        _row("(missing)", (0, 0, 0), (4, 3), flips=2, new_misses=0),
        _row("A", (3, 2, 3), (2, 1), table=(2, 1, 0, 0), flips=2, new_misses=1),
        _row("B", (2, 1, 2), (0, 0), table=(1, 1, 0, 0), flips=1, new_misses=1),
        _row(long, (1, 1, 1), (0, 0), table=(1, 0, 0, 0), flips=0, new_misses=0),
        _row(full, (0, 0, 0), (1, 1), flips=0, new_misses=0),
    ]
    # an (N, 1) column reads as its N labels
    _same(subgroups({"site": column}, y, p, ref, 0.5, GatesConfig()), compared)
    alone = [
        _row("(missing)", (0, 0, 0), (4, 3)),
        _row("A", (3, 2, 3), (2, 1)),
        _row("B", (2, 1, 2), (0, 0)),
        _row(long, (1, 1, 1), (0, 0)),
        _row(full, (0, 0, 0), (1, 1)),
    ]
    _same(subgroups({"site": site}, y, p, None, 0.5, GatesConfig()), alone)


def test_a_group_name_that_cannot_be_printed_is_escaped() -> None:
    site, y, p, _, _ = _arrays()
    rows = subgroups({"site\n": site}, y, p, None, 0.5, GatesConfig())
    assert {r["group"] for r in rows} == {"site\\n"}


# ---- the subgroup gates --------------------------------------------------------------------


def _sites(hits_a: int, ref_hits_a: int) -> tuple[np.ndarray, ...]:
    """Sites A and B, 50 positives and 10 true negatives each; at A the target finds `hits_a`
    positives and the reference `ref_hits_a`, at B both find all."""
    site = np.array(["A"] * 60 + ["B"] * 60, dtype=object)
    y = np.array(([1] * 50 + [0] * 10) * 2, dtype=bool)
    p, ref = np.where(y, 0.9, 0.1), np.where(y, 0.9, 0.1)
    p[hits_a:50], ref[ref_hits_a:50] = 0.1, 0.1
    return site, y, p, ref


def _judged(hits_a: int, ref: bool = True, **gates: Any) -> list[dict[str, Any]]:
    site, y, p, r = _sites(hits_a, 50)
    g = GatesConfig(**gates)
    return subgroups({"site": site}, y, p, r if ref else None, 0.5, g)


def _line(name: str, value: float, limit: float, verdict: str, basis: str) -> dict:
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "passed": verdict == "pass",
        "verdict": verdict,
        "decided_on": basis,
    }


def _lines(row: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("name", "value", "limit", "passed", "verdict", "decided_on")
    return [{k: g[k] for k in keys} for g in row["gates"]]


BOTH = {"min_subgroup_sensitivity": 0.9, "max_subgroup_sensitivity_drop": 0.05}


@pytest.mark.parametrize(
    ("hits_a", "verdict", "drop_verdict"),
    [(48, "passed", "pass"), (46, "failed", "fail")],
    ids=["both-pass", "drop-fails"],
)
def test_subgroup_gates_on_the_point_estimates(
    hits_a: int, verdict: str, drop_verdict: str
) -> None:
    rows = _judged(hits_a, **BOTH)
    assert [(r["value"], r["verdict"]) for r in rows] == [("A", verdict), ("B", "passed")]
    drop = (50 - hits_a) / 50
    assert _lines(rows[0]) == [
        _line("min_subgroup_sensitivity[site=A]", hits_a / 50, 0.9, "pass", "point"),
        _line("max_subgroup_sensitivity_drop[site=A]", drop, 0.05, drop_verdict, "point"),
    ]
    # decided on the point, each line still carries its interval
    lines = rows[0]["gates"]
    assert lines[0]["ci95"] == pytest.approx(_wilson(hits_a, 50), abs=1e-12)
    drop_ci = newcombe_reference(hits_a, 50 - hits_a, 0, 0)
    assert lines[1]["ci95"] == pytest.approx(list(drop_ci), abs=1e-12)
    checks = evidence_checks({"subgroups": rows})
    assert [c.name for c in checks] == [g["name"] for r in rows for g in r["gates"]]
    assert [c.passed for c in checks] == [True, drop_verdict == "pass", True, True]


def test_subgroup_gates_on_their_intervals_name_insufficient_evidence() -> None:
    # 50 of 50 found by both: the sensitivity's Wilson lower bound 0.9287 clears 0.9, but the
    # paired drop's upper bound 0.0713 does not clear 0.05 although the drop is 0
    rows = _judged(50, decide_on="ci", **BOTH)
    lo = _wilson(50, 50)[0]
    hi = newcombe_reference(50, 0, 0, 0)[1]
    assert (lo, hi) == pytest.approx((0.92865, 0.07135), abs=1e-5)
    assert [r["verdict"] for r in rows] == ["insufficient evidence"] * 2
    lines = rows[0]["gates"]
    assert [(ln["verdict"], ln["decided_on"]) for ln in lines] == [
        ("pass", "95% lower bound"),
        ("insufficient evidence", "95% upper bound"),
    ]
    assert lines[0]["ci95"] == pytest.approx([lo, 1.0], abs=1e-12)
    assert lines[1]["ci95"] == pytest.approx(list(newcombe_reference(50, 0, 0, 0)), abs=1e-12)


@pytest.mark.parametrize(
    ("gates", "ref", "verdict"),
    [
        ({}, True, "no subgroup gate"),
        (BOTH | {"min_subgroup_positives": 51}, True, "too small to judge"),
        ({"max_subgroup_sensitivity_drop": 0.05}, False, "not judged: no reference comparison"),
    ],
    ids=["no-gate", "too-small", "drop-gate-without-reference"],
)
def test_subgroups_not_judged_say_why(gates: dict[str, Any], ref: bool, verdict: str) -> None:
    rows = _judged(48, ref, **gates)
    assert [(r["verdict"], r["gates"]) for r in rows] == [(verdict, [])] * 2
    assert evidence_checks({"subgroups": rows}) == []


# ---- the whole evidence --------------------------------------------------------------------


def test_the_evidence_has_exactly_its_sections() -> None:
    y, ref, tgt = _paired_arrays(80, 14, 2, 4, (60, 1, 7, 2))
    gates = GatesConfig(min_subgroup_sensitivity=0.9, min_subgroup_positives=7)
    ev = evidence(y, tgt, ref, 0.5, 1, None, gates)
    assert list(ev) == ["auc_ci95", "paired", "subgroups", "subgroup_gates", "calibration"] + [
        "fragility"
    ]
    assert ev["subgroup_gates"] == {
        "min_subgroup_sensitivity": 0.9,
        "max_subgroup_sensitivity_drop": None,
        "min_subgroup_positives": 7,
    }
    assert (ev["auc_ci95"], ev["subgroups"]) == (None, [])
    assert list(ev["calibration"]) == ["bins", "target", "reference"]
    assert ev["calibration"]["bins"] == 10
    for key, p in (("target", tgt), ("reference", ref)):
        brier = float(np.mean((p[:, 1] - y) ** 2))  # Brier score by hand
        assert ev["calibration"][key]["brier"] == pytest.approx(brier, rel=1e-12)
    assert ev["fragility"]["threshold"] == 0.5
    alone = evidence(y, tgt, None, 0.5, 1, None, GatesConfig())
    assert (alone["paired"], alone["calibration"]["reference"]) == (None, None)


@pytest.mark.parametrize(
    "gates",
    [{}, {"min_auc": 0.8}, {"decide_on": "ci"}, {"max_auc_drop": 0.1, "decide_on": "point"}],
    ids=["no-auc-gate", "auc-gate-on-the-point", "ci-without-auc-gate", "point-set"],
)
def test_auc_intervals_only_where_an_auc_gate_decides_on_them(gates: dict[str, Any]) -> None:
    y, ref, tgt = _paired_arrays(8, 2, 1, 1, (6, 1, 2, 1))
    assert evidence(y, tgt, ref, 0.5, 1, None, GatesConfig(**gates))["auc_ci95"] is None


def test_auc_intervals_of_the_target_and_of_the_drop() -> None:
    y, ref, tgt = _paired_arrays(8, 2, 1, 1, (6, 1, 2, 1))
    # distinct scores: the same decisions, AUCs that differ
    rng = np.random.default_rng(1)
    p = np.clip(tgt[:, 1] + rng.uniform(-0.05, 0.05, len(y)), 0, 1)
    r = np.clip(ref[:, 1] + rng.uniform(-0.05, 0.05, len(y)), 0, 1)
    gates = GatesConfig(max_auc_drop=0.1, decide_on="ci")
    got = evidence(y, _two(p), _two(r), 0.5, 1, None, gates)["auc_ci95"]
    assert got == {
        "target": auc_ci95(y == 1, p),
        "drop": auc_ci95(y == 1, p, r),
        "method": f"stratified percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed 0",
    }
    assert got["target"] != got["drop"] != auc_ci95(y == 1, r)
    alone = evidence(y, _two(p), None, 0.5, 1, None, GatesConfig(min_auc=0.5, decide_on="ci"))
    assert alone["auc_ci95"] == got | {"drop": None}
