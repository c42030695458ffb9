"""The evidence a clinical safety officer signs: the target compared pair by pair with the
reference (exact McNemar, a paired interval for the sensitivity drop, what the set could detect
at all), subgroups, calibration and how fragile the operating point is. Computed once per build
from the same arrays as the clinical metrics, stored in report.json under clinical.evidence."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from packager.core.config import Config, GatesConfig
from packager.core.errors import UserError
from packager.core.gates import decide, interval, on_bounds
from packager.core.metrics import BOOTSTRAP_RESAMPLES, auc_ci95, wilson
from packager.core.schema import shown
from packager.core.status import GateVerdict
from packager.core.target import Check

if TYPE_CHECKING:
    from packager.core.data import Dataset

ALPHA = 0.05  # two-sided, for McNemar and the detectable drop
POWER = 0.80
MARGINS = (0.01, 0.02, 0.05)  # probability-space distances from the threshold (fragility)
CALIBRATION_BINS = 10
MAX_SUBGROUPS = 50  # more distinct values than this is an identifier column, not a subgroup
MISSING = "(missing)"
SUBGROUP_GATES = ("min_subgroup_sensitivity", "max_subgroup_sensitivity_drop")


# ---- paired comparison ---------------------------------------------------------------------


def newcombe_paired(n11: int, n12: int, n21: int, n22: int) -> tuple[float, float]:
    """95% interval for p1 - p2 of a paired 2x2 table (rows: first rater right/wrong, columns:
    second), Newcombe's method 10 (Stat Med 1998;17:2635): Wilson limits of both margins,
    combined with a continuity-corrected phi. Unlike a bootstrap it does not collapse to [0, 0]
    when no pair is discordant."""
    n = n11 + n12 + n21 + n22
    if n == 0:
        return (-1.0, 1.0)
    a, b = n11 + n12, n11 + n21  # successes of the first and of the second
    p1, p2 = a / n, b / n
    l1, u1 = wilson(a, n)
    l2, u2 = wilson(b, n)
    phi = 0.0
    if min(a, n - a, b, n - b) > 0:
        prod = math.sqrt(a * (n - a) * b * (n - b))
        cross = n11 * n22 - n12 * n21
        phi = (cross - n / 2) / prod if cross > n / 2 else cross / prod if cross < 0 else 0.0
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def mcnemar_critical(alpha: float = ALPHA) -> int:
    """Fewest discordant pairs, all in one direction, that the exact McNemar test calls
    significant at two-sided `alpha` (6 at 5%)."""
    b = 1
    while 2 * 0.5**b > alpha:
        b += 1
    return b


def detectable_drop(n_pos: int, power: float = POWER, alpha: float = ALPHA) -> float | None:
    """Smallest true sensitivity drop that the exact McNemar test detects with `power` on
    `n_pos` positives, if the target loses each positive independently with that probability
    and gains none: P(Binomial(n_pos, drop) >= critical) = power."""
    from scipy.optimize import brentq  # scipy/sklearn/statsmodels (~0.9 s) only when counting
    from scipy.stats import binom

    k = mcnemar_critical(alpha)
    if n_pos < k:
        return None  # no drop, however large, can reach significance
    return float(brentq(lambda d: binom.sf(k - 1, n_pos, d) - power, 1e-12, 1 - 1e-12))


def _pair_table(truth: np.ndarray, ref_right: np.ndarray, tgt_right: np.ndarray) -> dict[str, Any]:
    """Discordant decisions among one class (positives or negatives)."""
    n11 = int((truth & ref_right & tgt_right).sum())
    n12 = int((truth & ref_right & ~tgt_right).sum())  # reference right, target wrong
    n21 = int((truth & ~ref_right & tgt_right).sum())  # reference wrong, target right
    n22 = int((truth & ~ref_right & ~tgt_right).sum())
    from statsmodels.stats.contingency_tables import mcnemar

    test = mcnemar(np.array([[n11, n12], [n21, n22]]), exact=True)
    return {
        "n": n11 + n12 + n21 + n22,
        "both_right": n11,
        "reference_right_target_wrong": n12,
        "reference_wrong_target_right": n21,
        "both_wrong": n22,
        "mcnemar_p": float(test.pvalue),
        # reference rate - target rate: positive means the target is worse
        "drop_ci95": list(newcombe_paired(n11, n12, n21, n22)),
    }


def paired(
    y: np.ndarray, p: np.ndarray, ref: np.ndarray, threshold: float, gates: GatesConfig
) -> dict[str, Any]:
    pred, ref_pred = p >= threshold, ref >= threshold
    pos = _pair_table(y, ref_pred, pred)
    neg = _pair_table(~y, ~ref_pred, ~pred)
    n_pos = int(y.sum())
    drop = (pos["reference_right_target_wrong"] - pos["reference_wrong_target_right"]) / max(
        1, n_pos
    )
    smallest = detectable_drop(n_pos)
    sens = float(pred[y].mean()) if n_pos else None
    sens_lo = wilson(int(pred[y].sum()), n_pos)[0]
    return {
        "positives": pos,
        "negatives": neg,
        "sensitivity_drop": drop,
        "one_positive": 1 / n_pos if n_pos else None,
        "detectable_drop": smallest,
        "power": POWER,
        "alpha": ALPHA,
        "claims": _claims(drop, pos["drop_ci95"], smallest, sens, sens_lo, n_pos, gates),
    }


def _pts(x: float) -> str:
    return f"{100 * x:.2f} pts"


def _claims(
    drop: float,
    drop_ci: list[float],
    smallest: float | None,
    sens: float | None,
    sens_lo: float,
    n_pos: int,
    gates: GatesConfig,
) -> list[dict[str, Any]]:
    """Whether this set can support what each clinical gate claims. The gates still decide on
    the point estimates; these say plainly when the set is too small to back them."""
    out = []
    limit = gates.max_sensitivity_drop
    one = f"one positive is {_pts(1 / n_pos)}" if n_pos else "no positives"
    if drop > limit + 1e-12:
        text = f"the gate failed on the point estimate ({_pts(drop)} > {_pts(limit)})"
    elif drop_ci[1] <= limit + 1e-12:
        text = (
            f"supported: the 95% interval of the paired drop ends at {_pts(drop_ci[1])}, "
            f"within the gate's {_pts(limit)}"
        )
    else:
        text = (
            f"too small to support it: the 95% interval of the paired drop reaches "
            f"{_pts(drop_ci[1])}, above the gate's {_pts(limit)} ({n_pos} positives; {one})"
        )
    if smallest is None:
        text += f"; with {n_pos} positives no drop can reach significance"
    elif smallest > limit:
        text += (
            f"; the smallest drop this set detects with {POWER:.0%} power is "
            f"{_pts(smallest)}, so a drop at the gate's limit would usually go unnoticed"
        )
    out.append(
        {"gate": "max_sensitivity_drop", "supported": drop_ci[1] <= limit + 1e-12, "text": text}
    )
    g = gates.min_sensitivity
    if sens is None:
        ok, text = False, "too small to support it: the set has no positives"
    elif sens < g:
        ok, text = False, f"the gate failed on the point estimate ({sens:.2%} < {g:.2%})"
    elif sens_lo >= g:
        ok, text = True, f"supported: the sensitivity's 95% interval starts at {sens_lo:.2%}"
    else:
        ok = False
        text = (
            f"too small to support it: the sensitivity's 95% interval starts at {sens_lo:.2%}, "
            f"below the gate's {g:.2%} ({n_pos} positives)"
        )
    out.append({"gate": "min_sensitivity", "supported": ok, "text": text})
    return out


# ---- subgroups -----------------------------------------------------------------------------


def _label_text(v: Any) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return MISSING
    text = shown(str(v).strip())
    return (text[:40] + "…" if len(text) > 40 else text) or MISSING


def _rate(hits: int, n: int) -> tuple[float | None, list[float] | None]:
    return (hits / n, list(wilson(hits, n))) if n else (None, None)


def subgroups(
    groups: dict[str, np.ndarray],
    y: np.ndarray,
    p: np.ndarray,
    ref: np.ndarray | None,
    threshold: float,
    gates: GatesConfig,
) -> list[dict[str, Any]]:
    """One row per (group, value): counts, sensitivity and specificity with Wilson intervals,
    flips against the reference, and the verdict of the subgroup gates (a subgroup with fewer
    than min_subgroup_positives positives is "too small to judge", never passed)."""
    pred = p >= threshold
    ref_pred = ref >= threshold if ref is not None else None
    rows = []
    for name, values in groups.items():
        text = np.array([_label_text(v) for v in np.asarray(values, dtype=object).reshape(-1)])
        for value in sorted(set(text.tolist())):
            m = text == value
            mp, mn = m & y, m & ~y
            n_pos, n_neg = int(mp.sum()), int(mn.sum())
            sens, sens_ci = _rate(int((pred & mp).sum()), n_pos)
            spec, spec_ci = _rate(int((~pred & mn).sum()), n_neg)
            row: dict[str, Any] = {
                "group": shown(name),
                "value": value,
                "n": int(m.sum()),
                "positives": n_pos,
                "negatives": n_neg,
                "sensitivity": sens,
                "sensitivity_ci95": sens_ci,
                "specificity": spec,
                "specificity_ci95": spec_ci,
                "reference_sensitivity": None,
                "sensitivity_drop": None,
                "sensitivity_drop_ci95": None,
                "flips": None,
                "new_misses": None,
            }
            if ref_pred is not None:
                ref_sens, _ = _rate(int((ref_pred & mp).sum()), n_pos)
                row["reference_sensitivity"] = ref_sens
                row["sensitivity_drop"] = (
                    ref_sens - sens if ref_sens is not None and sens is not None else None
                )
                row["sensitivity_drop_ci95"] = (
                    _pair_table(mp, ref_pred, pred)["drop_ci95"] if n_pos else None
                )
                row["flips"] = int((m & (pred != ref_pred)).sum())
                row["new_misses"] = int((mp & ref_pred & ~pred).sum())
            row["verdict"], row["gates"] = _judge(row, gates)
            rows.append(row)
    return rows


def _judge(row: dict[str, Any], gates: GatesConfig) -> tuple[str, list[dict[str, Any]]]:
    """The subgroup gates on one subgroup, deciding as every gate does (core.gates.decide: on
    Wilson's interval and the paired drop's, where [gates] decide_on = "ci"); each line's name
    carries the subgroup, so a miss reads e.g.
    `min_subgroup_sensitivity[site=B] = 0.93 (limit 0.95)`."""
    if all(getattr(gates, g) is None for g in SUBGROUP_GATES):
        return "no subgroup gate", []
    if row["positives"] < gates.min_subgroup_positives:
        return "too small to judge", []
    where = f"[{row['group']}={row['value']}]"
    bounds = on_bounds(gates, "point")
    lines = []
    if gates.min_subgroup_sensitivity is not None:
        lines.append(
            decide(
                f"min_subgroup_sensitivity{where}",
                row["sensitivity"],
                gates.min_subgroup_sensitivity,
                "min",
                interval(row["sensitivity_ci95"]),
                bounds,
                "no positives",
            )
        )
    if gates.max_subgroup_sensitivity_drop is not None and row["sensitivity_drop"] is not None:
        lines.append(
            decide(
                f"max_subgroup_sensitivity_drop{where}",
                row["sensitivity_drop"],
                gates.max_subgroup_sensitivity_drop,
                "max",
                interval(row["sensitivity_drop_ci95"]),
                bounds,
                "no positives",
            )
        )
    if not lines:  # only a drop gate, and no reference to measure a drop against
        return "not judged: no reference comparison", []
    verdicts = [ln.verdict for ln in lines]
    if all(v == GateVerdict.passed for v in verdicts):
        verdict = "passed"
    elif GateVerdict.failed in verdicts:
        verdict = "failed"
    else:  # insufficient evidence or undefined: fails closed, named as it is
        verdict = str(next(v for v in verdicts if v != GateVerdict.passed))
    return verdict, [ln.to_dict() for ln in lines]


# ---- calibration and fragility ---------------------------------------------------------------


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error (equal-width bins, weighted by their share of cases) and
    Brier score of p(positive), with the reliability curve behind them."""
    p = np.clip(p, 0.0, 1.0)
    yi = y.astype(np.int64)
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    prob_true, prob_pred = calibration_curve(yi, p, n_bins=bins, strategy="uniform", pos_label=1)
    # The same bins as calibration_curve, for the per-bin case counts it does not return.
    ids = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], p)
    counts = np.bincount(ids, minlength=bins)
    counts = counts[counts > 0]
    ece = float(np.sum(counts / len(p) * np.abs(prob_true - prob_pred)))
    return {
        "ece": ece,
        "brier": float(brier_score_loss(yi, p, pos_label=1)),
        "curve": {
            "prob_pred": [float(x) for x in prob_pred],
            "prob_true": [float(x) for x in prob_true],
            "count": [int(c) for c in counts],
        },
    }


