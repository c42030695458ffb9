"""Verdict semantics (issue 25 items 3 and 4): each gate is `pass`, `fail`, `insufficient
evidence` or `undefined`, decided on the point estimate or, with [gates] decide_on = "ci", on
its 95% bound; and per-class gates for multi-class models. Every number is recounted here
independently: counts in numpy loops, Wilson intervals from statsmodels' proportion_confint,
Newcombe's paired interval from the paper's formulas (tests/test_trust_evidence.py), the AUC
interval from a bootstrap loop over scikit-learn's roc_auc_score."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from packager.builder.state import ValidationInfo, gates_passed, verdict
from packager.core.config import GatesConfig, parse_config
from packager.core.errors import UserError
from packager.core.gates import metric_gates
from packager.core.metrics import auc_ci95, clinical
from packager.core.schema import from_dict
from packager.core.status import GateVerdict, ReportStatus
from packager.core.target import Check
from packager.reports.evidence import evidence, evidence_checks
from packager.runtime.validate import gate_checks
from tests.conftest import Result, assert_user_error, bundle_dir
from tests.test_trust_evidence import newcombe_reference

THRESHOLD = 0.5


def two(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


def wilson(k: int, n: int) -> tuple[float, float]:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def gates(**values: Any) -> GatesConfig:
    return from_dict(GatesConfig, values, "gates")


def checks_of(
    y: np.ndarray, tgt: np.ndarray, ref: np.ndarray | None, g: GatesConfig
) -> dict[str, Check]:
    """Every gate line a build writes for these arrays (binary, positive class 1)."""
    probs = two(tgt)
    refp = None if ref is None else two(ref)
    c = clinical(probs, y, 1, THRESHOLD, refp, ["normal", "pneumonia"])
    ev = evidence(y, probs, refp, THRESHOLD, 1, None, g)
    cfg = parse_config({}, Path.cwd())
    cfg.gates = g
    lines = gate_checks(c, cfg, ref is not None, ev["paired"]) + metric_gates(c, ev, g)
    return {x.name: x for x in lines}


# 20 negatives: 19 right (specificity 0.95); 10 positives, all found.
Y20 = np.array([0] * 20 + [1] * 10)
T20 = np.array([0.1] * 19 + [0.9] + [0.9] * 10)


@pytest.mark.parametrize(
    ("limit", "decide_on", "want"),
    [
        ("lo", "ci", "pass"),  # the lower bound exactly at the limit
        ("lo+", "ci", "insufficient evidence"),  # the bound just below, the point above
        (0.95, "ci", "insufficient evidence"),  # the point exactly at the limit
        (0.95, "point", "pass"),
        ("lo+", "point", "pass"),
        (0.9501, "ci", "fail"),
        (0.9501, "point", "fail"),
    ],
)
def test_min_specificity_decides_on_its_wilson_lower_bound(
    limit: Any, decide_on: str, want: str
) -> None:
    tn = sum(1 for yi, p in zip(Y20, T20, strict=True) if yi == 0 and p < THRESHOLD)
    n_neg = sum(1 for yi in Y20 if yi == 0)
    lo, hi = wilson(tn, n_neg)
    value = {"lo": lo, "lo+": lo + 1e-9}.get(limit, limit)
    got = checks_of(Y20, T20, None, gates(min_specificity=value, decide_on=decide_on))
    check = got["min_specificity"]
    assert check.value == pytest.approx(tn / n_neg, abs=1e-6) and tn / n_neg == 0.95
    assert check.ci95 == pytest.approx((lo, hi), abs=1e-12)
    assert check.verdict == want, check
    assert check.passed is (want == "pass")
    assert check.decided_on == ("95% lower bound" if decide_on == "ci" else "point")


def test_min_sensitivity_decides_on_its_wilson_lower_bound() -> None:
    """386 of 390 positives found (0.9897): the point clears 0.98, Wilson's lower bound
    (0.974) does not."""
    y = np.array([1] * 390 + [0] * 10)
    p = np.array([0.9] * 386 + [0.1] * 4 + [0.1] * 10)
    tp = sum(1 for yi, pi in zip(y, p, strict=True) if yi == 1 and pi >= THRESHOLD)
    lo, hi = wilson(tp, 390)
    assert lo < 0.98 <= tp / 390
    point = checks_of(y, p, None, gates(decide_on="point"))["min_sensitivity"]
    ci = checks_of(y, p, None, gates(decide_on="ci"))["min_sensitivity"]
    assert point.verdict == "pass" and point.ci95 == pytest.approx((lo, hi), abs=1e-12)
    assert ci.verdict == "insufficient evidence" and not ci.passed
    assert ci.decided_on == "95% lower bound" and f"{lo:.4g}" in ci.reason
    at = checks_of(y, p, None, gates(decide_on="ci", min_sensitivity=lo))["min_sensitivity"]
    assert at.verdict == "pass"


def paired_arrays(
    n11: int, n12: int, n21: int, n22: int, positives: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cases of one class with the paired table (reference right/wrong x target right/wrong),
    plus 5 cases of the other class both get right."""
    cls = 1 if positives else 0
    right, wrong = (0.9, 0.1) if positives else (0.1, 0.9)
    ref = [right] * (n11 + n12) + [wrong] * (n21 + n22)
    tgt = [right] * n11 + [wrong] * n12 + [right] * n21 + [wrong] * n22
    other = [1 - right] * 5
    y = np.array([cls] * len(ref) + [1 - cls] * 5)
    return y, np.array(tgt + other), np.array(ref + other)


