"""The clinical gates: sensitivity, specificity, AUC, PPV/NPV at a declared prevalence, flip rate,
calibration, the paired test, one class against the rest, plus custom metrics from
`packager.metrics` entry points. Each is off unless set in [gates] (sensitivity is on by default).

Each gate's verdict is `pass`, `fail`, `insufficient evidence` or `undefined` (`decide`). With
[gates] decide_on = "ci" it decides on its 95% interval: a min_ gate passes only when the lower
bound is at or above the limit, a max_ gate only when the upper bound is within it, and a point
estimate that meets the limit with a bound that does not is `insufficient evidence`. With
"point" it decides on the estimate (the interval is still recorded where there is one). A metric
whose denominator is empty is `undefined`. Only `pass` passes: the other three fail closed.

The intervals: Wilson for a proportion (sensitivity, specificity, flip rate), Newcombe's paired
interval for a drop in sensitivity or specificity (packager.reports.evidence, same images for the
reference and the target), a stratified percentile bootstrap for the AUC and its drop
(packager.core.metrics.auc_ci95). PPV/NPV, the ECE increase and custom metrics have no interval
here: they decide on the point estimate, and say so."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import numpy as np

from packager.core.config import GatesConfig
from packager.core.errors import UserError
from packager.core.metrics import Clinical, wilson
from packager.core.status import Basis, GateVerdict
from packager.core.target import Check

METRICS_GROUP = "packager.metrics"
SLACK = 1e-12  # a value equal to its limit passes, whatever the float rounding of either
Side = Literal["min", "max"]
NO_INTERVAL = "decided on the point estimate: packager has no 95% interval for this metric"


def on_bounds(g: GatesConfig, default: Literal["point", "ci"]) -> bool:
    """Whether the gates decide on 95% bounds: [gates] decide_on, else the caller's default
    ("point" at build, "ci" at site acceptance)."""
    return (g.decide_on or default) == "ci"


def side_of(name: str) -> Side:
    """A gate's side from its name: max_* and custom:<name>:max are ceilings, the rest floors."""
    return "max" if name.startswith("max_") or name.endswith(":max") else "min"


def _meets(x: float, limit: float, side: Side) -> bool:
    return x >= limit - SLACK if side == "min" else x <= limit + SLACK


def decide(
    name: str,
    value: float | None,
    limit: float,
    side: Side,
    ci95: tuple[float, float] | None,
    bounds: bool,
    undefined: str,
    why: str = "",
) -> Check:
    """One gate line: `value` (None: the metric is undefined, and `undefined` says why) against
    `limit`, a lower limit for side "min" and an upper one for "max", on the point estimate or,
    with `bounds` and an interval `ci95`, on that interval's bound on the gate's side."""
    bound_basis = Basis.lower if side == "min" else Basis.upper
    if value is None:
        return Check(
            name,
            None,
            limit,
            False,
            f"undefined: {undefined}",
            verdict=GateVerdict.undefined,
            decided_on=bound_basis if bounds else Basis.point,
        )
    point_ok = _meets(value, limit, side)
    notes = [why] if why else []
    if not bounds or ci95 is None:
        if bounds:
            notes.append(NO_INTERVAL)
        verdict = GateVerdict.passed if point_ok else GateVerdict.failed
        basis = Basis.point
    else:
        bound = ci95[0] if side == "min" else ci95[1]
        if _meets(bound, limit, side):
            verdict = GateVerdict.passed
            notes.append(f"{bound_basis} {bound:.4g} {'≥' if side == 'min' else '≤'} {limit:g}")
        elif not point_ok:
            verdict = GateVerdict.failed
            notes.append(
                f"the point estimate {value:.4g} is {'below' if side == 'min' else 'above'} {limit:g}"
            )
        else:
            verdict = GateVerdict.insufficient
            notes.append(
                f"the point estimate {value:.4g} meets {limit:g}, but its {bound_basis} "
                f"{bound:.4g} does not: the data cannot show it"
            )
        basis = bound_basis
    return Check(
        name,
        round(value, 6),
        limit,
        verdict == GateVerdict.passed,
        "; ".join(notes),
        verdict=verdict,
        decided_on=basis,
        ci95=ci95,
    )