def fragility(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Cases within each margin of the threshold, and sensitivity / specificity were the
    threshold that much lower or higher: how far a numerics change must move p to flip them."""
    rows = []
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    for m in MARGINS:
        near = np.abs(p - threshold) <= m
        row: dict[str, Any] = {
            "margin": m,
            "positives_within": int((near & y).sum()),
            "negatives_within": int((near & ~y).sum()),
        }
        for side, t in (("minus", threshold - m), ("plus", threshold + m)):
            row[f"sensitivity_{side}"] = float((p[y] >= t).sum() / n_pos) if n_pos else None
            row[f"specificity_{side}"] = float((p[~y] < t).sum() / n_neg) if n_neg else None
        rows.append(row)
    return {"threshold": threshold, "margins": rows}


def tolerance_reach(
    margins: list[dict[str, Any]], tolerance: Any, within: tuple[int, int] | None = None
) -> dict[str, Any] | None:
    """The hook for the self-test's measured numerics tolerance (report.json selftest.tolerance):
    which margins it reaches and how many cases sit inside the widest of them; `within` is the
    exact count (positives, negatives) within the tolerance itself, where the arrays are at hand."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        return None
    reached = [r for r in margins if tolerance >= r["margin"]]
    exact = (
        f"; {within[0]} positives and {within[1]} negatives lie within ±{tolerance:.2g} of the "
        "threshold"
        if within is not None
        else ""
    )
    out: dict[str, Any] = {
        "value": float(tolerance),
        "within_tolerance": None
        if within is None
        else {"positives": within[0], "negatives": within[1]},
    }
    if not reached:
        return out | {
            "reaches": None,
            "cases": 0,
            "text": (
                f"the measured numerics tolerance ({tolerance:.2g}) is below the narrowest margin "
                f"(±{margins[0]['margin']:g}){exact}"
            ),
        }
    widest = reached[-1]
    return out | {
        "reaches": widest["margin"],
        "cases": widest["positives_within"] + widest["negatives_within"],
        "text": (
            f"the measured numerics tolerance ({tolerance:.2g}) reaches cases within "
            f"±{widest['margin']:g} of the threshold: {widest['positives_within']} positives "
            f"and {widest['negatives_within']} negatives could flip on another host{exact}"
        ),
    }


# ---- the whole evidence --------------------------------------------------------------------


def _column(probs: np.ndarray, positive: int) -> np.ndarray:
    """p(positive) as metrics.clinical reads it: NaN counts as 0 (a NaN model fails the
    finite_outputs gate; its evidence must still be computable)."""
    p = np.asarray(probs, np.float64)[:, positive]
    return np.nan_to_num(p, nan=0.0, posinf=1.0, neginf=0.0)


def evidence(
    labels: np.ndarray,
    probs: np.ndarray,
    reference: np.ndarray | None,
    threshold: float,
    positive: int,
    groups: dict[str, np.ndarray] | None,
    gates: GatesConfig,
) -> dict[str, Any]:
    """Everything above for one target; `groups` maps a group name (site, sex…) to one label
    per image."""
    y = np.asarray(labels) == positive
    p = _column(probs, positive)
    ref = None if reference is None else _column(reference, positive)
    rows = subgroups(groups or {}, y, p, ref, threshold, gates)
    auc_gated = gates.min_auc is not None or gates.max_auc_drop is not None
    return {
        "auc_ci95": _auc_intervals(y, p, ref) if auc_gated and on_bounds(gates, "point") else None,
        "paired": paired(y, p, ref, threshold, gates) if ref is not None else None,
        "subgroups": rows,
        "subgroup_gates": {
            "min_subgroup_sensitivity": gates.min_subgroup_sensitivity,
            "max_subgroup_sensitivity_drop": gates.max_subgroup_sensitivity_drop,
            "min_subgroup_positives": gates.min_subgroup_positives,
        },
        "calibration": {
            "bins": CALIBRATION_BINS,
            "target": calibration(y, p),
            "reference": calibration(y, ref) if ref is not None else None,
        },
        "fragility": fragility(y, p, threshold),
    }


def _auc_intervals(y: np.ndarray, p: np.ndarray, ref: np.ndarray | None) -> dict[str, Any]:
    """The AUC gates' intervals (computed only when they decide on them: a bootstrap takes a
    second or so)."""
    return {
        "target": auc_ci95(y, p),
        "drop": None if ref is None else auc_ci95(y, p, ref),
        "method": f"stratified percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed 0",
    }


def evidence_checks(ev: dict[str, Any]) -> list[Check]:
    """The gate lines the evidence adds to the build's checks (the subgroup gates)."""
    return [Check.from_dict(g) for row in ev["subgroups"] for g in row["gates"]]


# ---- per-image group labels ----------------------------------------------------------------


def _read_labels(path: Path, name: str, n: int) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"[data.groups] {name} = {str(path)!r} does not exist; fix the path")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises many types for damaged or pickled files
            raise UserError(
                f"[data.groups] {name}: {path.name} is not a readable .npy ({exc}); save one "
                "label per image with np.save"
            ) from None
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise UserError(
                f"[data.groups] {name}: {path.name} has shape {arr.shape}; expected one label "
                "per image (N,)"
            )
        values = arr
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"[data.groups] {name}: cannot read {path.name} ({exc})") from None
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) == n + 1:  # a header line
            lines = lines[1:]
        values = np.array([ln.strip() for ln in lines], dtype=object)
    if len(values) != n:
        raise UserError(
            f"[data.groups] {name}: {path.name} holds {len(values)} labels for {n} images; "
            "give one label per image of the validation split, in its order"
        )
    return values


