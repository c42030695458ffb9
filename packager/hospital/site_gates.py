"""The gates of site acceptance (`packager validate BUNDLE --data SITE`): a site's data can only
pass a gate its numbers support. Each gate decides on the 95% interval, not the point estimate
(unless the bundle's [gates] decide_on = "point"), by the one rule every gate follows,
packager.core.gates.decide:

- min_sensitivity passes when the Wilson interval's lower bound clears the limit, fails when the
  point estimate itself misses it, and otherwise has `insufficient evidence` (one positive image
  detected is sensitivity 1.0 with an interval from 0.21);
- max_sensitivity_drop compares this site's sensitivity with the build-time sensitivity of the
  reference recorded in the bundle's report.json (independent samples: Newcombe's hybrid score
  interval of the difference, from statsmodels): it passes when the interval's upper bound is
  within the limit; with no recorded reference it is listed as not applied, with the reason;
- a metric whose denominator is empty (no positives, or no negatives for specificity) is
  `undefined` and fails closed;
- per value of each group column, the same two gates with the same semantics, limited by the
  bundle's min_subgroup_sensitivity / max_subgroup_sensitivity_drop where it sets them, else by
  the overall limits; a subgroup with fewer than min_subgroup_positives positives has
  `insufficient evidence`, whatever its point estimate.

Every line keeps the boolean `passed` (true only for `pass`), so readers of gate lines work."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from packager.core.config import Config, GatesConfig
from packager.core.gates import decide, on_bounds, proportion
from packager.core.metrics import Clinical, wilson
from packager.core.status import Basis, CheckStatus, GateVerdict
from packager.core.target import Check
from packager.reports.evidence import SUBGROUP_GATES

PASS, FAIL = GateVerdict.passed, GateVerdict.failed
INSUFFICIENT, UNDEFINED = GateVerdict.insufficient, GateVerdict.undefined
LOWER, UPPER, EVERY = Basis.lower, Basis.upper, Basis.every
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
    if isinstance(value, float):
        value = round(value, 6)
    check = Check(
        name,
        value,
        limit,
        verdict == PASS,
        reason,
        verdict=GateVerdict(verdict),
        decided_on=Basis(decided_on),
        ci95=ci95,
    )
    return check.to_dict()


def rate(hits: int, n: int) -> dict[str, Any]:
    """A proportion with its 95% Wilson interval; value and interval None when n is 0."""
    return {
        "value": hits / n if n else None,
        "ci95": list(wilson(hits, n)) if n else None,
        "hits": hits,
        "n": n,
    }


def min_rate(
    name: str, hits: int, n: int, limit: float, metric: str, of: str, bounds: bool = True
) -> dict[str, Any]:
    """`metric` = hits / n against a lower `limit`, on its Wilson interval's lower bound
    (packager.core.gates.decide)."""
    value, ci = proportion(hits, n)
    check = decide(name, value, limit, "min", ci, bounds, f"no {of} in the data")
    counts = f"{hits}/{n} {of}"
    if check.verdict == INSUFFICIENT:
        counts += f": {n} {of[:-1] if n == 1 else of} cannot show it"  # "1 positive"
    check.reason = f"{metric}: {check.reason} ({counts})"
    return check.to_dict()


def max_drop(
    name: str,
    ref_hits: int,
    ref_n: int,
    hits: int,
    n: int,
    limit: float,
    of: str,
    bounds: bool = True,
) -> dict[str, Any]:
    """The build-time reference rate minus this site's, against `limit`."""
    ci = None
    if n:
        from statsmodels.stats.proportion import confint_proportions_2indep  # ~0.3 s

        lo, hi = confint_proportions_2indep(
            ref_hits, ref_n, hits, n, method="newcomb", compare="diff"
        )
        ci = (float(lo), float(hi))
    drop = ref_hits / ref_n - hits / n if n else None
    check = decide(name, drop, limit, "max", ci, bounds, f"no {of} here")
    basis = f"build-time reference {ref_hits}/{ref_n} {of}, this site {hits}/{n}"
    check.reason = f"the drop: {check.reason} ({basis})"
    return check.to_dict()


def _reference(build: dict[str, Any]) -> tuple[int, int] | None:
    """(detected, positives) of the reference at build time, from report.json's clinical
    section; None when it records no reference."""
    ref_sens, ref_n = build.get("reference_sensitivity"), build.get("positives")
    if ref_sens is None or not ref_n:
        return None
    return round(ref_sens * ref_n), ref_n


