"""The sign-off evidence (packager/reports/evidence.py) against independent computations: plain counts,
scipy's binomial test for the exact McNemar p-value, statsmodels' Wilson interval, sklearn's
Brier score, a published paired interval, a simulation of the power claim; and a planted
subgroup failure of a real INT8 build on the real PneumoniaMNIST test split."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binom, binomtest
from sklearn.metrics import brier_score_loss
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from packager.core.config import GatesConfig
from packager.reports.evidence import detectable_drop, evidence, newcombe_paired
from packager.reports.report import signoff, summarize
from tests.conftest import Result, assert_user_error

INT8_TARGET = "edge-ort"  # static QDQ INT8 on ONNX Runtime: real quantization, a few seconds


def _arrays(n: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, reference and target probabilities (2 columns) with some real disagreement."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    ref = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, n), 0, 1)
    tgt = np.clip(ref + rng.normal(0, 0.04, n), 0, 1)
    two = lambda p: np.stack([1 - p, p], axis=1)  # noqa: E731
    return y, two(ref), two(tgt)


def test_paired_counts_mcnemar_and_interval_match_independent_computations() -> None:
    y, ref, tgt = _arrays()
    t = 0.5
    ev = evidence(y, tgt, ref, t, 1, None, GatesConfig())
    for cls, side in ((1, "positives"), (0, "negatives")):
        # Plain loop: right means the decision matches the truth.
        b = c = both = neither = 0
        for yi, r, p in zip(y, ref[:, 1], tgt[:, 1], strict=True):
            if yi != cls:
                continue
            rr, tr = (r >= t) == bool(yi), (p >= t) == bool(yi)
            b += rr and not tr
            c += tr and not rr
            both += rr and tr
            neither += not rr and not tr
        got = ev["paired"][side]
        assert (got["reference_right_target_wrong"], got["reference_wrong_target_right"]) == (b, c)
        assert (got["both_right"], got["both_wrong"]) == (both, neither)
        assert b + c > 0
        # Exact McNemar = two-sided binomial test of b out of b + c discordant pairs.
        assert got["mcnemar_p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12)
        lo, hi = got["drop_ci95"]
        assert lo < (b - c) / (b + c + both + neither) < hi
    drop = ev["paired"]["sensitivity_drop"]
    assert drop == pytest.approx((ref[y == 1, 1] >= t).mean() - (tgt[y == 1, 1] >= t).mean())


def test_newcombe_paired_interval_equals_the_published_example() -> None:
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8:
    # Cavo et al. 2012, table [[59, 6], [16, 80]]: -0.0621 (95% CI -0.1186 to -0.0046).
    lo, hi = newcombe_paired(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)
    # No discordant pair: still a real interval around 0, not [0, 0].
    lo, hi = newcombe_paired(386, 0, 0, 4)
    assert lo < 0 < hi


def test_detectable_drop_has_the_stated_power() -> None:
    n = 390  # the positives of the PneumoniaMNIST test split
    d = detectable_drop(n)
    assert d is not None and 0.01 < d < 0.03
    # Exact McNemar at 5% needs 6 one-sided discordant pairs: 2 * 0.5**6 < 0.05 < 2 * 0.5**5.
    assert binom.sf(5, n, d) == pytest.approx(0.80, abs=1e-6)
    # Simulated: a target that loses each positive with probability d, tested with statsmodels.
    rng = np.random.default_rng(1)
    hits = 0
    for lost in rng.binomial(n, d, 2000):
        table = np.array([[n - lost, lost], [0, 0]])
        hits += mcnemar(table, exact=True).pvalue < 0.05
    assert hits / 2000 == pytest.approx(0.80, abs=0.03)
    assert detectable_drop(5) is None  # too few positives for any significant result


def test_non_finite_probabilities_still_give_evidence() -> None:
    y, ref, tgt = _arrays(seed=5)
    tgt[:3], ref[3:5] = np.nan, np.inf  # a broken model (target or reference)
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())
    assert np.isfinite(ev["calibration"]["target"]["brier"])
    assert np.isfinite(ev["calibration"]["reference"]["ece"])


def _identical(n_pos: int, missed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of a target identical to the reference, missing `missed`."""
    y = np.r_[np.ones(n_pos, int), np.zeros(200, int)]
    p = np.r_[np.full(n_pos - missed, 0.9), np.full(missed, 0.1), np.full(200, 0.1)]
    return y, np.stack([1 - p, p], axis=1)


