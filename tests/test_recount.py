"""One generic recount for every target this host builds: TP/FN/TN/FP, sensitivity, its CI,
specificity, AUC, the reference comparison and the gate decisions, recomputed with plain numpy
(and scikit-learn / statsmodels) from the bundle's own validation.npz, the threshold and positive
class in runtime.json, and the dataset's labels read directly, then compared with report.json.
Builds are shared with the target tests (conftest.default_build)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint

from packager.core import registry
from tests.conftest import Result, bundle_dir

GATES = {"min_sensitivity": 0.98, "max_sensitivity_drop": 0.005}  # the documented defaults


def recount(bundle: Path, labels: np.ndarray) -> dict[str, Any]:
    """What report.json's clinical section must say, from validation.npz and runtime.json."""
    runtime = json.loads((bundle / "runtime.json").read_text())
    pos = runtime["labels"].index(runtime["positive"])
    threshold = float(runtime["threshold"])
    with np.load(bundle / "validation.npz") as v:
        assert np.array_equal(v["labels"], labels), "validation.npz labels are not the split's"
        p, ref = v["probs"][:, pos].astype(np.float64), v["reference"][:, pos].astype(np.float64)
    y = labels == pos
    decide, ref_decide = p >= threshold, ref >= threshold
    tp, fn = int(np.sum(decide & y)), int(np.sum(~decide & y))
    tn, fp = int(np.sum(~decide & ~y)), int(np.sum(decide & ~y))
    sens, ref_sens = tp / (tp + fn), int(np.sum(ref_decide & y)) / (tp + fn)
    return {
        "threshold": threshold,
        "n": len(labels),
        "positives": tp + fn,
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        "sensitivity": sens,
        "specificity": tn / (tn + fp),
        "accuracy": (tp + tn) / len(labels),
        "auc": roc_auc_score(y, p),
        "sensitivity_ci95": proportion_confint(tp, tp + fn, alpha=0.05, method="wilson"),
        "specificity_ci95": proportion_confint(tn, tn + fp, alpha=0.05, method="wilson"),
        "reference_sensitivity": ref_sens,
        "sensitivity_drop": ref_sens - sens,
        "flipped": np.flatnonzero(decide != ref_decide).tolist(),
        "max_abs_diff": float(np.abs(p - ref).max()),
    }


def check_report(bundle: Path, labels: np.ndarray, gates: dict[str, float] = GATES) -> dict:
    report = json.loads((bundle / "report.json").read_text())
    want, got = recount(bundle, labels), report["clinical"]
    assert got["confusion"] == want["confusion"]
    for key in ("n", "positives", "flipped", "threshold"):
        assert got[key] == want[key], key
    for key in ("sensitivity", "specificity", "accuracy", "reference_sensitivity"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["sensitivity_drop"] == pytest.approx(want["sensitivity_drop"], abs=1e-9)
    # The report ranks the very float32 values validation.npz stores (metrics.to_probabilities),
    # so sklearn's AUC on them differs only by float64 summation order, on any ISA.
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-12)
    assert got["max_abs_diff"] == pytest.approx(want["max_abs_diff"], abs=1e-12)
    assert got["sensitivity_ci95"] == pytest.approx(list(want["sensitivity_ci95"]), abs=1e-9)
    assert got["specificity_ci95"] == pytest.approx(list(want["specificity_ci95"]), abs=1e-9)
    # The gates decide on these numbers, and the status follows the gates.
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    expected = {
        "min_sensitivity": want["sensitivity"] >= gates["min_sensitivity"],
        "max_sensitivity_drop": want["sensitivity_drop"] <= gates["max_sensitivity_drop"] + 1e-12,
    }
    for name, passed in expected.items():
        assert checks[name]["passed"] == passed, (name, checks[name], want)
    if not all(expected.values()):
        assert report["status"] == "failed"
    return report


@pytest.fixture(scope="module")
def test_labels(data_path: Path) -> np.ndarray:
    with np.load(data_path) as d:
        return d["test_labels"].reshape(-1).astype(np.int64)


@pytest.mark.parametrize("target", registry.names())
def test_report_matches_an_independent_recount(
    target: str,
    default_build: Callable[[str], tuple[Path, Result]],
    test_labels: np.ndarray,
) -> None:
    build_status = registry.get(target).availability().build
    if not build_status.ok:
        pytest.skip(f"not validated: this host cannot build {target}: {build_status.reason}")
    root, r = default_build(target)
    assert r.code in (0, 1), r.stderr
    report = check_report(bundle_dir(root, target), test_labels)
    assert report["target"] == target
    assert r.code == (0 if report["gates"]["passed"] else 1)


def test_build_all_then_compare_reports_every_bundle_as_built(
    default_dist: tuple[Path, Result], cli: Callable[..., Result]
) -> None:
    """`build --all` then `compare` on the real dist: one row per target built, each row's
    numbers those of that bundle's report.json."""
    root, r = default_dist
    assert r.code in (0, 1), r.stderr
    built = {x["target"]: x for x in json.loads(r.stdout)["results"]}
    buildable = {n for n in registry.names() if registry.get(n).availability().build.ok}
    assert set(built) == buildable
    c = cli("compare", root / "dist", "--format", "json", cwd=root)
    assert c.code == 0, c.stderr
    rows = {row["target"]: row for row in c.json["rows"]}
    published = {t for t, x in built.items() if x["status"] in ("passed", "not-validated")}
    assert set(rows) >= published and len(rows) == len(c.json["rows"])
    for target, row in rows.items():
        report = json.loads((bundle_dir(root, target) / "report.json").read_text())
        assert row["status"] == report["status"] == built[target]["status"], target
        clinical, bench = report["clinical"], report["benchmark"]
        assert row["sensitivity"] == clinical["sensitivity"], target
        assert row["flips"] == len(clinical["flipped"]), target
        if bench.get("status") == "ok":
            assert row["latency_p50_ms"] == bench["batches"][0]["latency_ms"]["p50"], target
            assert row["peak_memory_mb"] == bench["peak_rss_mb"], target
        else:
            assert row["latency_p50_ms"] is None, target
