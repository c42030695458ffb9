"""The gates of site acceptance (`packager validate BUNDLE --data SITE`): a site's data can only
pass a gate its numbers support. Each gate decides on the 95% interval, not the point estimate:

- min_sensitivity passes when the Wilson interval's lower bound clears the limit, fails when the
  point estimate itself misses it, and otherwise has `insufficient evidence` (one positive image
  detected is sensitivity 1.0 with an interval from 0.21);
- max_sensitivity_drop compares this site's sensitivity with the build-time sensitivity of the
  reference recorded in the bundle's report.json (independent samples: Newcombe's hybrid score
  interval of the difference, from statsmodels): it passes when the interval's upper bound is
  within the limit; with no recorded reference it is listed as not applied, with the reason;
- a metric whose denominator is empty (no positives, or no negatives for specificity) is
  `undefined` and fails closed.

Every line keeps the boolean `passed` (true only for `pass`), so readers of gate lines work."""

from __future__ import annotations

from typing import Any

from statsmodels.stats.proportion import confint_proportions_2indep

from packager.core.config import Config
from packager.core.metrics import Clinical, wilson
from packager.core.status import CheckStatus
from packager.reports.evidence import SUBGROUP_GATES

PASS, FAIL, INSUFFICIENT, UNDEFINED = "pass", "fail", "insufficient evidence", "undefined"
LOWER, UPPER, EVERY = "95% lower bound", "95% upper bound", "every output"
# The site's verdict is the worst of its lines, in this order (one positive image: its
# sensitivity gate has insufficient evidence, and with no negatives specificity is undefined).
SEVERITY = (FAIL, INSUFFICIENT, UNDEFINED, PASS)


def line(
    name: str,
    value: float | bool | None,
    limit: Any,
    verdict: str,
    decided_on: str,
    ci95: tuple[float, float] | None,
    reason: str,
) -> dict[str, Any]:
    passed = verdict == PASS
    return {
        "name": name,
        "value": None if value is None else round(value, 6) if isinstance(value, float) else value,
        "limit": limit,
        "passed": passed,
        "status": CheckStatus.passed if passed else CheckStatus.failed,
        "reason": reason,
        "verdict": verdict,
        "decided_on": decided_on,
        "ci95": None if ci95 is None else [float(ci95[0]), float(ci95[1])],
    }


def rate(hits: int, n: int) -> dict[str, Any]:
    """A proportion with its 95% Wilson interval; value and interval None when n is 0."""
    return {
        "value": hits / n if n else None,
        "ci95": list(wilson(hits, n)) if n else None,
        "hits": hits,
        "n": n,
    }


def min_rate(name: str, hits: int, n: int, limit: float, metric: str, of: str) -> dict[str, Any]:
    if n == 0:
        return line(
            name, None, limit, UNDEFINED, LOWER, None, f"{metric} is undefined: no {of} in the data"
        )
    point = hits / n
    lo, hi = wilson(hits, n)
    if lo >= limit:
        verdict, why = PASS, f"its 95% interval starts at {lo:.4f}, at or above {limit}"
    elif point < limit:
        verdict, why = FAIL, f"{point:.4f} ({hits}/{n} {of}) is below {limit}"
    else:
        verdict, why = (
            INSUFFICIENT,
            f"{point:.4f} ({hits}/{n} {of}), but its 95% interval starts at {lo:.4f}, below "
            f"{limit}: {n} {of} cannot show it",
        )
    return line(name, point, limit, verdict, LOWER, (lo, hi), f"{metric} {why}")


def max_drop(
    name: str, ref_hits: int, ref_n: int, hits: int, n: int, limit: float, of: str
) -> dict[str, Any]:
    """The build-time reference rate minus this site's, against `limit`."""
    if n == 0:
        return line(
            name, None, limit, UNDEFINED, UPPER, None, f"the drop is undefined: no {of} here"
        )
    drop = ref_hits / ref_n - hits / n
    lo, hi = confint_proportions_2indep(ref_hits, ref_n, hits, n, method="newcomb", compare="diff")
    lo, hi = float(lo), float(hi)
    basis = f"build-time reference {ref_hits}/{ref_n} {of}, this site {hits}/{n}"
    if hi <= limit + 1e-12:
        verdict, why = PASS, f"its 95% interval ends at {hi:.4f}, within {limit}"
    elif drop > limit + 1e-12:
        verdict, why = FAIL, f"{drop:.4f} is above {limit}"
    else:
        verdict, why = (
            INSUFFICIENT,
            f"{drop:.4f}, but its 95% interval reaches {hi:.4f}, above {limit}",
        )
    return line(name, drop, limit, verdict, UPPER, (lo, hi), f"the drop {why} ({basis})")


def site_gates(
    clin: Clinical, cfg: Config, build: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(gate lines, gates not applied with their reason) of the bundle's gates on this site's
    data; `build` is the bundle's report.json clinical section."""
    g = cfg.gates
    tp, n_pos = clin.confusion["tp"], clin.positives
    checks = [
        line(
            "finite_outputs",
            clin.finite,
            True,
            PASS if clin.finite else FAIL,
            EVERY,
            None,
            "" if clin.finite else "NaN or Inf scores",
        ),
        min_rate("min_sensitivity", tp, n_pos, g.min_sensitivity, "sensitivity", "positives"),
    ]
    not_applied = []
    ref_sens, ref_n = build.get("reference_sensitivity"), build.get("positives")
    if ref_sens is None or not ref_n:
        not_applied.append(
            {
                "name": "max_sensitivity_drop",
                "limit": g.max_sensitivity_drop,
                "reason": "the bundle's report.json records no build-time reference sensitivity "
                "to measure a drop from",
            }
        )
    else:
        ref_hits = round(ref_sens * ref_n)
        checks.append(
            max_drop(
                "max_sensitivity_drop",
                ref_hits,
                ref_n,
                tp,
                n_pos,
                g.max_sensitivity_drop,
                "positives",
            )
        )
    not_applied += [
        {
            "name": name,
            "limit": getattr(g, name),
            "reason": "subgroup gates are not applied to site data; the report gives each "
            "--group-by value's counts and 95% intervals instead",
        }
        for name in SUBGROUP_GATES
        if getattr(g, name) is not None
    ]
    return checks, not_applied


def site_verdict(checks: list[dict[str, Any]], specificity: dict[str, Any]) -> tuple[str, str]:
    """The worst verdict of the gate lines, and the reason naming every line that is not a
    pass. Specificity undefined (no negatives) fails closed too, even with no gate on it."""
    found = [(c["verdict"], f"{c['name']}: {c['reason']}") for c in checks]
    if specificity["value"] is None:
        found.append((UNDEFINED, "specificity is undefined: no negatives in the data"))
    worst = min((v for v, _ in found), key=SEVERITY.index, default=PASS)
    if worst == PASS:
        return PASS, "every gate passed on this site's data and runtime, on its 95% interval"
    return worst, f"{worst}: " + "; ".join(why for v, why in found if v != PASS)