@pytest.mark.parametrize(
    ("n_pos", "missed", "drop_claim", "sens_claim"),
    [
        (390, 2, "too small to support it", "supported"),  # PneumoniaMNIST's test positives
        (390, 6, "too small to support it", "too small to support it"),  # 98.46% ≥ 98%
        (390, 9, "too small to support it", "the gate failed"),  # 97.69% < 98%
        (20000, 10, "supported", "supported"),
    ],
)
def test_claims_say_when_the_set_cannot_back_the_gate(
    n_pos: int, missed: int, drop_claim: str, sens_claim: str
) -> None:
    y, probs = _identical(n_pos, missed)
    claims = evidence(y, probs, probs, 0.5, 1, None, GatesConfig())["paired"]["claims"]
    got = {c["gate"]: c["text"] for c in claims}
    assert got["max_sensitivity_drop"].startswith(drop_claim), got
    assert got["min_sensitivity"].startswith(sens_claim), got
    lo = proportion_confint(n_pos - missed, n_pos, alpha=0.05, method="wilson")[0]
    assert (lo >= 0.98) == sens_claim.startswith("supported")


def test_calibration_equals_sklearn_brier_and_a_plain_ece() -> None:
    y, ref, tgt = _arrays(seed=2)
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["calibration"]
    for key, probs in (("target", tgt), ("reference", ref)):
        p = probs[:, 1]
        assert ev[key]["brier"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)
        assert ev[key]["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
        ece, edges = 0.0, np.linspace(0, 1, 11)
        for i in range(10):  # bins (lo, hi], the first one closed at 0
            m = (p > edges[i]) & (p <= edges[i + 1]) if i else (p <= edges[1])
            if m.any():
                ece += m.mean() * abs(y[m].mean() - p[m].mean())
        assert ev[key]["ece"] == pytest.approx(ece, rel=1e-9)
        assert sum(ev[key]["curve"]["count"]) == len(p)


def test_subgroups_and_fragility_match_direct_counts() -> None:
    y, ref, tgt = _arrays(seed=3)
    site = np.array(["A", "B", "C"])[np.arange(len(y)) % 3]
    site[:12] = "D"  # a small subgroup
    gates = GatesConfig(min_subgroup_sensitivity=0.5, min_subgroup_positives=20)
    t = 0.5
    ev = evidence(y, tgt, ref, t, 1, {"site": site}, gates)
    rows = {r["value"]: r for r in ev["subgroups"]}
    assert sorted(rows) == ["A", "B", "C", "D"]
    p, r = tgt[:, 1], ref[:, 1]
    for v, row in rows.items():
        m = site == v
        tp = int(((p >= t) & m & (y == 1)).sum())
        tn = int(((p < t) & m & (y == 0)).sum())
        pos, neg = int((m & (y == 1)).sum()), int((m & (y == 0)).sum())
        assert (row["n"], row["positives"], row["negatives"]) == (int(m.sum()), pos, neg)
        assert row["sensitivity"] == tp / pos and row["specificity"] == tn / neg
        ci = proportion_confint(tp, pos, alpha=0.05, method="wilson")
        assert row["sensitivity_ci95"] == pytest.approx(list(ci), abs=1e-9)
        ci = proportion_confint(tn, neg, alpha=0.05, method="wilson")
        assert row["specificity_ci95"] == pytest.approx(list(ci), abs=1e-9)
        assert row["flips"] == int((m & ((p >= t) != (r >= t))).sum())
        assert row["new_misses"] == int((m & (y == 1) & (r >= t) & (p < t)).sum())
    assert rows["D"]["positives"] < 20 and rows["D"]["verdict"] == "too small to judge"
    assert rows["D"]["gates"] == []
    assert all(rows[v]["verdict"] == "passed" for v in "ABC")
    for m in ev["fragility"]["margins"]:
        w = m["margin"]
        assert m["positives_within"] == sum(
            1 for yi, pi in zip(y, p, strict=True) if yi and abs(pi - t) <= w
        )
        assert m["negatives_within"] == int(((y == 0) & (np.abs(p - t) <= w)).sum())
        assert m["sensitivity_minus"] == (p[y == 1] >= t - w).mean()
        assert m["specificity_plus"] == (p[y == 0] < t + w).mean()
    # A too-small subgroup is listed on the sign-off as not validated, never counted as passed.
    report = {"clinical": {"evidence": ev}, "gates": {"checks": []}, "validation": {}}
    missing = signoff(report, summarize(report))["not_validated"]
    assert any("site=D" in x and "too small to judge" in x for x in missing)


def test_selftest_tolerance_reaching_a_margin_is_stated() -> None:
    y, ref, tgt = _arrays(seed=4)
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())
    within = ev["fragility"]["margins"][1]  # ±0.02
    report = {"clinical": {"evidence": ev}, "validation": {}, "selftest": {"tolerance": 0.03}}
    reach = signoff(report, summarize(report))["reach"]
    assert reach["reaches"] == 0.02
    assert reach["cases"] == within["positives_within"] + within["negatives_within"] > 0
    report["selftest"] = {"tolerance": 0.001}
    assert signoff(report, summarize(report))["reach"]["reaches"] is None
    # With the arrays at hand, the cases within the tolerance itself are counted.
    report["selftest"] = {"tolerance": 0.015}
    p = tgt[:, 1]
    reach = signoff(report, summarize(report), (y == 1, p))["reach"]
    close = np.abs(p - 0.5) <= 0.015
    assert reach["within_tolerance"] == {
        "positives": int((close & (y == 1)).sum()),
        "negatives": int((close & (y == 0)).sum()),
    }
    assert reach["reaches"] == 0.01
    # A self-test that did not run is named as such on the sign-off.
    report["selftest"] = {"status": "not-run", "reason": "no runtime here"}
    missing = signoff(report, summarize(report))["not_validated"]
    assert any("the self-test did not run (no runtime here)" in x for x in missing)


