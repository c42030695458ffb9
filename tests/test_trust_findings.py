"""A multi-label model judged as one binary model per finding (core.findings,
builder.stages.findings; issue 28), on hand-built labels and probabilities: every finding's
metrics recounted with numpy and scikit-learn at its own threshold, the summary finding picked by
hand (the lowest sensitivity, then the largest drop, then output order; never a finding without
positives), flips and the largest difference over every finding. In-process and fast, so
`make mutate` runs it against every mutant of both modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, recall_score, roc_auc_score

from packager.builder.stages.findings import by_finding, judge
from packager.core.config import Config, parse_config
from packager.core.data import Dataset
from packager.core.findings import Finding, binary, config_for, findings, named
from packager.core.target import Basis, Check

NAMES = ["a", "b", "c", "d"]
OWN = {"b": 0.3}  # b's own threshold; the others use 0.5
SITES = np.array(["x", "y"] * 6)


def config(labels: dict[str, Any] | None = None, **gates: Any) -> Config:
    labels = labels or {"task": "multilabel", "names": NAMES, "thresholds": OWN}
    table = {
        "min_sensitivity": 0.6,
        "max_sensitivity_drop": 0.1,
        "min_specificity": 0.5,
        "max_specificity_drop": 0.2,
        "min_subgroup_sensitivity": 0.5,
        "min_subgroup_positives": 1,
        **gates,
    }
    if labels.get("task") == "multilabel":
        table.setdefault("findings", {"b": {"min_sensitivity": 0.9}})
    data = {"labels": labels | {"threshold_rationale": "why"}, "gates": table}
    return parse_config(data | {"data": {"group_by": ["site"]}}, Path("."))


def dataset(labels: np.ndarray) -> Dataset:
    n = len(labels)
    return Dataset(np.zeros((n, 1, 1), np.uint8), labels, "test", "0" * 64, {"site": SITES[:n]})


def threshold(name: str) -> float:
    return OWN.get(name, 0.5)


# 12 cases. a and b: 4 positives each, 3 found (sensitivity 0.75); the reference finds 3 of a's
# (no drop) and all 4 of b's (a drop of 0.25). c: no positives. d: every positive found.
Y = np.array(
    [
        [1, 1, 0, 1],
        [1, 1, 0, 1],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
P = np.array(
    [
        [0.9, 0.8, 0.1, 0.9],
        [0.8, 0.7, 0.1, 0.8],
        [0.7, 0.4, 0.2, 0.1],
        [0.2, 0.25, 0.1, 0.1],  # a missed; b missed at 0.3
        [0.1, 0.1, 0.1, 0.7],
        [0.6, 0.1, 0.6, 0.1],  # a's and c's false positives
        [0.1, 0.35, 0.1, 0.1],  # b's false positive at 0.3 (negative at 0.5)
        [0.1, 0.1, 0.1, 0.2],
        [0.3, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.1],
        [0.1, 0.1, 0.2, 0.1],
        [0.1, 0.2, 0.1, 0.1],
    ]
)
R = P.copy()
R[3, 1] = 0.45  # the reference finds b's fourth positive
R[6, 1] = 0.25  # and does not flag case 6 for b: a flip at b's 0.3, none at 0.5
R[10, 2] = 0.9  # c (no positives) flips on case 10: the largest difference, 0.7
R[8, 0] = 0.3 + 2**-4  # a: a difference without a flip


def recount(y: np.ndarray, p: np.ndarray, thr: float) -> dict[str, Any]:
    """One finding as a binary model, by scikit-learn: NaN decides negative."""
    pred = np.nan_to_num(p, nan=0.0) >= thr
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    both = len(set(y.tolist())) == 2
    return {
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        "positives": tp + fn,
        "sensitivity": float(recall_score(y, pred, zero_division=0.0)),
        "specificity": tn / (tn + fp) if tn + fp else None,
        "auc": float(roc_auc_score(y, np.nan_to_num(p, nan=0.0))) if both else None,
    }


def summary_by_hand(sens: dict[str, float], drops: dict[str, float], pos: dict[str, int]) -> str:
    """The finding a sensitivity claim rests on, by plain loops over the findings."""
    best = None
    for n in NAMES:  # in output order: a tie keeps the earlier finding
        if pos[n] == 0 and any(pos.values()):
            continue
        if best is None or (sens[n], -drops[n]) < (sens[best], -drops[best]):
            best = n
    assert best is not None
    return best


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def test_findings_read_each_output_at_its_own_threshold() -> None:
    cfg = config()
    assert findings(cfg.labels) == [
        Finding("a", 0, 0.5),
        Finding("b", 1, 0.3),
        Finding("c", 2, 0.5),
        Finding("d", 3, 0.5),
    ]
    assert findings(config({"names": ["normal", "pneumonia"]}).labels) == []
    f = findings(cfg.labels)[1]
    p = np.array([[0.1, 0.25, 0.9, 0.0], [0.5, 1.0, 0.0, 0.5]], np.float32)
    out = binary(p, f)
    assert out.dtype == np.float64 and out.shape == (2, 2)
    assert out.tolist() == [[0.75, 0.25], [0.0, 1.0]]


def test_a_finding_is_configured_as_a_binary_model() -> None:
    cfg = config(custom={"kappa": {"min": 0.5}})
    b, a = findings(cfg.labels)[1], findings(cfg.labels)[0]
    fb, fa = config_for(cfg, b), config_for(cfg, a)
    lab = fb.labels
    assert (lab.task, lab.names, lab.positive) == ("binary", ["not b", "b"], "b")
    assert (lab.threshold, lab.output, lab.threshold_rationale) == (0.3, "probabilities", "why")
    assert lab.positive_index == 1 and lab.thresholds == {}
    assert (fb.gates.min_sensitivity, fa.gates.min_sensitivity) == (0.9, 0.6)
    for g in (fa.gates, fb.gates):
        assert (g.custom, g.classes, g.findings) == ({}, {}, {})
        assert (g.max_sensitivity_drop, g.min_specificity, g.min_subgroup_positives) == (
            0.1,
            0.5,
            1,
        )
    assert fb.data == cfg.data and fb.preprocess == cfg.preprocess
    assert cfg.gates.custom == {"kappa": {"min": 0.5}}  # the model's own config is untouched
    assert cfg.labels.task == "multilabel"
    line = Check("min_sensitivity", 0.5, 0.6, False, "why")
    assert named([line, Check("x", 1, 1, True)], b) == [
        Check("min_sensitivity[finding=b]", 0.5, 0.6, False, "why"),
        Check("x[finding=b]", 1, 1, True),
    ]


@pytest.mark.parametrize("with_reference", [True, False], ids=["reference", "no-reference"])
def test_every_finding_is_judged_as_a_binary_model(with_reference: bool) -> None:
    cfg, ds = config(), dataset(Y)
    ref = R if with_reference else None
    probs, clin, ev, gates, extra = judge(cfg, ds, P.copy(), "probabilities", ref)
    assert np.array_equal(probs, P.astype(np.float32).astype(np.float64))
    lines = by_name(gates)
    assert gates[0].name == "finite_outputs" and gates[0].passed
    assert sum(c.name.startswith("finite_outputs") for c in gates) == 1
    sens, drops, pos = {}, {}, {}
    for k, name in enumerate(NAMES):
        thr = threshold(name)
        want = recount(Y[:, k], probs[:, k], thr)
        got = extra["findings"][name]
        assert got["confusion"] == want["confusion"], name
        assert got["positives"] == want["positives"] and got["threshold"] == thr
        assert got["sensitivity"] == pytest.approx(want["sensitivity"], abs=1e-12)
        assert got["specificity"] == pytest.approx(want["specificity"], abs=1e-12)
        assert got["auc"] == (None if want["auc"] is None else pytest.approx(want["auc"]))
        sens[name], pos[name] = want["sensitivity"], want["positives"]
        drops[name] = 0.0
        if with_reference:
            ref_sens = recount(Y[:, k], R[:, k], thr)["sensitivity"]
            drops[name] = ref_sens - want["sensitivity"]
            assert got["sensitivity_drop"] == pytest.approx(drops[name], abs=1e-12)
        # the finding's evidence, on its own labels at its own threshold
        pairs = got["evidence"]["paired"]
        if with_reference:
            y, t, r = Y[:, k] == 1, probs[:, k] >= thr, R[:, k] >= thr
            assert pairs["positives"]["reference_right_target_wrong"] == int((y & r & ~t).sum())
            assert pairs["negatives"]["reference_right_target_wrong"] == int((~y & ~r & t).sum())
        else:
            assert pairs is None
        limit = 0.9 if name == "b" else 0.6
        line = lines[f"min_sensitivity[finding={name}]"]
        assert (line.limit, line.passed) == (limit, pos[name] > 0 and sens[name] >= limit)
        if pos[name]:
            assert line.value == pytest.approx(sens[name], abs=1e-6)
        spec = lines[f"min_specificity[finding={name}]"]
        assert spec.value == pytest.approx(want["specificity"], abs=1e-6)  # gate values: 6 places
        drop = lines.get(f"max_sensitivity_drop[finding={name}]")
        assert (drop is not None) == with_reference
        for site in ("x", "y"):  # the subgroup gates: the finding's positives at each site
            m = (site == SITES) & (Y[:, k] == 1)
            sub = lines.get(f"min_subgroup_sensitivity[site={site}][finding={name}]")
            if m.any():
                assert sub is not None and sub.value == pytest.approx((probs[m, k] >= thr).mean())
            else:
                assert sub is None or sub.value is None
    assert {c.name for c in gates} == {"finite_outputs"} | {
        n for n in lines if n.endswith(tuple(f"[finding={f}]" for f in NAMES))
    }
    worst = summary_by_hand(sens, drops, pos)
    assert worst == ("b" if with_reference else "a")  # c has sensitivity 0 and no positives
    assert extra["finding"] == worst
    assert clin.sensitivity == sens[worst] and clin.positives == pos[worst]
    assert ev == extra["findings"][worst]["evidence"]
    assert clin.finite is True
    if with_reference:
        flips = [
            i
            for i in range(len(Y))
            if any(
                (P[i, k] >= threshold(n)) != (R[i, k] >= threshold(n)) for k, n in enumerate(NAMES)
            )
        ]
        assert flips == [3, 6, 10]
        assert clin.flipped == flips
        assert clin.max_abs_diff == pytest.approx(np.abs(probs - R).max(), abs=1e-6)
        assert clin.max_abs_diff == pytest.approx(0.7, abs=1e-6)  # c's, not the summary's
    else:
        assert clin.flipped is None and clin.max_abs_diff is None


def test_the_summary_finding_breaks_ties_on_the_drop_then_output_order() -> None:
    """a and b: the same sensitivity and the same drop; the earlier output is the summary. Then
    b's drop made larger than a's: b."""
    ref = P.copy()
    ref[3, 0] = 0.9  # a's reference finds its fourth positive: drop 0.25, as b's
    ref[3, 1] = 0.45
    name, clin, *_ = by_finding(config(), dataset(Y), P, ref)
    assert (name, clin.sensitivity, clin.sensitivity_drop) == ("a", 0.75, 0.25)
    ref[3, 0] = 0.2  # a: no drop, b: 0.25
    name, clin, *_ = by_finding(config(), dataset(Y), P, ref)
    assert (name, clin.sensitivity_drop) == ("b", 0.25)


def test_findings_without_positives_are_never_the_summary_unless_all_are() -> None:
    y = Y.copy()
    y[:, 0] = 0  # a: no positives either, and the first output
    name, clin, *_ = by_finding(config(), dataset(y), P, None)
    assert name == "b" and clin.positives == 4
    name, clin, *_ = by_finding(config(), dataset(np.zeros_like(Y)), P, None)
    assert (name, clin.positives, clin.sensitivity) == ("a", 0, 0.0)


def test_a_non_finite_score_in_any_finding_fails_finite_outputs_once() -> None:
    p = P.copy()
    p[5, 3] = np.nan  # d, not the summary finding
    _, clin, _, gates, extra = judge(config(), dataset(Y), p, "probabilities", R)
    assert extra["finding"] == "b" and clin.finite is False
    assert extra["findings"]["b"]["finite"] is True and extra["findings"]["d"]["finite"] is False
    finite = [c for c in gates if c.name.startswith("finite_outputs")]
    assert [(c.name, c.passed) for c in finite] == [("finite_outputs", False)]
    assert extra["findings"]["d"]["confusion"] == recount(Y[:, 3], p[:, 3], 0.5)["confusion"]


def test_sigmoid_logits_become_each_findings_probability() -> None:
    logits = np.log(P / (1 - P))
    probs, clin, *_ = judge(config(), dataset(Y), logits, "sigmoid-logits", None)
    want = (1 / (1 + np.exp(-logits))).astype(np.float32).astype(np.float64)
    assert np.allclose(probs, want, atol=1e-12, rtol=0)
    assert clin.confusion == recount(Y[:, 0], want[:, 0], 0.5)["confusion"]


def test_a_ci_build_decides_each_findings_drop_on_its_paired_interval() -> None:
    """[gates] decide_on = "ci": every finding's drop lines carry the intervals of that
    finding's paired evidence (positives for sensitivity, negatives for specificity)."""
    _, _, _, gates, extra = judge(config(decide_on="ci"), dataset(Y), P, "probabilities", R)
    lines = by_name(gates)
    for name in NAMES:
        paired = extra["findings"][name]["evidence"]["paired"]
        line = lines[f"max_specificity_drop[finding={name}]"]
        assert line.ci95 == tuple(paired["negatives"]["drop_ci95"])
        assert line.decided_on == Basis.upper
        line = lines[f"max_sensitivity_drop[finding={name}]"]
        if extra["findings"][name]["positives"]:
            assert line.ci95 == tuple(paired["positives"]["drop_ci95"])
            assert line.decided_on == Basis.upper


