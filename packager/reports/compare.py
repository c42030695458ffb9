"""`packager compare`: reports side by side, an SLA scorecard with recommendations per scenario,
and release-to-release diffs (OLD NEW) that flag sensitivity and latency regressions.

Paths may be bundle directories, report.json files, bundle tarballs, or dist directories holding
<name>-<version>/<target>/ bundles (failed bundles under .failed/ included). Reading them is
compare_load.py, the SLA file and scorecard sla.py, the recommendations recommend.py and the diff
release_diff.py; this module builds the one view the md / html / json outputs render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packager.core.errors import UserError
from packager.core.status import ReportStatus
from packager.reports.compare_load import Loaded, label_rows, resolve
from packager.reports.recommend import TIE_BREAK, recommend
from packager.reports.release_diff import diff, host_text
from packager.reports.report import COLUMNS, cell, shaky
from packager.reports.sla import Sla, Tolerances, load_sla, scorecard

FORMATS = ("md", "html", "json")


def _is_release_diff(groups: list[list[Loaded]]) -> bool:
    """Two paths whose targets overlap (two dist dirs, or one target's report from two releases)
    are OLD and NEW; anything else is a side-by-side comparison."""
    if len(groups) != 2:
        return False
    sides = [[x.row["target"] for x in g] for g in groups]
    unique = all(len(s) == len(set(s)) for s in sides)
    return unique and bool(set(sides[0]) & set(sides[1]))


def _figures(rows: list[dict[str, Any]], sla: Sla | None) -> dict[str, Any]:
    from packager.reports import plots

    names = [r["label"] for r in rows]
    own = [r["sensitivity"] if not r["clinical_gap"] else None for r in rows]
    marks: dict[float, list[str]] = {}  # one line per limit, naming every rule that sets it
    for r in rows:
        if r.get("gate_min_sensitivity") is not None:
            marks.setdefault(r["gate_min_sensitivity"], []).append("gate")
    if sla is not None and "sensitivity" in sla.base:
        marks.setdefault(sla.base["sensitivity"], []).append("SLA")
    lines = [
        (f"{' / '.join(dict.fromkeys(who))} {100 * x:.1f}%", x) for x, who in sorted(marks.items())
    ]
    figs: dict[str, Any] = {
        "sensitivity": plots.sensitivity_intervals(
            names,
            own,
            [r["sensitivity_ci95"] for r in rows],
            [r["status"] == ReportStatus.passed for r in rows],
            lines,
        )
    }
    if any(r["latency_p50_ms"] is not None for r in rows):
        figs["latency"] = plots.latency_bars(
            [r["label"] + shaky(r, "latency_stable") for r in rows],
            [r["latency_p50_ms"] for r in rows],
            [r["latency_p95_ms"] for r in rows],
            sla.base.get("latency_ms") if sla else None,
        )
    series = [(r["label"] + shaky(r, "bench_stable"), r["batches"]) for r in rows if r["batches"]]
    if series:
        figs["throughput"] = plots.throughput_curves(
            series, sla.base.get("throughput_sps") if sla else None
        )
    return figs


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "headers": [c.header for c in COLUMNS],
        "rows": [
            {
                "label": r["label"],
                "status": r["status"],
                "reason": r["reason"],
                "validated_on": r["validated_on"],
                "cells": [cell(r, c) for c in COLUMNS],
            }
            for r in rows
        ],
    }


def _gaps(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        for g in dict.fromkeys(
            x for x in (r["clinical_gap"], r["bench_gap"], r["latency_gap"]) if x
        ):
            out.append(f"{r['label']}: {g}")
        if r["validated_on"] and r["validated_on"] != "own":
            out.append(
                f"{r['label']}: clinical numbers measured on a {r['validated_on']}, not the target's own runtime"
            )
    return out


def _hosts(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({h for r in rows if (h := host_text(r))})


def build_view(paths: list[Path], sla_path: Path | None) -> dict[str, Any]:
    """Everything the md / html / json outputs show, computed once."""
    if not paths:
        raise UserError("pass at least one bundle, report.json or dist directory to compare")
    sla = load_sla(sla_path) if sla_path else None
    groups = [resolve(p) for p in paths]
    if _is_release_diff(groups):
        old, new = ([x.row for x in g] for g in groups)
        label_rows(old)
        label_rows(new)
        tol = sla.tolerances if sla else Tolerances()
        d = diff(old, new, tol)
        view = _side(new, sla, mode="release-diff")
        view |= {"diff": d, "sources": {"old": str(paths[0]), "new": str(paths[1])}}
        view["missed"] = d["flags"] + view["missed"]
        return view
    rows = [x.row for g in groups for x in g]
    label_rows(rows)
    view = _side(rows, sla, mode="side-by-side")
    view["sources"] = [str(p) for p in paths]
    return view


def _sla_verdict(card: dict[str, Any] | None) -> str | None:
    """The page's first words when no target meets the SLA: every recommendation after it is
    the best of targets that miss it."""
    if not card or not card["rows"] or any(r["met"] for r in card["rows"]):
        return None
    n = len(card["rows"])
    every = "the only target misses" if n == 1 else f"all {n} targets miss"
    return (
        f"No target meets the SLA ({card['source']}): {every} at least one line, "
        "so any target recommended below misses it too"
    )


def _side(rows: list[dict[str, Any]], sla: Sla | None, mode: str) -> dict[str, Any]:
    card = scorecard(rows, sla) if sla else None
    recs = recommend(rows, sla)
    releases = sorted({f"{r['name']} {r['version']}" for r in rows})
    return {
        "mode": mode,
        "releases": releases,
        "rows": rows,
        "table": _table(rows),
        "gaps": _gaps(rows),
        "caveats": [f"{r['label']}: {c}" for r in rows for c in r["bench_caveats"]],
        "profiles": [
            {"label": r["label"], "top": r["profile"]["top"]}
            for r in rows
            if r["profile"] and r["profile"]["status"] == "ok"
        ],
        "hosts": _hosts(rows),
        "sla": card,
        "sla_verdict": _sla_verdict(card),
        "recommendations": recs,
        "headline": recs[0],
        "tie_break": TIE_BREAK,
        "missed": card["missed"] if card else [],
        "sla_obj": sla,
    }


def _json(view: dict[str, Any]) -> str:
    keep = {k: v for k, v in view.items() if k not in ("table", "sla_obj", "headline", "tie_break")}
    keep["rows"] = [
        {k: v for k, v in r.items() if k not in ("batches", "variants")} for r in view["rows"]
    ]
    # Sorted keys, except that the SLA verdict comes first, as on the other pages.
    ordered = json.loads(json.dumps(keep, sort_keys=True, default=str))
    return json.dumps({"sla_verdict": ordered.pop("sla_verdict"), **ordered}, indent=2)


def render_view(view: dict[str, Any], fmt: str) -> str:
    from packager.core.templating import render

    if fmt == "json":
        return _json(view)
    if fmt == "html":
        figures = _figures(view["rows"], view["sla_obj"])
        return render("compare/compare.html.j2", v=view, figures=figures)
    return render("compare/compare.md.j2", v=view)


def compare(paths: list[Path], sla: Path | None, fmt: str) -> tuple[str, list[str]]:
    """(text in `fmt`, missed lines): every SLA line missed and, for OLD NEW, every flagged
    regression. `packager compare --fail-on-sla` exits 1 when the list is not empty."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    view = build_view(paths, sla)
    return render_view(view, fmt), view["missed"]


def write_comparison(dist_dir: Path, sla_path: Path | None = None) -> list[Path]:
    """dist_dir/comparison.md and comparison.html over every bundle under dist_dir."""
    view = build_view([dist_dir], sla_path)
    out = []
    for fmt in ("md", "html"):
        path = dist_dir / f"comparison.{fmt}"
        path.write_text(render_view(view, fmt))
        out.append(path)
    return out