# ---- a planted subgroup failure on a real INT8 build ---------------------------------------


def _build(cli: Callable[..., Result], cwd: Path) -> tuple[Result, dict]:
    r = cli("build", "--target", INT8_TARGET, "--int8", "--no-bench", "--force", "--json", cwd=cwd)
    assert r.code in (0, 1), r.stderr
    return r, r.json


def _bundle(cwd: Path, failed: bool) -> Path:
    return cwd / "dist" / (".failed/" if failed else "") / "tiny-1.0.0" / INT8_TARGET


@pytest.mark.slow
def test_planted_subgroup_failure_fails_the_build_naming_the_subgroup(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    """INT8 loses a positive the reference caught; those losses are put into subgroup site=B
    with 19 positives both caught, so site=B drops 5 points while the whole set drops < 0.5."""
    cwd = project()
    r, _ = _build(cli, cwd)
    with np.load(_bundle(cwd, failed=r.code == 1) / "validation.npz") as z:
        labels, p, ref = z["labels"], z["probs"][:, 1], z["reference"][:, 1]
    y = labels == 1
    # The operating point where INT8 loses a positive yet passes the overall gates.
    chosen = None
    for t in np.round(np.arange(0.1, 0.9, 0.05), 2):
        lost = np.flatnonzero(y & (ref >= t) & (p < t))
        drop = (ref[y] >= t).mean() - (p[y] >= t).mean()
        if len(lost) and drop < 0.005 and (p[y] >= t).mean() >= 0.98:
            chosen = float(t), lost
            break
    if chosen is None:
        pytest.skip(f"{INT8_TARGET} INT8 on this CPU loses no positive at any threshold")
    t, lost = chosen
    both = np.flatnonzero(y & (ref >= t) & (p >= t))
    negatives = np.flatnonzero(~y)
    site = np.full(len(y), "A", dtype=object)
    site[lost] = "B"
    site[both[: 19 * len(lost)]] = "B"
    site[negatives[:20]] = "B"
    site[both[-5:]] = "C"  # 5 positives: too small to judge
    site[negatives[-5:]] = "C"
    (cwd / "site.csv").write_text("site\n" + "\n".join(site) + "\n")
    toml = (cwd / "packager.toml").read_text().replace("threshold = 0.2", f"threshold = {t}")
    toml += '[data.groups]\nsite = "site.csv"\n[gates]\nmin_subgroup_sensitivity = 0.97\n'
    (cwd / "packager.toml").write_text(toml)
    r, out = _build(cli, cwd)
    assert r.code == 1, r.stderr
    reason = out["results"][0]["reason"]
    assert "\n" not in reason and "min_subgroup_sensitivity[site=B]" in reason, reason
    assert "site=A" not in reason and "min_sensitivity =" not in reason
    bundle = _bundle(cwd, failed=True)
    report = json.loads((bundle / "report.json").read_text())
    with np.load(bundle / "validation.npz") as z:
        p2 = z["probs"][:, 1]
    assert np.array_equal(p2 >= t, p >= t)  # the same INT8 decisions as the first build
    b = site == "B"
    sens_b, ref_b = (p2[y & b] >= t).mean(), (ref[y & b] >= t).mean()
    overall_drop = (ref[y] >= t).mean() - (p2[y] >= t).mean()
    rows = {row["value"]: row for row in report["clinical"]["evidence"]["subgroups"]}
    assert rows["B"]["sensitivity"] == sens_b and rows["B"]["positives"] == 20 * len(lost)
    assert rows["B"]["sensitivity_drop"] == pytest.approx(ref_b - sens_b)
    assert ref_b - sens_b >= 0.05 - 1e-12 and overall_drop < 0.005
    assert rows["B"]["verdict"] == "failed" and rows["A"]["verdict"] == "passed"
    assert rows["C"]["verdict"] == "too small to judge" and rows["C"]["positives"] == 5
    md = (bundle / "report.md").read_text()
    assert "subgroup site=C: 5 positives, fewer than 20: too small to judge" in md
    # `compare` shows the calibration change against the reference (Brier recomputed here).
    cmp = cli("compare", bundle, "--format", "json", cwd=cwd)
    assert cmp.code == 0, cmp.stderr
    row = cmp.json["rows"][0]
    y2 = labels == 1
    change = np.mean((p2 - y2) ** 2) - np.mean((ref - y2) ** 2)
    assert row["brier_change"] == pytest.approx(change, abs=1e-6)
    text = cli("compare", bundle, cwd=cwd).stdout
    shown = f"{change:+.4f}".replace("+", "\\+")  # Markdown-escaped
    assert "Brier \\(change vs reference\\)" in text and f"{shown} vs reference" in text
    print(
        f"\nplanted: threshold {t}, site=B sensitivity {100 * sens_b:.2f}% vs reference "
        f"{100 * ref_b:.2f}% ({100 * (ref_b - sens_b):.2f} pts); whole set drop "
        f"{100 * overall_drop:.2f} pts; reason: {reason}"
    )


def test_group_file_of_the_wrong_length_is_a_user_error(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    cwd = project('[data.groups]\nsite = "site.csv"\n')
    (cwd / "site.csv").write_text("A\nB\n")
    r = cli("build", "--target", "cpu-onnxruntime", "--no-bench", cwd=cwd)
    assert_user_error(r, "site.csv", "2 labels for 624 images")
    assert not (cwd / "dist" / "tiny-1.0.0").exists()


def test_identifier_like_group_is_refused(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    cwd = project('[data.groups]\npatient = "ids.npy"\n')
    np.save(cwd / "ids.npy", np.arange(624))
    r = cli("build", "--target", "cpu-onnxruntime", "--no-bench", cwd=cwd)
    assert_user_error(r, "624 distinct values", "not identifiers")


def test_validate_recomputes_the_evidence_and_says_when_subgroups_cannot_be_rerun(
    project: Callable[..., Path], cli: Callable[..., Result], data_path: Path
) -> None:
    cwd = project('[data.groups]\nsite = "site.txt"\n[gates]\nmin_subgroup_sensitivity = 0.9\n')
    (cwd / "site.txt").write_text("\n".join("AB"[i % 2] for i in range(624)) + "\n")
    assert cli("build", "-t", "cpu-onnxruntime", "--no-bench", cwd=cwd).code == 0
    bundle = cwd / "dist/tiny-1.0.0/cpu-onnxruntime"
    r = cli("validate", bundle, "--data", data_path, "--json", cwd=cwd)
    assert r.code == 0, r.stderr
    names = [c["name"] for c in r.json["gates"]["checks"]]
    assert names.count("min_subgroup_sensitivity[site=A]") == 1  # re-run here, not kept twice
    # The group file is not at hand on the re-validating host: its gates are not re-run, and
    # the sign-off says so instead of keeping the build host's verdicts.
    (cwd / "site.txt").unlink()
    r = cli("validate", bundle, "--data", data_path, "--json", cwd=cwd)
    assert r.code == 0, r.stderr
    assert not any("subgroup" in c["name"] for c in r.json["gates"]["checks"])
    ev = r.json["clinical"]["evidence"]
    assert ev["subgroups"] == [] and "site.txt" in ev["subgroups_not_run"]
    assert ev["paired"]["positives"]["reference_right_target_wrong"] == 0
    md = (bundle / "report.md").read_text()
    assert "subgroups and their gates: not re-run by packager validate" in md