def single_label() -> tuple[Config, Dataset, np.ndarray, np.ndarray]:
    y = Y[:, 1]
    p = np.stack([1 - P[:, 1], P[:, 1]], axis=1)
    r = np.stack([1 - R[:, 1], R[:, 1]], axis=1)
    cfg = config({"names": ["normal", "pneumonia"], "threshold": 0.3}, decide_on="ci")
    return cfg, dataset(y), p, r


def test_one_class_per_image_is_judged_on_the_positive_class() -> None:
    cfg, ds, p, r = single_label()
    probs, clin, ev, gates, extra = judge(cfg, ds, p, "probabilities", r)
    assert extra == {}
    assert np.array_equal(probs, p.astype(np.float32).astype(np.float64))
    want = recount(ds.labels, probs[:, 1], 0.3)
    assert clin.confusion == want["confusion"] and clin.sensitivity == want["sensitivity"]
    lines = by_name(gates)
    assert [c.name for c in gates] == [
        "finite_outputs",
        "min_sensitivity",
        "max_sensitivity_drop",
        "min_specificity",
        "max_specificity_drop",
        "min_subgroup_sensitivity[site=x]",
        "min_subgroup_sensitivity[site=y]",
    ]
    assert lines["min_specificity"].value == pytest.approx(want["specificity"])
    assert lines["max_sensitivity_drop"].ci95 == tuple(ev["paired"]["positives"]["drop_ci95"])
    assert lines["max_specificity_drop"].ci95 == tuple(ev["paired"]["negatives"]["drop_ci95"])
    y, t = ds.labels == 1, probs[:, 1] >= 0.3
    assert ev["paired"]["positives"]["reference_right_target_wrong"] == int(
        (y & (r[:, 1] >= 0.3) & ~t).sum()
    )
    for site in ("x", "y"):
        m = (site == SITES) & y
        assert lines[f"min_subgroup_sensitivity[site={site}]"].value == pytest.approx(t[m].mean())
    _, _, _, gates, _ = judge(cfg, ds, np.log(p), "logits", None)
    assert [c.name for c in gates][:3] == ["finite_outputs", "min_sensitivity", "min_specificity"]


def test_a_callers_evidence_is_used_for_every_finding() -> None:
    """A hospital passes its own evidence function: it is called once per finding, with the
    finding's config, labels, probabilities and reference, and its gate lines are named."""
    calls: list[tuple[str, list[int], list[float], list[float] | None]] = []

    def evidence(cfg: Config, ds: Dataset, p: np.ndarray, r: np.ndarray | None):
        calls.append(
            (
                cfg.labels.positive,
                ds.labels.tolist(),
                p[:, 1].tolist(),
                None if r is None else r[:, 1].tolist(),
            )
        )
        return {"paired": None, "mark": cfg.labels.positive}, [Check("site_gate", 1, 1, True)]

    _, _, ev, gates, extra = judge(config(), dataset(Y), P, "probabilities", R, evidence)
    assert [c[0] for c in calls] == NAMES
    for k, (_, labels, p, r) in enumerate(calls):
        assert labels == Y[:, k].tolist()
        assert p == P[:, k].astype(np.float32).astype(np.float64).tolist()
        assert r == R[:, k].tolist()
    assert ev == {"paired": None, "mark": extra["finding"]}
    assert [c.name for c in gates if c.name.startswith("site_gate")] == [
        f"site_gate[finding={n}]" for n in NAMES
    ]
