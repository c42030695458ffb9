"""What a site acceptance decides, for a single-label bundle (the positive class) or a
multi-label one (each finding as its own binary model, core.findings): the gate lines, the
subgroups, the rates and the errors. A multi-label site's summary is the finding with the
lowest sensitivity here; every finding's lines are gated, named [finding=<name>]."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from packager.core.config import Config
from packager.core.findings import binary, config_for, findings
from packager.core.metrics import Clinical, clinical, decisions
from packager.hospital.site_gates import (
    EVERY,
    FAIL,
    PASS,
    UNDEFINED,
    line,
    rate,
    site_gates,
    subgroups,
)
from packager.runtime.validate import evaluate, model_probabilities


@dataclass
class Decided:
    """One binary view's site numbers (the positive class, or one finding)."""

    clin: Clinical
    checks: list[dict[str, Any]]
    not_applied: list[dict[str, Any]]
    groups: dict[str, dict[str, dict[str, Any]]]
    y: np.ndarray  # truly positive, per image
    pred: np.ndarray  # decided positive, per image

    def rates(self) -> dict[str, Any]:
        c = self.clin.confusion
        return {
            "sensitivity": rate(c["tp"], c["tp"] + c["fn"]),
            "specificity": rate(c["tn"], c["tn"] + c["fp"]),
        }

    def errors(self, rows: np.ndarray) -> dict[str, list[int]]:
        """Row indexes (data.row_index) only: no path, no identifier."""
        return {
            "false_positives": np.sort(rows[self.pred & ~self.y]).tolist(),
            "false_negatives": np.sort(rows[~self.pred & self.y]).tolist(),
        }


@dataclass
class SiteParts:
    probs: np.ndarray
    summary: Decided  # the positive class, or the lowest-sensitivity finding
    checks: list[dict[str, Any]]
    not_applied: list[dict[str, Any]]
    groups: dict[str, dict[str, dict[str, Any]]]
    finding: str | None = None
    findings: dict[str, Decided] | None = None


def _decide(
    probs: np.ndarray,
    labels: np.ndarray,
    clin: Clinical,
    cfg: Config,
    build: dict[str, Any],
    metadata: dict[str, np.ndarray],
) -> Decided:
    pos, thr = cfg.labels.positive_index, cfg.labels.threshold
    checks, not_applied = site_gates(clin, cfg, build, grouped=bool(metadata))
    y, pred = labels == pos, decisions(probs, pos, thr)
    return Decided(clin, checks, not_applied, subgroups(metadata, y, pred, cfg, build), y, pred)


def site_parts(
    cfg: Config,
    output: str,
    scores: np.ndarray,
    labels: np.ndarray,
    metadata: dict[str, Any],
    build: dict[str, Any],
) -> SiteParts:
    """`build`: the bundle's report.json clinical section."""
    if not cfg.labels.multilabel:
        probs, clin = evaluate(scores, labels, cfg, output, None)
        d = _decide(probs, labels, clin, cfg, build, metadata)
        return SiteParts(probs, d, d.checks, d.not_applied, d.groups)
    probs = model_probabilities(scores, cfg, output)
    per: dict[str, Decided] = {}
    checks: list[dict[str, Any]] = []
    not_applied: list[dict[str, Any]] = []
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for f in findings(cfg.labels):
        fcfg, p, y = config_for(cfg, f), binary(probs, f), labels[:, f.index]
        d = _decide(p, y, clinical(p, y, 1, f.threshold), fcfg, _built(build, f.name), metadata)
        tag = f"[finding={f.name}]"
        checks += [c | {"name": c["name"] + tag} for c in d.checks[1:]]  # [0]: finite_outputs
        not_applied += [n | {"name": n["name"] + tag} for n in d.not_applied]
        groups |= {col + tag: rows for col, rows in d.groups.items()}
        if d.rates()["specificity"]["value"] is None:  # fails closed, as for one class
            why = "specificity is undefined: no negatives in the data"
            checks.append(line(f"specificity{tag}", None, None, UNDEFINED, EVERY, None, why))
        per[f.name] = d
    worst = min(
        per, key=lambda n: (not per[n].clin.positives, per[n].clin.sensitivity, list(per).index(n))
    )
    summary = dataclasses.replace(per[worst])
    summary.clin = dataclasses.replace(summary.clin, finite=bool(np.isfinite(probs).all()))
    finite = summary.clin.finite  # once, for the whole model
    why = "" if finite else "NaN or Inf scores"
    checks.insert(
        0, line("finite_outputs", finite, True, PASS if finite else FAIL, EVERY, None, why)
    )
    return SiteParts(probs, summary, checks, not_applied, groups, worst, per)


def _built(build: dict[str, Any], name: str) -> dict[str, Any]:
    """The finding's build-time clinical numbers (its reference sensitivity for the drop gate)."""
    return ((build or {}).get("findings") or {}).get(name) or {}


def finding_sections(parts: SiteParts, rows: np.ndarray, output: str, split: str) -> dict[str, Any]:
    """site-validation.json's `findings`: each finding's metrics, rates and error rows."""
    return {
        name: {
            "clinical": asdict(d.clin) | {"split": split, "output": output},
            "rates": d.rates(),
            "errors": d.errors(rows),
        }
        for name, d in (parts.findings or {}).items()
    }