def proportion(hits: int, n: int) -> tuple[float | None, tuple[float, float] | None]:
    """hits / n with its 95% Wilson interval; (None, None) when n is 0."""
    return (hits / n, wilson(hits, n)) if n else (None, None)


def sensitivity_gates(
    c: Clinical, g: GatesConfig, paired: dict[str, Any] | None, bounds: bool, drop: bool
) -> list[Check]:
    """min_sensitivity (Wilson) and, with `drop` and a reference, max_sensitivity_drop
    (Newcombe's paired interval from the evidence's `paired` positives)."""
    value, ci = proportion(c.confusion["tp"], c.positives)
    checks = [
        decide(
            "min_sensitivity",
            value,
            g.min_sensitivity,
            "min",
            ci,
            bounds,
            "no positives in the data",
        )
    ]
    if drop and c.sensitivity_drop is not None:
        checks.append(
            decide(
                "max_sensitivity_drop",
                c.sensitivity_drop if c.positives else None,
                g.max_sensitivity_drop,
                "max",
                _paired_ci(paired, "positives"),
                bounds,
                "no positives in the data",
            )
        )
    return checks


def _paired_ci(paired: dict[str, Any] | None, cls: str) -> tuple[float, float] | None:
    """Newcombe's paired 95% interval of reference minus target among `cls`."""
    return None if paired is None else interval(paired[cls]["drop_ci95"])


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
    (paired tests, calibration and AUC intervals; None where there is no reference). They are a
    build's gates: on 95% bounds only where [gates] decide_on = "ci"."""
    bounds = on_bounds(g, "point")
    ev = ev or {}
    paired = ev.get("paired")
    auc_ci = ev.get("auc_ci95") or {}
    checks: list[Check] = []
    no_neg, no_ref = "no negatives in the data", "no reference to compare with"
    n_neg = c.confusion["tn"] + c.confusion["fp"]
    if g.min_specificity is not None:
        _, ci = proportion(c.confusion["tn"], n_neg)
        checks.append(
            decide("min_specificity", c.specificity, g.min_specificity, "min", ci, bounds, no_neg)
        )
    if g.max_specificity_drop is not None:
        why = no_ref if c.reference_sensitivity is None else no_neg
        checks.append(
            decide(
                "max_specificity_drop",
                c.specificity_drop,
                g.max_specificity_drop,
                "max",
                _paired_ci(paired, "negatives"),
                bounds,
                why,
            )
        )
    if g.min_auc is not None:
        ci = interval(auc_ci.get("target"))
        checks.append(decide("min_auc", c.auc, g.min_auc, "min", ci, bounds, "one class is absent"))
    if g.max_auc_drop is not None:
        why = no_ref if c.reference_sensitivity is None else "one class is absent"
        ci = interval(auc_ci.get("drop"))
        checks.append(decide("max_auc_drop", c.auc_drop, g.max_auc_drop, "max", ci, bounds, why))
    if g.prevalence is not None:
        ppv, npv = predictive_values(c.sensitivity, c.specificity, g.prevalence)
        why = f"{no_neg}, or no positive decisions at prevalence {g.prevalence:g}"
        if not c.positives:
            ppv = npv = None
            why = "no positives in the data"
        if g.min_ppv is not None:
            checks.append(decide("min_ppv", ppv, g.min_ppv, "min", None, bounds, why))
        if g.min_npv is not None:
            checks.append(decide("min_npv", npv, g.min_npv, "min", None, bounds, why))
    if g.max_flip_rate is not None:
        rate, ci = (None, None) if c.flipped is None else proportion(len(c.flipped), c.n)
        checks.append(decide("max_flip_rate", rate, g.max_flip_rate, "max", ci, bounds, no_ref))
    calibration = ev.get("calibration") or {}
    if g.max_ece_increase is not None:
        ref = calibration.get("reference")
        increase = None if ref is None else calibration["target"]["ece"] - ref["ece"]
        checks.append(
            decide("max_ece_increase", increase, g.max_ece_increase, "max", None, bounds, no_ref)
        )
    if g.paired_alpha is not None:
        checks.append(_paired_gate(paired, g.paired_alpha))
    return checks + class_gates(c, g, bounds)


