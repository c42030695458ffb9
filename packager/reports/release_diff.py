"""Release to release (`packager compare OLD NEW`): per target, every summary column side by side
with its change, and the sensitivity and latency regressions beyond the SLA file's tolerances."""

from __future__ import annotations

from typing import Any

from packager.core.status import ReportStatus
from packager.reports.report import COLUMNS, cell, shaky
from packager.reports.sla import Tolerances


def _change(col_key: str, old: Any, new: Any) -> str:
    """NEW - OLD as people read it: percentage points for rates, relative % for amounts."""
    if old is None or new is None:
        return ""
    if not isinstance(old, int | float) or not isinstance(new, int | float):
        return "" if old == new else "changed"
    d = new - old
    if col_key in ("sensitivity", "specificity"):
        return f"{100 * d:+.2f} pts" if abs(d) >= 5e-5 else "0"
    if col_key in ("auc", "ece", "brier"):
        return f"{d:+.4f}" if abs(d) >= 5e-5 else "0"
    if col_key == "flips":
        return f"{d:+d}" if d else "0"
    if old == 0:
        return ""
    rel = 100 * d / old
    return f"{rel:+.1f}%" if abs(rel) >= 0.05 else "0"


def _flags(o: dict[str, Any], n: dict[str, Any], tol: Tolerances) -> list[str]:
    flags = []
    if o["status"] == ReportStatus.passed and n["status"] != ReportStatus.passed:
        flags.append(f"status {o['status']} → {n['status']}: {n['reason']}")
    if o["sensitivity"] is not None:
        if n["sensitivity"] is None:
            flags.append(f"sensitivity cannot be checked: {n['clinical_gap']} in NEW")
        elif o["sensitivity"] - n["sensitivity"] > tol.sensitivity_drop + 1e-12:
            flags.append(
                f"sensitivity regression: {100 * o['sensitivity']:.2f}% → "
                f"{100 * n['sensitivity']:.2f}% (tolerance {100 * tol.sensitivity_drop:.2f} pts)"
            )
    if o["latency_p50_ms"] is not None:
        if n["latency_p50_ms"] is None:
            flags.append(f"latency cannot be checked: {n['latency_gap']} in NEW")
        elif n["latency_p50_ms"] > o["latency_p50_ms"] * (1 + tol.latency_increase):
            flags.append(
                f"latency regression: batch-1 p50 {o['latency_p50_ms']:.3f} ms"
                f"{shaky(o, 'latency_stable')} → {n['latency_p50_ms']:.3f} ms"
                f"{shaky(n, 'latency_stable')} (tolerance +{100 * tol.latency_increase:.0f}%)"
            )
    return flags


def host_text(r: dict[str, Any]) -> str | None:
    h = r["host"]
    return f"{h['cpu']} ({h['cores']} cores)" if h else None


def diff(old: list[dict[str, Any]], new: list[dict[str, Any]], tol: Tolerances) -> dict[str, Any]:
    old_by = {r["target"]: r for r in old}
    new_by = {r["target"]: r for r in new}
    targets, flagged = [], []
    for t in [t for t in new_by if t in old_by]:
        o, n = old_by[t], new_by[t]
        metrics = [
            {
                "metric": "status",
                "old": o["status"],
                "new": n["status"],
                "change": "",
                "old_text": o["status"],
                "new_text": n["status"],
            }
        ]
        for col in COLUMNS:
            (ot, og), (nt, ng) = cell(o, col), cell(n, col)
            ov = None if og else o[col.key]
            nv = None if ng else n[col.key]
            metrics.append(
                {
                    "metric": col.header,
                    "key": col.key,
                    "old": ov,
                    "new": nv,
                    "old_text": ot,
                    "new_text": nt,
                    "change": _change(col.key, ov, nv),
                }
            )
        flags = _flags(o, n, tol)
        flagged += [f"{t}: {f}" for f in flags]
        notes = []
        if host_text(o) and host_text(n) and host_text(o) != host_text(n):
            notes.append(
                f"benchmarked on different hosts ({host_text(o)} vs {host_text(n)}): timings are not comparable"
            )
        targets.append({"target": t, "metrics": metrics, "flags": flags, "notes": notes})
    return {
        "old": sorted({f"{r['name']} {r['version']}" for r in old}),
        "new": sorted({f"{r['name']} {r['version']}" for r in new}),
        "tolerances": {
            "sensitivity_drop": tol.sensitivity_drop,
            "latency_increase": tol.latency_increase,
        },
        "targets": targets,
        "only_old": [t for t in old_by if t not in new_by],
        "only_new": [t for t in new_by if t not in old_by],
        "flags": flagged,
    }
