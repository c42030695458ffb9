"""Gates on their boundaries and the precision search's choice on fixed tables (issue 28 item 2).

Each gate is tried exactly at its limit (passes) and one case past it (fails), on real Clinical
values computed by packager.core.metrics from hand-made label/probability arrays whose counts are
known by construction, so a `>=` turned into `>` (or a lost float tolerance) fails here. The
precision search's select() gets candidate tables whose right answer is written by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.builder.search import ranked_by, select, worst_drop
from packager.core.config import GatesConfig, parse_config
from packager.core.metrics import clinical
from packager.core.status import ReportStatus
from packager.reports.evidence import evidence, evidence_checks
from packager.runtime.validate import gate_checks

THRESHOLD = 0.5


def _two(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


def _arrays(
    positives: int, target_hits: int, reference_hits: int = 0, negatives: int = 30
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and (N, 2) probabilities: the target detects `target_hits` of `positives`, the
    reference `reference_hits`; the negatives hold one false positive each side, so the set is
    not perfectly separated."""
    y = np.array([1] * positives + [0] * negatives)
    tgt = np.full(len(y), 0.2)
    ref = np.full(len(y), 0.2)
    tgt[:target_hits] = 0.8
    ref[:reference_hits] = 0.7
    tgt[positives] = ref[positives] = 0.6  # a false positive on both
    return y, _two(tgt), _two(ref)


def _gates(**gates: Any) -> Any:
    return parse_config({"gates": gates}, Path.cwd())


def _by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


@pytest.mark.parametrize(
    ("hits", "passes"),
    [(49, True), (48, False), (50, True)],
    ids=["exactly-at-the-limit", "one-case-below", "above"],
)
def test_min_sensitivity_boundary(hits: int, passes: bool) -> None:
    # 49/50 is the float nearest 0.98, the same double as the literal limit: exactly at it.
    y, tgt, _ = _arrays(positives=50, target_hits=hits)
    c = clinical(tgt, y, 1, THRESHOLD)
    assert c.sensitivity == hits / 50 and c.confusion["fp"] == 1  # the counts built above
    check = _by_name(gate_checks(c, _gates(min_sensitivity=0.98), has_reference=False))[
        "min_sensitivity"
    ]
    assert check.passed is passes
    assert (check.value, check.limit) == (round(hits / 50, 6), 0.98)


@pytest.mark.parametrize(
    ("ref_hits", "tgt_hits", "passes"),
    [(200, 199, True), (200, 198, False), (199, 199, True), (198, 199, True)],
    ids=["exactly-at-the-limit", "one-case-past", "no-drop", "target-better"],
)
def test_max_sensitivity_drop_boundary(ref_hits: int, tgt_hits: int, passes: bool) -> None:
    # One miss in 200 is a drop of 0.005 = the limit; in floats 1 - 0.995 is 0.0050000000000000044,
    # which the gate's 1e-12 tolerance must still pass.
    y, tgt, ref = _arrays(positives=200, target_hits=tgt_hits, reference_hits=ref_hits)
    c = clinical(tgt, y, 1, THRESHOLD, reference=ref)
    assert c.sensitivity_drop == pytest.approx((ref_hits - tgt_hits) / 200, abs=1e-15)
    checks = _by_name(gate_checks(c, _gates(min_sensitivity=0.0, max_sensitivity_drop=0.005), True))
    assert checks["max_sensitivity_drop"].passed is passes
    assert checks["min_sensitivity"].passed  # only the drop decides here


def test_drop_gate_needs_a_reference() -> None:
    y, tgt, ref = _arrays(positives=200, target_hits=150, reference_hits=200)
    c = clinical(tgt, y, 1, THRESHOLD, reference=ref)
    assert "max_sensitivity_drop" not in _by_name(gate_checks(c, _gates(), has_reference=False))
    assert not _by_name(gate_checks(c, _gates(), has_reference=True))["max_sensitivity_drop"].passed


def test_finite_outputs_gate_fails_on_one_nan() -> None:
    y, tgt, _ = _arrays(positives=50, target_hits=50)
    assert _by_name(gate_checks(clinical(tgt, y, 1, THRESHOLD), _gates(), False))[
        "finite_outputs"
    ].passed
    tgt[3] = np.nan
    assert not _by_name(gate_checks(clinical(tgt, y, 1, THRESHOLD), _gates(), False))[
        "finite_outputs"
    ].passed


