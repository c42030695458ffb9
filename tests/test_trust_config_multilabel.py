"""verify's config comparison for a multi-label bundle (issue 30 trust, issue 28 mutation set):
the manifest's [labels] task, thresholds and every finding's gate limits against runtime.json,
selftest.json and report.json, written out here by hand as a 3-finding build writes them. Each
disagreement is one exact line; agreement is none. In process: milliseconds per case."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from packager.builder.verify import _config_problems

NAMES = ["effusion", "nodule", "mass"]
CONFIG: dict[str, Any] = {
    "labels": {
        "task": "multilabel",
        "names": NAMES,
        "threshold": 0.5,
        "thresholds": {"nodule": 0.3},
        "positive": None,
    },
    "gates": {
        "min_sensitivity": 0.8,
        "max_sensitivity_drop": 0.05,
        "findings": {"mass": {"min_sensitivity": 0.6}},
    },
}
EACH = {"effusion": 0.5, "nodule": 0.3, "mass": 0.5}


def documents() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(runtime.json, report.json, selftest.json) as the build writes them for CONFIG."""
    runtime = {
        "labels": NAMES,
        "positive": None,
        "threshold": 0.5,
        "task": "multilabel",
        "thresholds": dict(EACH),
    }
    checks = [{"name": "finite_outputs", "limit": None}]
    for n in NAMES:
        checks += [
            {"name": f"min_sensitivity[finding={n}]", "limit": 0.6 if n == "mass" else 0.8},
            {"name": f"max_sensitivity_drop[finding={n}]", "limit": 0.05},
        ]
    golden = {"threshold": 0.5, "thresholds": dict(EACH), "positive_index": None}
    return runtime, {"gates": {"checks": checks}}, golden


def test_a_consistent_multilabel_bundle_has_no_problem() -> None:
    assert _config_problems(CONFIG, *documents()) == []


Edit = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]], None]


def _gate(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["gates"]["checks"] if c["name"] == name)


CASES: list[tuple[str, Edit, str]] = [
    (
        "runtime-task",
        lambda c, r, p, g: r.update(task=None),
        "runtime.json: task is None but manifest.json's config says 'multilabel'",
    ),
    (
        "runtime-threshold-of-one-finding",
        lambda c, r, p, g: r["thresholds"].update(nodule=0.5),
        "runtime.json: thresholds is {'effusion': 0.5, 'nodule': 0.5, 'mass': 0.5} but "
        "manifest.json's config says {'effusion': 0.5, 'nodule': 0.3, 'mass': 0.5}",
    ),
    (
        "selftest-thresholds",
        lambda c, r, p, g: g.update(thresholds=None),
        "selftest.json: thresholds is None but manifest.json's config says "
        "{'effusion': 0.5, 'nodule': 0.3, 'mass': 0.5}",
    ),
    (
        "selftest-positive-index",
        lambda c, r, p, g: g.update(positive_index=1),
        "selftest.json: positive_index is 1 but manifest.json's config says None",
    ),
    (
        "runtime-positive",
        lambda c, r, p, g: r.update(positive="nodule"),
        "runtime.json: positive is 'nodule' but manifest.json's config says None",
    ),
    (
        "a-finding-gate-override",
        lambda c, r, p, g: _gate(p, "min_sensitivity[finding=mass]").update(limit=0.8),
        "report.json: gates.min_sensitivity for mass is 0.8 but manifest.json's config says 0.6",
    ),
    (
        "a-finding-gate-from-the-top",
        lambda c, r, p, g: _gate(p, "max_sensitivity_drop[finding=nodule]").update(limit=0.1),
        "report.json: gates.max_sensitivity_drop for nodule is 0.1 but manifest.json's config "
        "says 0.05",
    ),
    (
        "manifest-threshold-of-one-finding",
        lambda c, r, p, g: c["labels"]["thresholds"].update(effusion=0.4),
        "runtime.json: thresholds is {'effusion': 0.5, 'nodule': 0.3, 'mass': 0.5} but "
        "manifest.json's config says {'effusion': 0.4, 'nodule': 0.3, 'mass': 0.5}",
    ),
]


@pytest.mark.parametrize(("case", "edit", "problem"), CASES, ids=[c[0] for c in CASES])
def test_each_disagreement_is_one_line(case: str, edit: Edit, problem: str) -> None:
    config = copy.deepcopy(CONFIG)
    runtime, report, golden = documents()
    edit(config, runtime, report, golden)
    problems = _config_problems(config, runtime, report, golden)
    if case == "manifest-threshold-of-one-finding":  # both documents then disagree with it
        assert problems == [problem, problem.replace("runtime.json", "selftest.json")]
    else:
        assert problems == [problem]


def test_a_manifest_override_of_one_finding_is_that_findings_alone() -> None:
    config = copy.deepcopy(CONFIG)
    config["gates"]["findings"]["nodule"] = {"max_sensitivity_drop": 0.1}
    assert _config_problems(config, *documents()) == [
        "report.json: gates.max_sensitivity_drop for nodule is 0.05 but manifest.json's config "
        "says 0.1"
    ]


@pytest.mark.parametrize("broken", [None, "x", ["mass"]])
def test_unusable_overrides_and_thresholds_fall_back_to_the_top_level(broken: Any) -> None:
    config = copy.deepcopy(CONFIG)
    config["gates"]["findings"] = broken
    config["labels"]["thresholds"] = broken
    runtime, report, golden = documents()
    for doc in (runtime, golden):
        doc["thresholds"] = dict.fromkeys(NAMES, 0.5)
    _gate(report, "min_sensitivity[finding=mass]")["limit"] = 0.8
    assert _config_problems(config, runtime, report, golden) == []


def test_single_label_fields_are_not_compared_as_multilabel() -> None:
    """A binary config: no task, no thresholds, no per-finding lines; runtime.json's task must be
    absent (None), and a `task` written into it is caught."""
    config = {
        "labels": {"names": ["normal", "pneumonia"], "positive": "pneumonia", "threshold": 0.5},
        "gates": {"min_sensitivity": 0.9},
    }
    runtime = {"labels": ["normal", "pneumonia"], "positive": "pneumonia", "threshold": 0.5}
    report = {"gates": {"checks": [{"name": "min_sensitivity", "limit": 0.9}]}}
    golden = {"threshold": 0.5, "thresholds": {"x": 1}, "positive_index": 1}
    assert _config_problems(config, runtime, report, golden) == []
    assert _config_problems(config, runtime | {"task": "multilabel"}, report, golden) == [
        "runtime.json: task is 'multilabel' but manifest.json's config says None"
    ]
    names = {**config, "labels": {**config["labels"], "task": "binary"}}
    assert _config_problems(names, runtime, report, golden) == []