def load_groups(
    files: dict[str, str],
    columns: list[str],
    metadata: dict[str, np.ndarray] | None,
    split: str,
    n: int,
) -> dict[str, np.ndarray]:
    """Group labels per image: `[data.groups]` files (name = path, `{split}` in the path is the
    split's name; .npy, or text with one label per line and an optional header) and `[data]
    group_by` metadata columns of the dataset."""
    out: dict[str, np.ndarray] = {}
    for name, raw in files.items():
        out[name] = _read_labels(Path(raw.replace("{split}", split)), shown(name), n)
    for col in columns:
        if not metadata or col not in metadata:
            have = sorted(metadata) if metadata else []
            raise UserError(
                f"[data] group_by names column '{shown(col)}' but the dataset has "
                + (f"the columns {have}" if have else "no metadata columns; use [data.groups]")
            )
        out[col] = np.asarray(metadata[col], dtype=object).reshape(-1)
    for name, values in out.items():
        check_categories(name, values)
    return out


def check_categories(name: str, values: np.ndarray) -> None:
    """A group holds a few categories; more distinct values than that is an identifier."""
    distinct = len({_label_text(v) for v in values})
    if distinct > MAX_SUBGROUPS:
        raise UserError(
            f"group '{shown(name)}' has {distinct} distinct values; a subgroup column holds "
            f"a few categories (site, sex, age band), at most {MAX_SUBGROUPS}, not identifiers"
        )


def for_data(
    cfg: Config,
    ds: Dataset,
    probs: np.ndarray,
    reference: np.ndarray | None,
    groups: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], list[Check]]:
    """The evidence of one target on `ds` and its subgroup gate lines; the groups of the
    config unless given."""
    d = cfg.data
    if groups is None:
        groups = load_groups(d.groups, d.group_by, getattr(ds, "metadata", None), ds.split, len(ds))
    ev = evidence(
        ds.labels,
        probs,
        reference,
        cfg.labels.threshold,
        cfg.labels.positive_index,
        groups,
        cfg.gates,
    )
    return ev, evidence_checks(ev)