def table_of(y: np.ndarray, tgt: np.ndarray, ref: np.ndarray, cls: int) -> list[int]:
    """The paired table (a, b, c, d) of class `cls`, counted one case at a time."""
    counts = [0, 0, 0, 0]
    for yi, t, r in zip(y, tgt, ref, strict=True):
        if yi != cls:
            continue
        ref_right, tgt_right = (r >= THRESHOLD) == bool(cls), (t >= THRESHOLD) == bool(cls)
        counts[(0 if ref_right else 2) + (0 if tgt_right else 1)] += 1
    return counts


@pytest.mark.parametrize("gate", ["max_specificity_drop", "max_sensitivity_drop"])
@pytest.mark.parametrize(
    ("limit", "want"),
    [
        ("hi", "pass"),  # the upper bound exactly at the limit
        ("hi-", "insufficient evidence"),  # the bound just above, the point within
        ("point", "insufficient evidence"),  # the point exactly at the limit
        ("point-", "fail"),
    ],
)
def test_drop_gates_decide_on_newcombes_paired_upper_bound(
    gate: str, limit: str, want: str
) -> None:
    """50 cases of the class: 3 the reference gets right and the target wrong, 1 the other way
    (a drop of 2/50 = 0.04)."""
    positives = gate == "max_sensitivity_drop"
    y, tgt, ref = paired_arrays(44, 3, 1, 2, positives)
    a, b, c, d = table_of(y, tgt, ref, 1 if positives else 0)
    assert (a, b, c, d) == (44, 3, 1, 2)
    drop = (b - c) / (a + b + c + d)
    lo, hi = newcombe_reference(a, b, c, d)
    value = {"hi": hi, "hi-": hi - 1e-9, "point": drop, "point-": drop - 1e-6}[limit]
    g = gates(decide_on="ci", min_sensitivity=0.0, **{gate: value})
    check = checks_of(y, tgt, ref, g)[gate]
    assert check.value == pytest.approx(drop, abs=1e-6)
    assert check.ci95 == pytest.approx((lo, hi), abs=1e-12)
    assert check.decided_on == "95% upper bound"
    assert check.verdict == want, check