def finding_positives(positives: int, g: GatesConfig) -> Check:
    """min_finding_positives for one finding of a multi-label model: fewer positives than the
    limit are too few to support its sensitivity claim, whatever the estimate."""
    limit = g.min_finding_positives
    if positives >= limit:
        return Check("min_finding_positives", positives, limit, True, "", decided_on=Basis.point)
    return Check(
        "min_finding_positives",
        positives,
        limit,
        False,
        f"insufficient evidence: {positives} positive images, fewer than {limit}; add positives "
        "to the validation data or lower min_finding_positives ([gates], or per finding in "
        "[gates.findings.<name>])",
        verdict=GateVerdict.insufficient,
        decided_on=Basis.point,
    )


def interval(ci: list[float] | None) -> tuple[float, float] | None:
    """An interval as report.json stores it (a list), as a gate reads it."""
    return None if ci is None else (float(ci[0]), float(ci[1]))


def class_gates(c: Clinical, g: GatesConfig, bounds: bool) -> list[Check]:
    """[gates.classes.<name>]: each class against the rest (Clinical.classes), named e.g.
    `min_sensitivity[class=bright-normal]`."""
    checks = []
    for name, cg in g.classes.items():
        counts = (c.classes or {}).get(name)
        if counts is None:  # the metrics were computed without the class names
            raise ValueError(f"no per-class counts for class {name!r}")
        gate = f"[class={name}]"
        if cg.min_sensitivity is not None:
            value, ci = proportion(counts["tp"], counts["tp"] + counts["fn"])
            checks.append(
                decide(
                    f"min_sensitivity{gate}",
                    value,
                    cg.min_sensitivity,
                    "min",
                    ci,
                    bounds,
                    f"no images of class {name} in the data",
                )
            )
        if cg.min_specificity is not None:
            value, ci = proportion(counts["tn"], counts["tn"] + counts["fp"])
            checks.append(
                decide(
                    f"min_specificity{gate}",
                    value,
                    cg.min_specificity,
                    "min",
                    ci,
                    bounds,
                    f"no images of another class than {name} in the data",
                )
            )
    return checks


def _paired_gate(paired: dict[str, Any] | None, alpha: float) -> Check:
    """An exact test is its own evidence: it decides on its p-value, whatever decide_on says."""
    if paired is None:
        return Check(
            "paired_alpha",
            None,
            alpha,
            False,
            "undefined: no reference to compare with",
            verdict=GateVerdict.undefined,
        )
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
    g: GatesConfig,
    labels: np.ndarray,
    probs: np.ndarray,
    metadata: dict[str, np.ndarray],
) -> list[Check]:
    """One gate line per bound of each [gates.custom] metric, named custom:<name> and recorded
    with the distribution and version that provided it. A metric that raises or is not finite is
    undefined and fails closed. A custom metric has no interval: it decides on its value."""
    checks = []
    on_ci = on_bounds(g, "point")
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
        for side, limit in sorted(bounds.items()):
            gate = f"custom:{name}:{side}"
            if value is None:
                checks.append(Check(gate, None, limit, False, why, verdict=GateVerdict.undefined))
            else:
                limit_side: Side = "min" if side == "min" else "max"
                checks.append(decide(gate, value, limit, limit_side, None, on_ci, "", why))
    return checks