def site_gates(
    clin: Clinical, cfg: Config, build: dict[str, Any], grouped: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(gate lines, gates not applied with their reason) of the bundle's gates on this site's
    data; `build` is the bundle's report.json clinical section; `grouped`: the data has group
    columns (then the subgroup gates are applied per subgroup, by `subgroups`)."""
    g = cfg.gates
    bounds = on_bounds(g, "ci")
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
        min_rate(
            "min_sensitivity", tp, n_pos, g.min_sensitivity, "sensitivity", "positives", bounds
        ),
    ]
    not_applied = []
    ref = _reference(build)
    if ref is None:
        not_applied.append(
            {
                "name": "max_sensitivity_drop",
                "limit": g.max_sensitivity_drop,
                "reason": "the bundle's report.json records no build-time reference sensitivity "
                "to measure a drop from (overall or per subgroup)",
            }
        )
    else:
        checks.append(
            max_drop(
                "max_sensitivity_drop", *ref, tp, n_pos, g.max_sensitivity_drop, "positives", bounds
            )
        )
    if not grouped:
        not_applied += [
            {
                "name": name,
                "limit": getattr(g, name),
                "reason": "this data has no group column (pass --group-by COL with a labels.csv "
                "that has it)",
            }
            for name in SUBGROUP_GATES
            if getattr(g, name) is not None
        ]
    return checks, not_applied


def subgroup_lines(
    where: str, hits: int, n: int, g: GatesConfig, ref: tuple[int, int] | None
) -> list[dict[str, Any]]:
    """The site gates on one subgroup's positives (`where` is e.g. "[site=B]")."""
    low = g.min_sensitivity if g.min_subgroup_sensitivity is None else g.min_subgroup_sensitivity
    bounds = on_bounds(g, "ci")
    lines = [min_rate(f"min_sensitivity{where}", hits, n, low, "sensitivity", "positives", bounds)]
    if ref is not None:
        drop = g.max_sensitivity_drop
        if g.max_subgroup_sensitivity_drop is not None:
            drop = g.max_subgroup_sensitivity_drop
        name = f"max_sensitivity_drop{where}"
        lines.append(max_drop(name, *ref, hits, n, drop, "positives", bounds))
    if 0 < n < g.min_subgroup_positives:  # too few to judge: never a pass, nor a fail
        few = f"{n} positives, fewer than min_subgroup_positives ({g.min_subgroup_positives})"
        lines = [
            x
            | {"verdict": INSUFFICIENT, "passed": False, "status": CheckStatus.failed}
            | {"reason": f"{few}: too few to judge; {x['reason']}"}
            for x in lines
        ]
    return lines


def subgroups(
    metadata: dict[str, np.ndarray],
    y: np.ndarray,
    pred: np.ndarray,
    cfg: Config,
    build: dict[str, Any],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per value of each group column: counts, sensitivity and specificity with 95% Wilson
    intervals, and the site gates on that subgroup (`subgroup_lines`) with their worst verdict.
    `y`: truly positive, `pred`: decided positive, per image."""
    ref = _reference(build)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for col, values in metadata.items():
        rows = {}
        for v in sorted(set(values.tolist())):
            m = values == v
            tp, pos = int((pred & y & m).sum()), int((y & m).sum())
            tn, neg = int((~pred & ~y & m).sum()), int((~y & m).sum())
            sens, spec = rate(tp, pos), rate(tn, neg)
            lines = subgroup_lines(f"[{col}={v}]", tp, pos, cfg.gates, ref)
            rows[v] = {
                "n": int(m.sum()),
                "positives": pos,
                "negatives": neg,
                "sensitivity": sens["value"],
                "sensitivity_ci95": sens["ci95"],
                "specificity": spec["value"],
                "specificity_ci95": spec["ci95"],
                "verdict": worst(x["verdict"] for x in lines),
                "gates": lines,
            }
        out[col] = rows
    return out


def worst(verdicts: Iterable[str]) -> str:
    return min(verdicts, key=SEVERITY.index, default=PASS)


def site_verdict(
    checks: list[dict[str, Any]],
    groups: dict[str, dict[str, dict[str, Any]]],
    specificity: dict[str, Any],
) -> tuple[str, str]:
    """The worst verdict of the gate lines and the subgroups, and the reason naming every line
    that is not a pass (subgroups by name and verdict only: their lines say why). Specificity
    undefined (no negatives) fails closed too, even with no gate on it."""
    found = [(c["verdict"], f"{c['name']}: {c['reason']}") for c in checks]
    if specificity["value"] is None:
        found.append((UNDEFINED, "specificity is undefined: no negatives in the data"))
    short = [
        (row["verdict"], f"{col}={value} {row['verdict']}")
        for col, rows in groups.items()
        for value, row in rows.items()
        if row["verdict"] != PASS
    ]
    verdict = worst(v for v, _ in found + short)
    if verdict == PASS:
        scope = " and in every subgroup" if groups else ""
        return (
            PASS,
            f"every gate passed on this site's data and runtime{scope}, on its 95% interval",
        )
    why = [w for v, w in found if v != PASS]
    if short:
        why.append("subgroups: " + ", ".join(w for _, w in short))
    return verdict, f"{verdict}: " + "; ".join(why)
