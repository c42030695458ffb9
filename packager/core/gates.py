"""The clinical gates beyond sensitivity: specificity, AUC, PPV/NPV at a declared prevalence, flip
rate, calibration and the paired test, plus custom metrics from `packager.metrics` entry points.
Each is off unless set in [gates]. A metric whose denominator is empty is undefined and fails
closed: a gate never passes on a number the data cannot give."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from packager.core.config import GatesConfig
from packager.core.errors import UserError
from packager.core.metrics import Clinical
from packager.core.target import Check

METRICS_GROUP = "packager.metrics"
SLACK = 1e-12  # a value equal to its limit passes, whatever the float rounding of either


def _at_least(name: str, value: float | None, limit: float, undefined: str) -> Check:
    if value is None:
        return Check(name, None, limit, False, f"undefined: {undefined}")
    return Check(name, round(value, 6), limit, value >= limit - SLACK)


def _at_most(name: str, value: float | None, limit: float, undefined: str) -> Check:
    if value is None:
        return Check(name, None, limit, False, f"undefined: {undefined}")
    return Check(name, round(value, 6), limit, value <= limit + SLACK)


def predictive_values(
    sensitivity: float, specificity: float | None, prevalence: float
) -> tuple[float | None, float | None]:
    """PPV and NPV at `prevalence` from sensitivity and specificity (Bayes' rule); None where
    the denominator is zero or specificity is undefined."""
    if specificity is None:
        return None, None
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return (tp / (tp + fp) if tp + fp else None), (tn / (tn + fn) if tn + fn else None)


def worse_p(paired: dict[str, Any]) -> float | None:
    """The smallest exact McNemar p among the classes (positives, negatives) where the target got
    more cases wrong that the reference got right than the other way round; None if neither."""
    ps = [
        t["mcnemar_p"]
        for t in (paired["positives"], paired["negatives"])
        if t["reference_right_target_wrong"] > t["reference_wrong_target_right"]
    ]
    return min(ps) if ps else None


def metric_gates(c: Clinical, ev: dict[str, Any] | None, g: GatesConfig) -> list[Check]:
    """The gate lines of every metric gate set in `g`, on the metrics `c` and the evidence `ev`
    (paired tests and calibration; None where there is no reference)."""
    checks: list[Check] = []
    no_neg, no_ref = "no negatives in the data", "no reference to compare with"
    if g.min_specificity is not None:
        checks.append(_at_least("min_specificity", c.specificity, g.min_specificity, no_neg))
    if g.max_specificity_drop is not None:
        why = no_ref if c.reference_sensitivity is None else no_neg
        checks.append(
            _at_most("max_specificity_drop", c.specificity_drop, g.max_specificity_drop, why)
        )
    if g.min_auc is not None:
        checks.append(_at_least("min_auc", c.auc, g.min_auc, "one class is absent"))
    if g.max_auc_drop is not None:
        why = no_ref if c.reference_sensitivity is None else "one class is absent"
        checks.append(_at_most("max_auc_drop", c.auc_drop, g.max_auc_drop, why))
    if g.prevalence is not None:
        ppv, npv = predictive_values(c.sensitivity, c.specificity, g.prevalence)
        why = f"{no_neg}, or no positive decisions at prevalence {g.prevalence:g}"
        if g.min_ppv is not None:
            checks.append(_at_least("min_ppv", ppv, g.min_ppv, why))
        if g.min_npv is not None:
            checks.append(_at_least("min_npv", npv, g.min_npv, why))
    if g.max_flip_rate is not None:
        rate = None if c.flipped is None or not c.n else len(c.flipped) / c.n
        checks.append(_at_most("max_flip_rate", rate, g.max_flip_rate, no_ref))
    calibration = (ev or {}).get("calibration") or {}
    if g.max_ece_increase is not None:
        ref = calibration.get("reference")
        increase = None if ref is None else calibration["target"]["ece"] - ref["ece"]
        checks.append(_at_most("max_ece_increase", increase, g.max_ece_increase, no_ref))
    if g.paired_alpha is not None:
        checks.append(_paired_gate((ev or {}).get("paired"), g.paired_alpha))
    return checks


def _paired_gate(paired: dict[str, Any] | None, alpha: float) -> Check:
    if paired is None:
        return Check("paired_alpha", None, alpha, False, "undefined: no reference to compare with")
    p = worse_p(paired)
    if p is None:
        return Check(
            "paired_alpha", 1.0, alpha, True, "the target is not worse among positives or negatives"
        )
    return Check("paired_alpha", float(f"{p:.6g}"), alpha, p >= alpha, "exact McNemar p")


def custom_metric_names() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=METRICS_GROUP)}


def check_custom(g: GatesConfig) -> None:
    """Before any work: every [gates.custom] name is an installed `packager.metrics` entry point."""
    installed = custom_metric_names()
    for name in g.custom:
        if name not in installed:
            have = ", ".join(sorted(installed)) or "none installed"
            raise UserError(
                f"[gates.custom] {name}: no '{METRICS_GROUP}' entry point of that name "
                f"({have}); install the package that provides it"
            )


def custom_gates(
    g: GatesConfig, labels: np.ndarray, probs: np.ndarray, metadata: dict[str, np.ndarray]
) -> list[Check]:
    """One gate line per bound of each [gates.custom] metric, named custom:<name> and recorded
    with the distribution and version that provided it. A metric that raises or is not finite
    fails closed."""
    checks = []
    installed = custom_metric_names()
    for name, bounds in sorted(g.custom.items()):
        ep = installed[name]
        source = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
        value: float | None = None
        why = f"{METRICS_GROUP} {name} from {source}"
        try:
            fn: Callable[..., Any] = ep.load()
            value = float(fn(labels, probs, metadata))
            if not math.isfinite(value):
                value, why = None, f"undefined: {name} is not finite ({why})"
        except Exception as exc:  # a user's metric failing is a failed gate, not a crash
            value, why = None, f"undefined: {name} raised {type(exc).__name__}: {exc} ({why})"
        for bound, limit in sorted(bounds.items()):
            gate = f"custom:{name}:{bound}"
            if value is None:
                checks.append(Check(gate, None, limit, False, why))
            else:
                ok = value >= limit - SLACK if bound == "min" else value <= limit + SLACK
                checks.append(Check(gate, round(value, 6), limit, ok, why))
    return checks