def _subgroup_lines(hits_a: int, ref_hits_a: int, gates: GatesConfig) -> dict[str, dict[str, Any]]:
    """Two sites of 50 positives (and 20 negatives) each; site B is perfect on both runs."""
    y = np.array(([1] * 50 + [0] * 20) * 2)
    site = np.array(["A"] * 70 + ["B"] * 70)
    tgt = np.full(len(y), 0.2)
    ref = np.full(len(y), 0.2)
    tgt[:hits_a], ref[:ref_hits_a] = 0.9, 0.9
    tgt[70:120] = ref[70:120] = 0.9
    ev = evidence(y, _two(tgt), _two(ref), THRESHOLD, 1, {"site": site}, gates)
    return {c.name: c for c in evidence_checks(ev)}


@pytest.mark.parametrize(
    ("hits", "passes"),
    [(48, True), (47, False)],
    ids=["exactly-at-the-limit", "one-case-below"],
)
def test_min_subgroup_sensitivity_boundary(hits: int, passes: bool) -> None:
    gates = GatesConfig(min_subgroup_sensitivity=0.96, min_subgroup_positives=20)  # 48/50
    lines = _subgroup_lines(hits, 50, gates)
    assert lines["min_subgroup_sensitivity[site=A]"].passed is passes
    assert lines["min_subgroup_sensitivity[site=B]"].passed


@pytest.mark.parametrize(
    ("hits", "passes"),
    [(49, True), (48, False)],
    ids=["exactly-at-the-limit", "one-case-past"],
)
def test_max_subgroup_sensitivity_drop_boundary(hits: int, passes: bool) -> None:
    gates = GatesConfig(max_subgroup_sensitivity_drop=0.02, min_subgroup_positives=20)  # 1/50
    lines = _subgroup_lines(hits, 50, gates)
    assert lines["max_subgroup_sensitivity_drop[site=A]"].passed is passes
    assert lines["max_subgroup_sensitivity_drop[site=B]"].passed


@pytest.mark.parametrize(("minimum", "judged"), [(50, True), (51, False)])
def test_subgroup_gates_judge_from_min_subgroup_positives(minimum: int, judged: bool) -> None:
    # each site has exactly 50 positives: judged at a minimum of 50, too small to judge at 51
    # (then no line at all: a subgroup too small is never counted as passed)
    gates = GatesConfig(min_subgroup_sensitivity=0.99, min_subgroup_positives=minimum)
    lines = _subgroup_lines(10, 50, gates)
    assert bool(lines) is judged
    if judged:
        assert not lines["min_subgroup_sensitivity[site=A]"].passed


# ---- search.select on fixed candidate tables -----------------------------------------------


def _row(
    label: str,
    status: str = ReportStatus.passed,
    lat: float | None = None,
    thr: float | None = None,
    size: float | None = 10.0,
    proxy: str | None = None,
    gates_ok: bool = True,
) -> dict[str, Any]:
    return {
        "label": label,
        "status": status,
        "proxy": proxy,
        "gates_ok": gates_ok,
        "latency_p50_ms": lat,
        "throughput_sps": thr,
        "size_mb": size,
    }


TABLE = [
    _row("fp32", lat=4.0, thr=500.0, size=42.0),
    _row("fp16", lat=2.5, thr=900.0, size=21.0),
    _row("int8-fast-but-failed", ReportStatus.failed, lat=0.5, thr=3000.0, size=5.0),
    _row("int8-mixed", lat=1.2, thr=1400.0, size=12.0),
    _row("bf16", lat=3.0, thr=2000.0, size=21.5),
    _row("int4-error", "error", size=None),
]


@pytest.mark.parametrize(
    ("objective", "best"),
    [("latency", "int8-mixed"), ("throughput", "bf16"), ("size", "int8-mixed")],
)
def test_select_picks_the_best_passing_candidate(objective: str, best: str) -> None:
    # Hand-read from TABLE: the failed INT8 is faster and smaller than all, and never chosen;
    # fp32 is the worst passing one on every objective.
    assert ranked_by(TABLE, objective) == objective
    assert select(TABLE, objective)["label"] == best  # type: ignore[index]
    assert select(list(reversed(TABLE)), objective)["label"] == best  # type: ignore[index]