def test_flip_rate_decides_on_its_wilson_upper_bound() -> None:
    y, tgt, ref = paired_arrays(44, 3, 1, 2, positives=False)
    flips = sum(1 for t, r in zip(tgt, ref, strict=True) if (t >= THRESHOLD) != (r >= THRESHOLD))
    lo, hi = wilson(flips, len(y))
    for limit, want in [(hi, "pass"), (hi - 1e-9, "insufficient evidence"), (0.05, "fail")]:
        check = checks_of(y, tgt, ref, gates(decide_on="ci", max_flip_rate=limit))["max_flip_rate"]
        assert check.value == pytest.approx(flips / len(y), abs=1e-6)
        assert check.ci95 == pytest.approx((lo, hi), abs=1e-12)
        assert check.verdict == want, (limit, check)


def pair_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The AUC by its definition, over the last axis: the share of (positive, negative) pairs
    the score orders right, a tie counting half."""
    p, n = pos[..., :, None], neg[..., None, :]
    return ((p > n) + 0.5 * (p == n)).mean(axis=(-2, -1))


def bootstrap_pairs(
    y: np.ndarray, s: np.ndarray, ref: np.ndarray | None, n: int = 2000, seed: int = 7
) -> tuple[float, float]:
    """Percentile 95% interval of the AUC (or reference-minus-target AUC on the same images),
    resampling positives and negatives separately; each resample's AUC counted pair by pair
    (pair_auc, which equals scikit-learn's on the arrays themselves)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    for v in (s, ref):
        if v is not None:
            assert pair_auc(v[pos], v[neg]) == pytest.approx(roc_auc_score(y, v), abs=1e-12)
    ip, ineg = rng.choice(pos, (n, len(pos))), rng.choice(neg, (n, len(neg)))
    stats = pair_auc(s[ip], s[ineg])
    if ref is not None:
        stats = pair_auc(ref[ip], ref[ineg]) - stats
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def test_auc_intervals_equal_a_bootstrap_loop_over_scikit_learn() -> None:
    """The stratified bootstrap of the AUC and of the paired AUC drop against a plain count with
    another seed: equal to within Monte Carlo error (about 0.002 here); an unpaired drop
    interval would be about twice as wide, a wrong sign on the other side of zero."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60, bool), np.zeros(40, bool)]
    ref = np.clip(np.where(y, 0.65, 0.35) + rng.normal(0, 0.2, 100), 0, 1)
    tgt = np.clip(ref + rng.normal(0, 0.08, 100), 0, 1)
    ci = auc_ci95(y, tgt)
    assert ci == pytest.approx(bootstrap_pairs(y, tgt, None), abs=0.008)
    drop = auc_ci95(y, tgt, ref)
    assert drop == pytest.approx(bootstrap_pairs(y, tgt, ref), abs=0.008)
    ev = evidence(
        y.astype(int), two(tgt), two(ref), THRESHOLD, 1, None, gates(min_auc=0.5, decide_on="ci")
    )
    assert ev["auc_ci95"]["target"] == pytest.approx(ci, abs=1e-12)
    c = clinical(two(tgt), y.astype(int), 1, THRESHOLD, two(ref))
    g = gates(decide_on="ci", min_auc=ci[0], max_auc_drop=drop[1] - 1e-9)
    got = {
        x.name: x
        for x in metric_gates(
            c, evidence(y.astype(int), two(tgt), two(ref), THRESHOLD, 1, None, g), g
        )
    }
    assert got["min_auc"].verdict == "pass" and got["min_auc"].decided_on == "95% lower bound"
    assert got["max_auc_drop"].value == pytest.approx(
        roc_auc_score(y, ref) - roc_auc_score(y, tgt), abs=1e-6
    )
    assert got["max_auc_drop"].verdict == (
        "insufficient evidence" if got["max_auc_drop"].value <= drop[1] - 1e-9 else "fail"
    )


def test_a_metric_without_an_interval_says_it_decided_on_the_point() -> None:
    y, tgt, ref = paired_arrays(44, 3, 1, 2, positives=True)
    g = gates(decide_on="ci", prevalence=0.1, min_ppv=0.0, max_ece_increase=1.0)
    got = checks_of(y, tgt, ref, g)
    for name in ("min_ppv", "max_ece_increase"):
        assert got[name].decided_on == "point" and got[name].ci95 is None
        assert "no 95% interval" in got[name].reason and got[name].verdict == "pass"


@pytest.mark.parametrize("decide_on", ["point", "ci"])
def test_an_empty_denominator_is_undefined_and_fails_closed(decide_on: str) -> None:
    y = np.zeros(8, int)
    p = np.full(8, 0.1)
    got = checks_of(y, p, p, gates(decide_on=decide_on, min_sensitivity=0.0))
    for name in ("min_sensitivity", "max_sensitivity_drop"):
        assert got[name].verdict == "undefined" and not got[name].passed, got[name]
        assert got[name].value is None


def test_insufficient_evidence_and_undefined_fail_the_build_naming_the_gate() -> None:
    """Only `pass` passes: a build whose one gate has insufficient evidence (or is undefined)
    fails, and its reason names the gate and the verdict."""
    ok = Check("min_sensitivity", 1.0, 0.98, True)
    for word in (GateVerdict.insufficient, GateVerdict.undefined):
        weak = Check("max_specificity_drop", 0.017, 0.02, True, "the bound", verdict=word)
        assert weak.passed is False and weak.to_dict()["passed"] is False
        status, reason = verdict([ok, weak], ValidationInfo({"runtime": "x"}))
        assert status == ReportStatus.failed and not gates_passed([ok, weak])
        assert reason.startswith("gate failed: max_specificity_drop")
        assert (word == GateVerdict.insufficient) == ("insufficient evidence" in reason)
    assert verdict([ok], ValidationInfo({"runtime": "x"}))[0] == ReportStatus.passed


def test_subgroup_gates_decide_on_the_subgroups_own_intervals() -> None:
    """Site A: 30 positives, the target misses 2 the reference finds (drop 2/30); site B is
    perfect. Decided on Wilson's lower bound of A's sensitivity and Newcombe's paired upper
    bound of its drop."""
    y = np.array(([1] * 30 + [0] * 10) * 2)
    site = np.array(["A"] * 40 + ["B"] * 40)
    ref = np.where(y == 1, 0.9, 0.1).astype(float)
    tgt = ref.copy()
    tgt[:2] = 0.1
    g = gates(
        decide_on="ci",
        min_subgroup_sensitivity=0.9,
        max_subgroup_sensitivity_drop=0.5,
        min_subgroup_positives=10,
    )
    lines = {
        c.name: c
        for c in evidence_checks(evidence(y, two(tgt), two(ref), THRESHOLD, 1, {"site": site}, g))
    }
    a = y[:40] == 1
    tp = sum(1 for i in range(40) if a[i] and tgt[i] >= THRESHOLD)
    sens = lines["min_subgroup_sensitivity[site=A]"]
    assert sens.ci95 == pytest.approx(wilson(tp, 30), abs=1e-12)
    assert sens.verdict == "insufficient evidence"  # 28/30 = 0.933, lower bound 0.79
    drop = lines["max_subgroup_sensitivity_drop[site=A]"]
    assert drop.ci95 == pytest.approx(newcombe_reference(28, 2, 0, 0), abs=1e-12)
    assert drop.verdict == "pass" and drop.value == pytest.approx(2 / 30, abs=1e-6)


# ---- multi-class -----------------------------------------------------------------------

NAMES = ["normal", "pneumonia", "bright-normal"]


def three_class(n: int = 90, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def predicted_by_hand(probs: np.ndarray, positive: int, threshold: float) -> list[int]:
    """The bundle's decision per image: the positive class at p(positive) >= threshold, else
    the most probable other class."""
    out = []
    for row in probs:
        if row[positive] >= threshold:
            out.append(positive)
            continue
        others = [(p, k) for k, p in enumerate(row) if k != positive]
        out.append(max(others)[1])
    return out


def test_class_gates_equal_a_numpy_recount() -> None:
    y, probs = three_class()
    pred = predicted_by_hand(probs, 1, 0.4)
    c = clinical(probs, y, 1, 0.4, None, NAMES)
    for k, name in enumerate(NAMES):
        tp = sum(1 for t, p in zip(y, pred, strict=True) if t == k and p == k)
        npos = sum(1 for t in y if t == k)
        tn = sum(1 for t, p in zip(y, pred, strict=True) if t != k and p != k)
        nneg = len(y) - npos
        for decide_on in ("point", "ci"):
            g = gates(
                decide_on=decide_on,
                classes={name: {"min_sensitivity": tp / npos, "min_specificity": tn / nneg}},
            )
            got = {x.name: x for x in metric_gates(c, None, g)}
            sens, spec = (
                got[f"min_sensitivity[class={name}]"],
                got[f"min_specificity[class={name}]"],
            )
            assert sens.value == pytest.approx(tp / npos, abs=1e-6)
            assert spec.value == pytest.approx(tn / nneg, abs=1e-6)
            assert sens.ci95 == pytest.approx(wilson(tp, npos), abs=1e-12)
            assert spec.ci95 == pytest.approx(wilson(tn, nneg), abs=1e-12)
            # at the limit: a pass on the point, never on the bound below it
            want = "pass" if decide_on == "point" else "insufficient evidence"
            assert sens.verdict == want and spec.verdict == want
    # the positive class's own numbers equal the clinical ones
    assert c.classes["pneumonia"] == c.confusion


def test_a_class_gate_failure_names_the_class_and_gate_in_one_line() -> None:
    y, probs = three_class()
    c = clinical(probs, y, 1, 0.4, None, NAMES)
    g = gates(classes={"bright-normal": {"min_sensitivity": 0.99}})
    got = metric_gates(c, None, g)
    status, reason = verdict(got, ValidationInfo({"runtime": "x"}))
    assert status == ReportStatus.failed and "\n" not in reason
    assert re.match(
        r"gate failed: min_sensitivity\[class=bright-normal\] = 0\.\d+ \(limit 0\.99\)$", reason
    ), reason


def test_an_unknown_class_is_a_config_error() -> None:
    with pytest.raises(UserError, match=r"\[gates\.classes\.pneumnia\] names no class"):
        parse_config({"gates": {"classes": {"pneumnia": {"min_sensitivity": 0.9}}}}, Path.cwd())
    with pytest.raises(UserError, match="unknown key 'min_sens'"):
        parse_config({"gates": {"classes": {"normal": {"min_sens": 0.9}}}}, Path.cwd())
    with pytest.raises(UserError, match="gates.classes.normal.min_specificity is a fraction"):
        parse_config({"gates": {"classes": {"normal": {"min_specificity": 90}}}}, Path.cwd())


def test_an_unknown_class_exits_2_before_any_work(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project("[gates.classes.pneumnia]\nmin_sensitivity = 0.9\n")
    r = cli("build", "-t", "cpu-onnxruntime", "--no-bench", cwd=root)
    assert_user_error(r, "gates.classes.pneumnia", "names no class", "pneumonia")
    assert not (root / "dist").exists()


def test_site_acceptance_decides_on_bounds_unless_the_bundle_says_point() -> None:
    from packager.hospital.site_gates import site_gates

    clin = clinical(two(np.array([0.9, 0.1])), np.array([1, 0]), 1, THRESHOLD)
    build = {"positives": 390, "reference_sensitivity": None}
    default = site_gates(clin, parse_config({}, Path.cwd()), build, grouped=False)[0][1]
    assert default["verdict"] == "insufficient evidence"
    assert default["decided_on"] == "95% lower bound"
    assert default["ci95"] == pytest.approx(wilson(1, 1), abs=1e-12)
    point = parse_config({"gates": {"decide_on": "point"}}, Path.cwd())
    on_point = site_gates(clin, point, build, grouped=False)[0][1]
    assert on_point["verdict"] == "pass" and on_point["decided_on"] == "point"


# ---- a real build --------------------------------------------------------------------------


def signoff_row(html: str, gate: str) -> str:
    signoff = html[html.index('id="signoff"') :]
    return next(r for r in signoff.split("<tr>") if r.startswith(f"<td>{gate}</td>"))


def test_a_build_deciding_on_bounds_fails_with_insufficient_evidence(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    """The tiny model finds ~99% of 390 positives: its point clears min_sensitivity 0.98, its
    Wilson lower bound does not; and the reference target has no discordant pair, so the paired
    drop interval still reaches ~0.98 pts, above 0.005. With decide_on = "ci" both are
    insufficient evidence: the build fails naming them, report.json records each verdict, basis
    and interval (recounted here), and the sign-off page shows no green badge for them."""
    root = project('[gates]\ndecide_on = "ci"\n')
    r = cli("build", "-t", "cpu-onnxruntime", "--no-bench", "-q", cwd=root)
    assert r.code == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "min_sensitivity" in last and "insufficient evidence" in last, last
    bundle = bundle_dir(root, "cpu-onnxruntime")
    report = json.loads((bundle / "report.json").read_text())
    assert report["status"] == "failed"
    with np.load(bundle / "validation.npz") as v:
        y, p, ref = v["labels"] == 1, v["probs"][:, 1] >= 0.2, v["reference"][:, 1] >= 0.2
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    tp, npos = int((p & y).sum()), int(y.sum())
    lo, _ = wilson(tp, npos)
    sens = checks["min_sensitivity"]
    assert sens["value"] == pytest.approx(tp / npos, abs=1e-6)
    assert sens["ci95"] == pytest.approx(wilson(tp, npos), abs=1e-12)
    assert tp / npos >= 0.98 > lo, "the tiny model should clear the point and miss the bound"
    assert (sens["verdict"], sens["decided_on"]) == ("insufficient evidence", "95% lower bound")
    a = int((y & ref & p).sum())
    b, c = int((y & ref & ~p).sum()), int((y & ~ref & p).sum())
    d = int((y & ~ref & ~p).sum())
    drop = checks["max_sensitivity_drop"]
    assert drop["ci95"] == pytest.approx(newcombe_reference(a, b, c, d), abs=1e-12)
    assert drop["verdict"] == "insufficient evidence" and drop["decided_on"] == "95% upper bound"
    assert checks["finite_outputs"]["verdict"] == "pass"
    html = (bundle / "report.html").read_text()
    for gate in ("min_sensitivity", "max_sensitivity_drop"):
        row = signoff_row(html, gate)
        assert "95% " in row and "insufficient evidence" in row, row
        assert "badge passed" not in row and "badge failed" in row, row
    assert "badge passed" in signoff_row(html, "finite_outputs")


@pytest.mark.parametrize(
    ("hits", "n", "counts"),
    [(1, 1, "1/1 positives: 1 positive"), (2, 2, "2/2 positives: 2 positives")],
)
def test_a_site_too_small_to_show_it_says_how_many(hits: int, n: int, counts: str) -> None:
    """Site acceptance on one positive image: Wilson's lower bound (statsmodels) is under the
    gate, so the verdict is insufficient evidence, and the reason counts the images in words."""
    from statsmodels.stats.proportion import proportion_confint

    from packager.hospital.site_gates import min_rate

    got = min_rate("min_sensitivity", hits, n, 0.98, "sensitivity", "positives")
    lo = proportion_confint(hits, n, alpha=0.05, method="wilson")[0]
    assert got["verdict"] == "insufficient evidence" and got["ci95"][0] == pytest.approx(lo)
    assert got["reason"].endswith(f"({counts} cannot show it)"), got["reason"]
