"""`packager compare`: reports side by side, an SLA scorecard with recommendations per scenario,
and release-to-release diffs (OLD NEW) that flag sensitivity and latency regressions.

Paths may be bundle directories, report.json files, bundle tarballs, or dist directories holding
<name>-<version>/<target>/ bundles (failed bundles under .failed/ included)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from packager.errors import UserError
from packager.report import COLUMNS, cell, summarize
from packager.schema import hint

FORMATS = ("md", "html", "json")


# ---- loading -------------------------------------------------------------------------------


@dataclass
class Loaded:
    report: dict[str, Any]
    source: Path  # the report.json or tarball it came from
    row: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.row = summarize(self.report)
        self.row["bundle"] = str(
            self.source.parent if self.source.suffix == ".json" else self.source
        )


def _check_report(data: Any, where: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or "target" not in data or "schema_version" not in data:
        raise UserError(f"{where} is not a packager report.json (no target / schema_version)")
    if data["schema_version"] != 1:
        raise UserError(
            f"{where} has report schema_version {data['schema_version']}; this packager reads 1 "
            "— compare with the packager version that wrote it"
        )
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return _check_report(json.loads(path.read_text()), path)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); pass a report.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc})") from None


def _read_tarball(path: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = next(
                (
                    m
                    for m in tar.getmembers()
                    if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/report.json")
                ),
                None,
            )
            if member is None:
                raise UserError(f"{path} holds no <target>/report.json; pass a bundle tarball")
            f = tar.extractfile(member)
            assert f is not None  # a regular file member always has content
            return _check_report(json.loads(f.read()), path)
    except (tarfile.TarError, OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} as a bundle tarball ({exc})") from None


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def resolve(path: Path) -> list[Loaded]:
    """The reports behind one command-line path."""
    if not path.exists():
        raise UserError(
            f"{path} does not exist; pass bundle directories, report.json files or dist directories"
        )
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            return [Loaded(_read_tarball(path), path)]
        return [Loaded(_read_json(path), path)]
    if (path / "report.json").is_file():
        return [Loaded(_read_json(path / "report.json"), path / "report.json")]
    found = [p for p in sorted(path.glob("*/report.json")) if _visible(p, path)]
    found += [p for p in sorted(path.glob("*/*/report.json")) if _visible(p, path)]
    found += sorted(path.glob(".failed/*/*/report.json"))
    if not found:
        raise UserError(
            f"no report.json under {path}; pass a bundle directory, a report.json or a dist "
            "directory holding <name>-<version>/<target>/ bundles"
        )
    loaded = [Loaded(_read_json(p), p) for p in found]
    # A target rebuilt after a failure has a published bundle and a .failed one: keep the newest.
    newest: dict[tuple[Any, ...], Loaded] = {}
    for item in loaded:
        key = (item.row["name"], item.row["version"], item.row["target"])
        old = newest.get(key)
        if old is None or item.source.stat().st_mtime > old.source.stat().st_mtime:
            newest[key] = item
    return list(newest.values())


def _label(rows: list[dict[str, Any]]) -> None:
    """Rows are named by target, plus model and version when several releases are mixed."""
    releases = {(r["name"], r["version"]) for r in rows}
    seen: dict[str, int] = {}
    for r in rows:
        base = r["target"] if len(releases) == 1 else f"{r['target']} ({r['name']} {r['version']})"
        seen[base] = seen.get(base, 0) + 1
        r["label"] = base if seen[base] == 1 else f"{base} #{seen[base]}"


# ---- SLA -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlaMetric:
    key: str  # field of the summary row
    op: str  # "max": value at most the limit; "min": at least
    label: str
    show: Callable[[float], str]


SLA_METRICS = {
    "latency_ms": SlaMetric("latency_p50_ms", "max", "batch-1 p50 latency", "{:.3f} ms".format),
    "throughput_sps": SlaMetric("throughput_sps", "min", "best throughput", "{:,.0f}/s".format),
    # Runtime + model + activations at batch 1, without the Python interpreter of the harness.
    "memory_mb": SlaMetric("serving_memory_mb", "max", "serving memory", "{:.1f} MB".format),
    "sensitivity": SlaMetric("sensitivity", "min", "sensitivity", lambda v: f"{100 * v:.2f}%"),
    "gflops": SlaMetric("gflops", "max", "GFLOPs per sample", "{:.4g}".format),
}


@dataclass(frozen=True)
class Tolerances:
    """Release-to-release: how much worse NEW may be than OLD before it is flagged."""

    sensitivity_drop: float = 0.005  # absolute, 0.005 = half a percentage point
    latency_increase: float = 0.10  # relative, of batch-1 p50: 0.10 = 10% slower


@dataclass
class Sla:
    source: Path
    base: dict[str, float]
    per_target: dict[str, dict[str, float]]
    tolerances: Tolerances

    def limits(self, target: str) -> dict[str, float]:
        return {**self.base, **self.per_target.get(target, {})}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(f"{where} = {value!r} must be a non-negative number")
    return float(value)


def _metrics(table: dict[str, Any], where: str) -> dict[str, float]:
    out = {}
    for key, value in table.items():
        if key not in SLA_METRICS:
            raise UserError(
                f"unknown SLA metric '{key}' in {where}{hint(key, SLA_METRICS)}; "
                f"use {', '.join(SLA_METRICS)}"
            )
        out[key] = _number(value, f"{where}.{key}")
    if "sensitivity" in out and out["sensitivity"] > 1:
        raise UserError(f"{where}.sensitivity is a fraction between 0 and 1 (0.98, not 98)")
    return out


def load_sla(path: Path) -> Sla:
    """[sla] thresholds for every target, [sla.<target>] overrides, [regression] tolerances."""
    from packager.registry import names

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"SLA file {path} does not exist; check --sla") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}); see docs/reports.md") from None
    for key in data:
        if key not in ("sla", "regression"):
            raise UserError(f"unknown table [{key}] in {path}{hint(key, ['sla', 'regression'])}")
    sla = data.get("sla", {})
    if not isinstance(sla, dict):
        raise UserError(f"{path}: sla must be a table ([sla])")
    base = _metrics({k: v for k, v in sla.items() if not isinstance(v, dict)}, f"{path} [sla]")
    per_target = {}
    known = names()
    for target, table in sla.items():
        if isinstance(table, dict):
            if target not in known:
                raise UserError(
                    f"{path}: [sla.{target}] names no known target{hint(target, known)}; "
                    "see `packager targets`"
                )
            per_target[target] = _metrics(table, f"{path} [sla.{target}]")
    reg = data.get("regression", {})
    if not isinstance(reg, dict):
        raise UserError(f"{path}: regression must be a table ([regression])")
    fields = Tolerances.__dataclass_fields__
    for key in reg:
        if key not in fields:
            raise UserError(f"unknown key '{key}' in {path} [regression]{hint(key, fields)}")
    tol = Tolerances(**{k: _number(v, f"{path} [regression].{k}") for k, v in reg.items()})
    if not base and not per_target and not reg:
        raise UserError(f"{path} sets no threshold; add an [sla] table, e.g. latency_ms = 3")
    return Sla(path, base, per_target, tol)


# Where the reason for a missing value lives in a summary row (None: no reason field).
SLA_GAPS = {
    "latency_ms": "latency_gap",
    "throughput_sps": "bench_gap",
    "memory_mb": "bench_gap",
    "sensitivity": "clinical_gap",
    "gflops": None,
}


def _sla_line(row: dict[str, Any], metric: str, limit: float) -> dict[str, Any]:
    """One scorecard cell. A value that was not measured (or only on a proxy) misses the line:
    nobody can sign what was not measured."""
    m = SLA_METRICS[metric]
    value, why = row[m.key], None
    if metric == "sensitivity" and value is not None and row["validated_on"] != "own":
        value, why = None, f"validated on a {row['validated_on']} only"
    elif value is None and SLA_GAPS[metric] is None:
        why = "not known: the model has a dynamic shape"
    elif value is None:
        why = row.get(SLA_GAPS[metric]) or "not measured"
    met = value is not None and (value <= limit if m.op == "max" else value >= limit)
    return {
        "metric": metric,
        "limit": limit,
        "op": "≤" if m.op == "max" else "≥",
        "value": value,
        "met": met,
        "text": m.show(value) if value is not None else why.split(":")[0],
        "why": why,
        "limit_text": ("≤ " if m.op == "max" else "≥ ") + m.show(limit),
    }


def scorecard(rows: list[dict[str, Any]], sla: Sla) -> dict[str, Any]:
    metrics = [
        m for m in SLA_METRICS if m in sla.base or any(m in t for t in sla.per_target.values())
    ]
    out_rows, missed = [], []
    for r in rows:
        limits = sla.limits(r["target"])
        lines = {m: _sla_line(r, m, limits[m]) for m in metrics if m in limits}
        for ln in lines.values():
            if not ln["met"]:
                missed.append(
                    f"{r['label']}: {ln['metric']} {ln['text']} (needs {ln['limit_text']})"
                )
        out_rows.append(
            {
                "label": r["label"],
                "target": r["target"],
                "lines": lines,
                "met": all(ln["met"] for ln in lines.values()),
            }
        )
    return {
        "source": str(sla.source),
        "metrics": metrics,
        "labels": {m: SLA_METRICS[m].label for m in metrics},
        "rows": out_rows,
        "missed": missed,
    }


# ---- recommendations -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    criterion: str
    needs: str  # the summary field that must be measured
    rank: Callable[[dict[str, Any]], tuple[float, ...]]
    cpu_only: bool


SCENARIOS = (
    Scenario(
        "real-time",
        "Real-time single image on a CPU workstation",
        "lowest batch-1 p50 latency",
        "latency_p50_ms",
        lambda r: (r["latency_p50_ms"], r["latency_p95_ms"]),
        True,
    ),
    Scenario(
        "bulk",
        "Bulk screening (a backlog of studies)",
        "highest throughput at any batch size",
        "throughput_sps",
        lambda r: (-r["throughput_sps"],),
        False,
    ),
    Scenario(
        "edge",
        "Edge device (little memory)",
        "smallest serving memory, then smallest model",
        "serving_memory_mb",
        lambda r: (r["serving_memory_mb"], r["size_mb"] or 0.0),
        False,
    ),
)


def _clinical_why(r: dict[str, Any]) -> str:
    ci, gate = r["sensitivity_ci95"], r.get("gate_min_sensitivity")
    text = "passed every clinical gate on its own runtime"
    if ci:
        text += (
            f": sensitivity {100 * r['sensitivity']:.2f}% "
            f"(95% CI {100 * ci[0]:.2f}–{100 * ci[1]:.2f}%)"
        )
        text += f", gate ≥ {100 * gate:.2f}%" if gate is not None else ""
    if r["flips"] is not None:
        text += f"; {r['flips']} decisions differ from the reference"
    return text


def _measure(sc: Scenario, r: dict[str, Any]) -> str:
    if sc.key == "real-time":
        return f"{r['latency_p50_ms']:.3f} ms (p95 {r['latency_p95_ms']:.3f} ms)"
    if sc.key == "bulk":
        return f"{r['throughput_sps']:,.0f} samples/s at batch {r['throughput_batch']}"
    size = f", model {r['size_mb']:.2f} MB" if r["size_mb"] is not None else ""
    return f"{r['serving_memory_mb']:.1f} MB serving memory{size}"


def _sla_misses(r: dict[str, Any], sla: Sla | None) -> list[str]:
    if sla is None:
        return []
    lines = [_sla_line(r, m, limit) for m, limit in sla.limits(r["target"]).items()]
    return [
        f"{ln['metric']} {ln['text']} (needs {ln['limit_text']})" for ln in lines if not ln["met"]
    ]


def recommend(rows: list[dict[str, Any]], sla: Sla | None) -> list[dict[str, Any]]:
    """Per scenario, the best target that passed every clinical gate on its own runtime; where
    an SLA is given, targets meeting all of its lines come first."""
    out = []
    for sc in SCENARIOS:
        ranked, excluded = [], []
        for r in rows:
            if r["status"] != "passed":
                excluded.append(f"{r['label']}: {r['status']} — {r['reason']}")
            elif sc.cpu_only and r["accelerator"]:
                excluded.append(f"{r['label']}: runs on an accelerator, not the CPU")
            elif r[sc.needs] is None:
                gap = r["latency_gap"] if sc.needs.startswith("latency") else r["bench_gap"]
                excluded.append(f"{r['label']}: {gap}")
            else:
                ranked.append(r)
        ranked.sort(key=sc.rank)
        misses = {r["label"]: _sla_misses(r, sla) for r in ranked}
        by_sla = sorted(ranked, key=lambda r: bool(misses[r["label"]]))  # stable within groups
        rec: dict[str, Any] = {
            "scenario": sc.key,
            "title": sc.title,
            "criterion": sc.criterion,
            "target": None,
            "why": [],
            "sla_missed": [],
            "excluded": excluded,
            "bundle": None,
        }
        if not by_sla:
            rec["why"] = [
                "no target passed every clinical gate on its own runtime and was measured"
            ]
            out.append(rec)
            continue
        best = by_sla[0]
        rec["target"], rec["sla_missed"] = best["label"], misses[best["label"]]
        rec["bundle"] = best.get("bundle")
        among = " among those meeting the SLA" if sla is not None and not rec["sla_missed"] else ""
        why = [_clinical_why(best), f"{sc.criterion}{among}: {_measure(sc, best)}"]
        for r in ranked[: ranked.index(best)]:
            why.append(
                f"{r['label']} ranks higher ({_measure(sc, r)}) but misses the SLA: "
                + "; ".join(misses[r["label"]])
            )
        if len(by_sla) > 1:
            nxt = by_sla[1]
            if ranked.index(nxt) > ranked.index(best):
                why.append(f"next: {nxt['label']}, {_measure(sc, nxt)}")
        if sla is not None:
            why.append(
                "misses SLA: " + "; ".join(rec["sla_missed"])
                if rec["sla_missed"]
                else "meets every SLA line"
            )
        if best["host"]:
            why.append(f"measured on {best['host']['cpu']} with {best['host']['cores']} cores")
        rec["why"] = why
        out.append(rec)
    return out


# ---- release to release --------------------------------------------------------------------


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
    if o["status"] == "passed" and n["status"] != "passed":
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
                f"latency regression: batch-1 p50 {o['latency_p50_ms']:.3f} → "
                f"{n['latency_p50_ms']:.3f} ms (tolerance +{100 * tol.latency_increase:.0f}%)"
            )
    return flags


def _host(r: dict[str, Any]) -> str | None:
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
        if _host(o) and _host(n) and _host(o) != _host(n):
            notes.append(
                f"benchmarked on different hosts ({_host(o)} vs {_host(n)}): timings are not comparable"
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


# ---- the command ---------------------------------------------------------------------------


def _is_release_diff(groups: list[list[Loaded]]) -> bool:
    """Two paths whose targets overlap (two dist dirs, or one target's report from two releases)
    are OLD and NEW; anything else is a side-by-side comparison."""
    if len(groups) != 2:
        return False
    sides = [[x.row["target"] for x in g] for g in groups]
    unique = all(len(s) == len(set(s)) for s in sides)
    return unique and bool(set(sides[0]) & set(sides[1]))


def _figures(rows: list[dict[str, Any]], sla: Sla | None) -> dict[str, Any]:
    from packager import plots

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
            [r["status"] == "passed" for r in rows],
            lines,
        )
    }
    if any(r["latency_p50_ms"] is not None for r in rows):
        figs["latency"] = plots.latency_bars(
            names,
            [r["latency_p50_ms"] for r in rows],
            [r["latency_p95_ms"] for r in rows],
            sla.base.get("latency_ms") if sla else None,
        )
    series = [(r["label"], r["batches"]) for r in rows if r["batches"]]
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
    return sorted({h for r in rows if (h := _host(r))})


def build_view(paths: list[Path], sla_path: Path | None) -> dict[str, Any]:
    """Everything the md / html / json outputs show, computed once."""
    if not paths:
        raise UserError("pass at least one bundle, report.json or dist directory to compare")
    sla = load_sla(sla_path) if sla_path else None
    groups = [resolve(p) for p in paths]
    if _is_release_diff(groups):
        old, new = ([x.row for x in g] for g in groups)
        _label(old)
        _label(new)
        tol = sla.tolerances if sla else Tolerances()
        d = diff(old, new, tol)
        view = _side(new, sla, mode="release-diff")
        view |= {"diff": d, "sources": {"old": str(paths[0]), "new": str(paths[1])}}
        view["missed"] = d["flags"] + view["missed"]
        return view
    rows = [x.row for g in groups for x in g]
    _label(rows)
    view = _side(rows, sla, mode="side-by-side")
    view["sources"] = [str(p) for p in paths]
    return view


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
        "hosts": _hosts(rows),
        "sla": card,
        "recommendations": recs,
        "headline": recs[0],
        "missed": card["missed"] if card else [],
        "sla_obj": sla,
    }


def _json(view: dict[str, Any]) -> str:
    keep = {k: v for k, v in view.items() if k not in ("table", "sla_obj", "headline")}
    keep["rows"] = [
        {k: v for k, v in r.items() if k not in ("batches", "variants")} for r in view["rows"]
    ]
    return json.dumps(keep, indent=2, sort_keys=True, default=str)


def render_view(view: dict[str, Any], fmt: str) -> str:
    from packager.render import render

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