def test_select_ties_fall_to_the_second_measure() -> None:
    tie = [
        _row("a", lat=2.0, thr=800.0, size=20.0),
        _row("b", lat=2.0, thr=900.0, size=20.0),  # same latency, more throughput
        _row("c", lat=1.5, thr=900.0, size=30.0),  # same throughput as b, lower latency
    ]
    assert select(tie, "latency")["label"] == "c"  # type: ignore[index]
    assert select(tie[:2], "latency")["label"] == "b"  # type: ignore[index]
    assert select(tie, "throughput")["label"] == "c"  # type: ignore[index]
    assert select(tie[:2], "size")["label"] == "a"  # same size: lower latency a=b, then first
    assert select([*tie[:2], _row("d", lat=1.0, size=20.0)], "size")["label"] == "d"  # type: ignore[index]


def test_select_unmeasured_sorts_last() -> None:
    rows = [_row("unmeasured", lat=None, thr=None), _row("measured", lat=9.0, thr=10.0)]
    for objective in ("latency", "throughput"):
        assert select(rows, objective)["label"] == "measured"  # type: ignore[index]
    sized = [_row("no-size", lat=1.0, size=None), _row("sized", lat=9.0, size=50.0)]
    assert select(sized, "size")["label"] == "sized"  # type: ignore[index]


def test_select_with_every_candidate_failing_is_none() -> None:
    failing = [
        _row("fp32", ReportStatus.failed, lat=4.0),
        _row("int8", ReportStatus.failed, lat=1.0),
        _row("proxy-gate-failed", ReportStatus.not_validated, proxy="ORT CPU", gates_ok=False),
        _row("no-proxy", ReportStatus.not_validated, proxy=None, gates_ok=True),
        _row("error", "error"),
    ]
    for objective in ("latency", "throughput", "size"):
        assert select(failing, objective) is None
    assert select([], "latency") is None


def test_select_falls_back_to_proxy_candidates_and_ranks_by_size() -> None:
    # Nothing validated on its own runtime (TensorRT without a GPU): proxy rows whose gates
    # all passed may ship, ranked by size since nothing could be timed.
    rows = [
        _row("fp32", ReportStatus.not_validated, size=42.0, proxy="ORT CPU"),
        _row("fp16", ReportStatus.not_validated, size=21.0, proxy="ORT CPU"),
        _row("int8", ReportStatus.not_validated, size=11.0, proxy="ORT CPU", gates_ok=False),
        # timed, but failed: its latency does not make latency the ranking
        _row("int8-failed", ReportStatus.failed, lat=1.0, thr=900.0, size=11.0),
    ]
    assert ranked_by(rows, "latency") == "size"
    assert select(rows, "latency")["label"] == "fp16"  # type: ignore[index]
    # a single passed candidate outranks every proxy one, however small they are
    rows.append(_row("bf16", size=99.0))
    assert select(rows, "size")["label"] == "bf16"  # type: ignore[index]


def test_a_multilabel_candidate_shows_its_largest_finding_drop() -> None:
    # The summary finding (lowest sensitivity, "a") dropped 0.01; "b" dropped 0.04: the row must
    # show 0.04, or an INT8 that hurt one strong finding would look harmless.
    clinical = {
        "finding": "a",
        "sensitivity": 0.90,
        "sensitivity_drop": 0.01,
        "findings": {
            "a": {"sensitivity": 0.90, "sensitivity_drop": 0.01},
            "b": {"sensitivity": 0.95, "sensitivity_drop": 0.04},
            "c": {"sensitivity": 0.99, "sensitivity_drop": -0.02},
            "d": {"sensitivity": 0.97, "sensitivity_drop": None},  # no reference comparison
        },
    }
    assert worst_drop(clinical) == 0.04
    assert worst_drop({"sensitivity_drop": 0.02}) == 0.02  # single-label: its own
    assert worst_drop({"findings": {"d": {"sensitivity_drop": None}}}) is None
