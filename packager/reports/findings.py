"""A multi-label bundle's report, per finding: one table row each (metrics, intervals, and its
gate verdicts), and ROC curves and reliability diagrams as small multiples, from report.json and
validation.npz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from packager.core.metrics import roc_curve

SUFFIX = "[finding={}]"


def rows(report: dict[str, Any]) -> list[dict[str, Any]] | None:
    """One row per finding in the model's output order; None for a single-label bundle."""
    c = report.get("clinical") or {}
    findings = c.get("findings")
    if not findings:
        return None
    checks = (report.get("gates") or {}).get("checks") or []
    out = []
    for name, f in findings.items():
        mine = [ch for ch in checks if ch["name"].endswith(SUFFIX.format(name))]
        failed = [ch["name"].removesuffix(SUFFIX.format(name)) for ch in mine if not ch["passed"]]
        out.append(
            {
                "name": name,
                "summary": name == c.get("finding"),
                "threshold": f["threshold"],
                "n": f["n"],
                "positives": f["positives"],
                "sensitivity": f["sensitivity"],
                "sensitivity_ci95": f["sensitivity_ci95"],
                "specificity": f["specificity"],
                "auc": f["auc"],
                "sensitivity_drop": f.get("sensitivity_drop"),
                "flips": len(f.get("flipped") or []),
                "gates": len(mine),
                "failed": failed,
            }
        )
    return out


def roc_grid(bdir: Path, report: dict[str, Any], names: list[str]) -> Markup | str:
    """ROC of every finding (reference dashed, the operating point marked), 4 to a row; or why
    it cannot be drawn. validation.npz must reproduce each finding's confusion counts."""
    from packager.reports import plots

    c = report["clinical"]
    path = bdir / "validation.npz"
    if not path.is_file():
        return "validation.npz is missing from the bundle"
    with np.load(path, allow_pickle=False) as z:
        labels, probs = z["labels"], z["probs"].astype(np.float64)
        ref = z["reference"].astype(np.float64) if "reference" in z.files else None
    if labels.ndim != 2 or labels.shape[1] != len(names):
        return "validation.npz does not hold one label column per finding"
    curves = []
    for k, name in enumerate(names):
        f = c["findings"][name]
        y, p = labels[:, k] == 1, probs[:, k]
        pred = p >= f["threshold"]
        if (
            int((pred & y).sum()) != f["confusion"]["tp"]
            or int((pred & ~y).sum()) != f["confusion"]["fp"]
        ):
            return "validation.npz does not match this report (re-validated since the build)"
        if y.all() or not y.any():
            continue
        spec = f["specificity"] if f["specificity"] is not None else 1.0
        curves.append(
            (
                name,
                roc_curve(y, p),
                None if ref is None else roc_curve(y, ref[:, k]),
                (1 - spec, f["sensitivity"]),
                f["auc"],
            )
        )
    if not curves:
        return "no finding has both positive and negative images"
    return plots.roc_small_multiples(curves)


def reliability_grid(report: dict[str, Any], names: list[str]) -> Markup | str:
    """Each finding's reliability diagram (its reference's dashed), 4 to a row; or why not."""
    from packager.reports import plots

    found = report["clinical"]["findings"]
    items = []
    for name in names:
        cal = (found[name].get("evidence") or {}).get("calibration")
        if cal and cal.get("target"):
            items.append((name, cal["target"], cal.get("reference")))
    if not items:
        return "no calibration per finding: this report predates it"
    return plots.reliability_small_multiples(items)


def verdict_matrix(report: dict[str, Any]) -> dict[str, Any] | None:
    """The sign-off's view of a multi-label bundle: one row per finding, one column per gate,
    each cell the gate line's value and verdict; None for a single-label bundle."""
    findings = (report.get("clinical") or {}).get("findings")
    if not findings:
        return None
    checks = (report.get("gates") or {}).get("checks") or []
    kinds: list[str] = []
    cells: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in findings}
    for ch in checks:
        for name in findings:
            tag = SUFFIX.format(name)
            if ch["name"].endswith(tag):
                kind = ch["name"].removesuffix(tag)
                kinds += [] if kind in kinds else [kind]
                cells[name][kind] = ch
    return {"kinds": kinds, "rows": [(name, f, cells[name]) for name, f in findings.items()]}
