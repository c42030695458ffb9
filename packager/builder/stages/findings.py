"""The clinical judgement of a model's outputs on a dataset, the same at build and at a
hospital's re-validation: one class per image (the positive class against the rest), or a
multi-label model as one binary model per finding (core.findings), each with its metrics,
evidence and gates, summarised by the finding with the lowest sensitivity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from packager.core.config import Config
from packager.core.data import Dataset
from packager.core.findings import binary, config_for, findings, named
from packager.core.gates import finding_positives, metric_gates
from packager.core.metrics import Clinical, clinical, flipped
from packager.core.target import Check
from packager.reports.evidence import for_data
from packager.runtime.validate import evaluate, gate_checks, model_probabilities

# (config, data, probabilities, reference) -> (evidence, its gate lines): reports.evidence.for_data,
# or a caller's variant of it (a hospital without the build host's group files)
Evidence = Callable[
    [Config, Dataset, np.ndarray, np.ndarray | None], tuple[dict[str, Any], list[Check]]
]


def judge(
    cfg: Config,
    ds: Dataset,
    scores: np.ndarray,
    kind: str,
    reference: np.ndarray | None,
    evidence: Evidence = for_data,
) -> tuple[np.ndarray, Clinical, dict[str, Any], list[Check], dict[str, Any]]:
    """(probabilities, the summary metrics, their evidence, every clinical gate line, what
    report.json's clinical section adds for a multi-label model)."""
    has_ref = reference is not None
    if cfg.labels.multilabel:
        probs = model_probabilities(scores, cfg, kind)
        worst, clin, ev, gates, per = by_finding(cfg, ds, probs, reference, evidence)
        finite = gate_checks(clin, cfg, has_ref)[:1]  # once, for the whole model
        return probs, clin, ev, finite + gates, {"finding": worst, "findings": per}
    probs, clin = evaluate(scores, ds.labels, cfg, kind, reference)
    ev, ev_checks = evidence(cfg, ds, probs, reference)
    gates = (
        gate_checks(clin, cfg, has_ref, ev["paired"])
        + metric_gates(clin, ev, cfg.gates)
        + ev_checks
    )
    return probs, clin, ev, gates, {}


def by_finding(
    cfg: Config,
    ds: Dataset,
    probs: np.ndarray,
    reference: np.ndarray | None,
    evidence: Evidence = for_data,
) -> tuple[str, Clinical, dict[str, Any], list[Check], dict[str, dict[str, Any]]]:
    """(the worst finding's name, its metrics, its evidence, every finding's gate lines, per
    finding its metrics and evidence). The worst finding has the lowest sensitivity, then the
    largest sensitivity drop: the one a sensitivity claim rests on."""
    per: dict[str, dict[str, Any]] = {}
    checks: list[Check] = []
    ranked = []
    for f in findings(cfg.labels):
        fcfg = config_for(cfg, f)
        y = ds.labels[:, f.index]
        p = binary(probs, f)
        r = None if reference is None else binary(reference, f)
        c = clinical(p, y, 1, f.threshold, r)
        ev, ev_checks = evidence(fcfg, replace(ds, labels=y), p, r)
        lines = gate_checks(c, fcfg, r is not None, ev["paired"])[1:]  # finite: once, model-wide
        enough = finding_positives(c.positives, fcfg.gates)
        checks += named([enough, *lines, *metric_gates(c, ev, fcfg.gates), *ev_checks], f)
        per[f.name] = asdict(c) | {"evidence": ev}
        # a finding with no positives has no sensitivity to rank: never the summary
        key = (not c.positives, c.sensitivity, -(c.sensitivity_drop or 0.0), f.index)
        ranked.append((key, f.name, c, ev))
    _, name, worst, worst_ev = min(ranked, key=lambda t: t[0])
    worst = replace(worst, finite=bool(np.isfinite(probs).all()))
    if reference is not None:  # an image flips when any finding's decision does
        pos, thr = cfg.labels.operating_points()
        worst.flipped = flipped(probs, reference, pos, thr)
        worst.max_abs_diff = float(np.max(np.abs(probs - reference)))
    return name, worst, worst_ev, checks, per
