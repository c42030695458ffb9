"""Every clinical metric gateable (packager/core/gates.py): each gate against an independent count
(numpy, scipy, scikit-learn), its boundary (at the limit passes, one case past it fails), an
undefined metric failing closed, a real build failed by a gate that names it, and a custom
metric from a real entry point gating a build."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_auc_score

from packager.core.config import GatesConfig
from packager.core.errors import UserError
from packager.core.gates import metric_gates
from packager.core.metrics import clinical
from packager.core.schema import from_dict
from packager.reports.evidence import evidence
from tests.conftest import Result, assert_user_error, bundle_dir

THRESHOLD = 0.5


def two_class(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


def case(
    labels: list[int], target: list[float], reference: list[float], **gates: object
) -> dict[str, object]:
    """{gate name: check} of metric_gates on these cases."""
    y = np.array(labels)
    probs, ref = two_class(np.array(target)), two_class(np.array(reference))
    c = clinical(probs, y, 1, THRESHOLD, ref)
    g = from_dict(GatesConfig, dict(gates), "gates")
    ev = evidence(y, probs, ref, THRESHOLD, 1, None, g)
    return {x.name: x for x in metric_gates(c, ev, g)}


# 6 positives, 6 negatives; the target misses one positive the reference finds (FN) and
# calls two negatives positive that the reference got right (FP).
LABELS = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
REF = [0.9, 0.8, 0.7, 0.6, 0.6, 0.4, 0.1, 0.2, 0.3, 0.4, 0.1, 0.6]
TGT = [0.9, 0.8, 0.7, 0.6, 0.4, 0.4, 0.6, 0.7, 0.3, 0.4, 0.1, 0.6]


def recount() -> dict[str, float]:
    y, p, r = np.array(LABELS) == 1, np.array(TGT), np.array(REF)
    spec = np.sum((p < THRESHOLD) & ~y) / np.sum(~y)
    ref_spec = np.sum((r < THRESHOLD) & ~y) / np.sum(~y)
    return {
        "specificity": spec,
        "specificity_drop": ref_spec - spec,
        "auc": roc_auc_score(y, p),
        "auc_drop": roc_auc_score(y, r) - roc_auc_score(y, p),
        "flip_rate": np.mean((p >= THRESHOLD) != (r >= THRESHOLD)),
    }


def test_values_equal_an_independent_count() -> None:
    want = recount()
    got = case(
        LABELS,
        TGT,
        REF,
        min_specificity=0.0,
        max_specificity_drop=1.0,
        min_auc=0.0,
        max_auc_drop=1.0,
        max_flip_rate=1.0,
    )
    assert got["min_specificity"].value == pytest.approx(want["specificity"], abs=1e-6)
    assert got["max_specificity_drop"].value == pytest.approx(want["specificity_drop"], abs=1e-6)
    assert got["min_auc"].value == pytest.approx(want["auc"], abs=1e-6)
    assert got["max_auc_drop"].value == pytest.approx(want["auc_drop"], abs=1e-6)
    assert got["max_flip_rate"].value == pytest.approx(want["flip_rate"], abs=1e-6)
    assert want["specificity_drop"] > 0 and want["auc_drop"] > 0  # not a degenerate example


@pytest.mark.parametrize(
    ("gate", "metric", "direction"),
    [
        ("min_specificity", "specificity", "min"),
        ("max_specificity_drop", "specificity_drop", "max"),
        ("min_auc", "auc", "min"),
        ("max_auc_drop", "auc_drop", "max"),
        ("max_flip_rate", "flip_rate", "max"),
    ],
)
def test_a_value_at_its_limit_passes_and_past_it_fails(
    gate: str, metric: str, direction: str
) -> None:
    value = float(recount()[metric])
    at = case(LABELS, TGT, REF, **{gate: value})[gate]
    assert at.passed, at
    past = value + 1e-6 if direction == "min" else value - 1e-6
    beyond = case(LABELS, TGT, REF, **{gate: past})[gate]
    assert not beyond.passed, beyond


def test_one_more_negative_wrong_fails_the_specificity_gate() -> None:
    """The limit set to the specificity one more false positive would give: passes as is, and
    fails when one more negative crosses the threshold."""
    spec = float(recount()["specificity"])
    assert case(LABELS, TGT, REF, min_specificity=spec)["min_specificity"].passed
    worse = TGT[:8] + [0.55] + TGT[9:]  # negative #8 now called positive
    assert not case(LABELS, worse, REF, min_specificity=spec)["min_specificity"].passed


def test_ppv_and_npv_at_a_declared_prevalence() -> None:
    """Against counts reweighted to the prevalence: each positive weighs prev/P, each negative
    (1-prev)/N."""
    prev = 0.1
    y, p = np.array(LABELS) == 1, np.array(TGT) >= THRESHOLD
    w_pos, w_neg = prev / y.sum(), (1 - prev) / (~y).sum()
    tp, fp = w_pos * np.sum(p & y), w_neg * np.sum(p & ~y)
    tn, fn = w_neg * np.sum(~p & ~y), w_pos * np.sum(~p & y)
    ppv, npv = tp / (tp + fp), tn / (tn + fn)
    got = case(LABELS, TGT, REF, prevalence=prev, min_ppv=ppv, min_npv=npv)
    assert got["min_ppv"].value == pytest.approx(ppv, abs=1e-6) and got["min_ppv"].passed
    assert got["min_npv"].value == pytest.approx(npv, abs=1e-6) and got["min_npv"].passed
    got = case(LABELS, TGT, REF, prevalence=prev, min_ppv=ppv + 1e-5)
    assert not got["min_ppv"].passed


def test_ppv_needs_a_prevalence() -> None:
    with pytest.raises(UserError, match="prevalence"):
        from_dict(GatesConfig, {"min_ppv": 0.5}, "gates")


def test_paired_alpha_against_an_exact_binomial_test() -> None:
    """The target is worse among negatives (2 reference-right/target-wrong, 0 the other way):
    p = the exact two-sided binomial test of 2 of 2 discordant pairs; the gate fails below it
    and passes at it."""
    p = binomtest(2, 2, 0.5).pvalue  # 0.5
    got = case(LABELS, TGT, REF, paired_alpha=0.6)["paired_alpha"]
    assert got.value == pytest.approx(p) and not got.passed
    assert case(LABELS, TGT, REF, paired_alpha=p)["paired_alpha"].passed


def test_paired_alpha_ignores_a_target_that_is_better() -> None:
    """Swapping target and reference makes the target the better one: no failure, however
    small alpha's complement."""
    got = case(LABELS, REF, TGT, paired_alpha=0.99)["paired_alpha"]
    assert got.passed and got.value == 1.0


def test_an_undefined_metric_fails_closed() -> None:
    """No negatives: specificity and its drop are undefined, so their gates fail, whatever the
    limit."""
    got = case([1, 1, 1], [0.9, 0.8, 0.7], [0.9, 0.8, 0.7], min_specificity=0.0, min_auc=0.0)
    for name in ("min_specificity", "min_auc"):
        assert not got[name].passed and got[name].value is None
        assert got[name].reason.startswith("undefined")


# ---- real builds ------------------------------------------------------------------------


def test_a_specificity_gate_fails_a_real_build_naming_it(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project("[gates]\nmin_specificity = 0.99\n")
    r = cli("build", "-t", "cpu-onnxruntime", "--no-bench", "-q", "--json", cwd=root)
    assert r.code == 1, r.stderr
    assert "min_specificity" in r.stderr.strip().splitlines()[-1]
    report = json.loads((bundle_dir(root, "cpu-onnxruntime") / "report.json").read_text())
    gate = next(c for c in report["gates"]["checks"] if c["name"] == "min_specificity")
    with np.load(bundle_dir(root, "cpu-onnxruntime") / "validation.npz") as v:
        y, p = v["labels"] == 1, v["probs"][:, 1].astype(np.float64)
    spec = np.sum((p < 0.2) & ~y) / np.sum(~y)
    assert gate["value"] == pytest.approx(spec, abs=1e-6) and gate["passed"] is False
    assert gate["limit"] == 0.99


METRIC = """
import numpy as np

def balanced_accuracy(labels, probs, metadata):
    y = labels == 1
    pred = probs[:, 1] >= 0.2
    return float((np.mean(pred[y]) + np.mean(~pred[~y])) / 2)
"""


@pytest.fixture
def metric_plugin(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A real distribution on PYTHONPATH providing the entry point packager.metrics:
    balanced_accuracy (what `pip install` of a plugin leaves in site-packages)."""
    site = tmp_path_factory.mktemp("plugin-site")
    (site / "tiny_metrics.py").write_text(textwrap.dedent(METRIC))
    info = site / "tiny_metrics-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-metrics\nVersion: 1.2.0\n")
    (info / "entry_points.txt").write_text(
        "[packager.metrics]\nbalanced_accuracy = tiny_metrics:balanced_accuracy\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


@pytest.mark.parametrize("bound", [0.5, 0.99])
def test_a_custom_metric_gates_a_real_build(
    bound: float,
    metric_plugin: Path,
    project: Callable[..., Path],
    cli: Callable[..., Result],
) -> None:
    root = project(f"[gates.custom]\nbalanced_accuracy = {{min = {bound}}}\n")
    r = cli("build", "-t", "cpu-onnxruntime", "--no-bench", "-q", cwd=root)
    bundle = bundle_dir(root, "cpu-onnxruntime")
    report = json.loads((bundle / "report.json").read_text())
    gate = next(c for c in report["gates"]["checks"] if c["name"] == "custom:balanced_accuracy:min")
    with np.load(bundle / "validation.npz") as v:
        y, pred = v["labels"] == 1, v["probs"][:, 1] >= 0.2
    want = (np.mean(pred[y]) + np.mean(~pred[~y])) / 2
    assert gate["value"] == pytest.approx(want, abs=1e-6)
    assert "tiny-metrics 1.2.0" in gate["reason"]
    assert gate["passed"] is bool(want >= bound)
    assert r.code == (0 if want >= bound else 1), r.stderr
    if r.code:
        assert "custom:balanced_accuracy:min" in r.stderr


def test_an_unknown_custom_metric_is_refused_before_any_work(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project("[gates.custom]\nno_such_metric = {min = 0.5}\n")
    r = cli("build", "-t", "cpu-onnxruntime", "--no-bench", cwd=root)
    assert_user_error(r, "no_such_metric", "packager.metrics")
    assert not (root / "dist").exists() or not any((root / "dist").rglob("report.json"))


def test_every_gate_is_in_the_targets_json_schema(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    """The published schema of [gates] takes a table with every metric gate (jsonschema, not
    pydantic, checks it) and refuses a mistyped one."""
    import jsonschema

    r = cli("targets", "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    schema = r.json["gates_schema"]
    table = {
        "min_specificity": 0.5,
        "max_specificity_drop": 0.02,
        "min_auc": 0.8,
        "max_auc_drop": 0.01,
        "min_ppv": 0.2,
        "min_npv": 0.9,
        "prevalence": 0.1,
        "max_flip_rate": 0.01,
        "max_ece_increase": 0.02,
        "paired_alpha": 0.01,
        "custom": {"balanced_accuracy": {"min": 0.8}},
        "classes": {"normal": {"min_sensitivity": 0.9, "min_specificity": 0.8}},
        "decide_on": "ci",
    }
    jsonschema.validate(table, schema)
    for wrong in (
        {"min_specificty": 0.5},
        {"decide_on": "bound"},
        {"classes": {"normal": {"min_sens": 0.9}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_non_finite_scores_rank_as_the_decisions_read_them() -> None:
    """NaN ranks as 0 and +Inf as 1, -Inf as 0 (a NaN decides negative), in the AUC and the
    curve; checked against scikit-learn on the scores replaced by hand."""
    from sklearn.metrics import roc_curve as sk_curve

    from packager.core.metrics import roc_auc, roc_curve

    y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    s = np.array([0.9, np.nan, np.inf, 0.2, -np.inf, 0.95, 0.6, np.nan])
    by_hand = np.array([0.9, 0.0, 1.0, 0.2, 0.0, 0.95, 0.6, 0.0])
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, by_hand), abs=1e-12)
    fpr, tpr = roc_curve(y, s)
    want_fpr, want_tpr, _ = sk_curve(y, by_hand, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)


def test_reference_metrics_equal_an_independent_count() -> None:
    """Reference specificity and AUC, and their drops, as clinical() records them."""
    y = np.array(LABELS)
    c = clinical(two_class(np.array(TGT)), y, 1, THRESHOLD, two_class(np.array(REF)))
    r, p = np.array(REF), np.array(TGT)
    ref_spec = np.sum((r < THRESHOLD) & (y == 0)) / np.sum(y == 0)
    assert c.reference_specificity == pytest.approx(ref_spec, abs=1e-12)
    assert c.specificity_drop == pytest.approx(ref_spec - c.specificity, abs=1e-12)
    assert c.reference_auc == pytest.approx(roc_auc_score(y, r), abs=1e-12)
    assert c.auc_drop == pytest.approx(roc_auc_score(y, r) - roc_auc_score(y, p), abs=1e-12)
