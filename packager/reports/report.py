"""What the reports show, derived from report.json (plus validation.npz and runtime.json when a
bundle directory is at hand): one summary row per report, shared by report.md / report.html and
`packager compare`. A missing piece carries its reason in place of a number, never a zero."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from packager.core.gates import decide, interval, side_of
from packager.core.metrics import roc_curve
from packager.core.status import Basis, BenchStatus, CheckStatus
from packager.reports import findings

FLIPS_SHOWN = 48  # thumbnails in report.html; the rest are counted


def _gap_bench(b: dict[str, Any]) -> str | None:
    status = b.get("status")
    if status == BenchStatus.ok and b.get("batches"):
        return None
    if status == BenchStatus.failed:
        return f"benchmark failed: {b.get('reason') or 'no reason given'}"
    return f"not benchmarked: {b.get('reason') or 'no benchmark in this report'}"


def _gap_clinical(report: dict[str, Any]) -> str | None:
    if report.get("clinical"):
        return None
    why = (report.get("validation") or {}).get("not_validated") or "no validation in this report"
    return f"not validated: {why}"


def runs_on_accelerator(report: dict[str, Any]) -> bool:
    """Whether the benchmark (or validation) ran on something other than the CPU, as the
    runtime itself reported its device (runtime.py's info()["device"])."""
    b, v = report.get("benchmark") or {}, report.get("validation") or {}
    runtime = b.get("runtime") or v.get("runtime") or {}
    return str(runtime.get("device", "CPU")).upper() != "CPU"


def _harness_overhead(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the harness adds to the runtime's own timing of the same calls (None where the
    runtime does not time its calls)."""
    runtime = (row or {}).get("runtime_latency_ms")
    if row is None or not runtime or runtime["p50"] <= 0:
        return None
    wall, inner = row["latency_ms"]["p50"], runtime["p50"]
    return {
        "batch_size": row["batch_size"],
        "runtime_p50_ms": inner,
        "added_us": 1e3 * (wall - inner),
        "percent": 100 * (wall / inner - 1),
    }


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers people compare, each None with a reason (a `*_gap`) when it was not measured."""
    c = report.get("clinical") or {}
    v = report.get("validation") or {}
    b = report.get("benchmark") or {}
    m = report.get("model") or {}
    bench_gap = _gap_bench(b)
    rows = sorted(b.get("batches") or [], key=lambda r: r["batch_size"]) if not bench_gap else []
    first = rows[0] if rows else None
    latency_gap = bench_gap
    if first is not None and first["batch_size"] != 1:
        latency_gap = f"no batch-1 run (the model takes a fixed batch of {first['batch_size']})"
    b1 = first if first is not None and first["batch_size"] == 1 else None
    best = max(rows, key=lambda r: r["throughput_sps"]) if rows else None
    flipped = c.get("flipped")
    host = b.get("host") or {}
    cal = (c.get("evidence") or {}).get("calibration") or {}
    tcal, rcal = cal.get("target"), cal.get("reference")
    ol = b.get("open_loop")
    return {
        "target": report.get("target", "?"),
        "name": m.get("name"),
        "version": m.get("version"),
        "precision": report.get("precision"),
        "precision_choice": _precision_choice(report),
        "status": report.get("status", "unknown"),
        "reason": report.get("reason", ""),
        "validated_on": None if not c else (f"proxy: {v['proxy']}" if v.get("proxy") else "own"),
        "clinical_gap": _gap_clinical(report),
        "finding": c.get("finding"),  # multi-label: the summary (lowest-sensitivity) finding
        "gate_min_sensitivity": next(
            (
                ch["limit"]
                for ch in (report.get("gates") or {}).get("checks", [])
                if ch["name"] in ("min_sensitivity", f"min_sensitivity[finding={c.get('finding')}]")
            ),
            None,
        ),
        "failed_gates": [
            ch["name"] for ch in (report.get("gates") or {}).get("checks", []) if not ch["passed"]
        ],
        "sensitivity": c.get("sensitivity"),
        "sensitivity_ci95": c.get("sensitivity_ci95"),
        "specificity": c.get("specificity"),
        "specificity_ci95": c.get("specificity_ci95"),
        "auc": c.get("auc"),
        "flips": len(flipped) if flipped is not None else None,
        "n": c.get("n"),
        "positives": c.get("positives"),
        "threshold": c.get("threshold"),
        "reference_sensitivity": c.get("reference_sensitivity"),
        "sensitivity_drop": c.get("sensitivity_drop"),
        "calibration_gap": _gap_clinical(report)
        or (None if tcal else "no calibration: this report predates it"),
        "ece": tcal["ece"] if tcal else None,
        "ece_change": tcal["ece"] - rcal["ece"] if tcal and rcal else None,
        "brier": tcal["brier"] if tcal else None,
        "brier_change": tcal["brier"] - rcal["brier"] if tcal and rcal else None,
        "bench_gap": bench_gap,
        "latency_gap": latency_gap if b1 is None else None,
        "latency_p50_ms": b1["latency_ms"]["p50"] if b1 else None,
        "latency_p95_ms": b1["latency_ms"]["p95"] if b1 else None,
        "latency_p50_ci95": b1["latency_ms"].get("p50_ci95") if b1 else None,
        "latency_p95_ci95": b1["latency_ms"].get("p95_ci95") if b1 else None,
        "latency_stable": b1.get("stable") if b1 else None,
        "harness_overhead": _harness_overhead(first),
        "throughput_sps": best["throughput_sps"] if best else None,
        "throughput_batch": best["batch_size"] if best else None,
        "throughput_ci95": best.get("throughput_ci95") if best else None,
        "throughput_stable": best.get("stable") if best else None,
        # False when any batch size's windows never agreed (the throughput curve shows them all).
        "bench_stable": not any(r.get("stable") is False for r in rows) if rows else None,
        "noisy_host": bool((b.get("host_state") or {}).get("noisy")) and not bench_gap,
        "peak_memory_mb": b.get("peak_rss_mb") if not bench_gap else None,
        "serving_memory_mb": b.get("serving_memory_mb") if not bench_gap else None,
        "load_time_ms": b.get("load_time_ms") if not bench_gap else None,
        "size_mb": b.get("model_size_mb"),
        "gflops": m.get("gflops_per_sample"),
        "batches": rows,
        "variants": b.get("variants") or [],
        "host": {k: host.get(k) for k in ("cpu", "cores", "flags")} if not bench_gap else None,
        "accelerator": runs_on_accelerator(report),
        "bench_caveats": [] if bench_gap else bench_caveats(b),
        "profile": b.get("profile") if not bench_gap else None,
        "open_loop": ol,
        "open_loop_sps": (ol or {}).get("max_rate"),
        "open_loop_gap": bench_gap
        or (
            "not measured: set [bench.open_loop] enabled = true or run packager bench --open-loop"
            if ol is None
            else f"no rate met p95 <= {ol['sla_ms']:g} ms"
            if ol["max_rate"] is None
            else None
        ),
    }


def bench_caveats(b: dict[str, Any]) -> list[str]:
    """What a reader must know of a benchmark's numbers: reused from an earlier build, a busy
    host, windows that never agreed."""
    out = [f"reused from the build {b['reused']}"] if b.get("reused") else []
    state = b.get("host_state") or {}
    if state.get("noisy"):
        out.append(
            f"measured on a busy host (other processes {state['others_cpu_pct']:.0f}% of the CPU, "
            f"steal {state['steal_pct']:.1f}%)"
        )
    unstable = [str(r["batch_size"]) for r in b.get("batches") or [] if r.get("stable") is False]
    if unstable:
        out.append(f"unstable at batch {', '.join(unstable)}: its windows never agreed")
    return out


def shaky(row: dict[str, Any], stable_key: str | None) -> str:
    """The mark a timing from this row carries wherever it is shown: " (unstable)" when its
    windows never agreed (`stable_key` names the row's flag; None: no flag for this number),
    " (busy host)" when the host was noisy, both, or ""."""
    marks = ["unstable"] if stable_key and row.get(stable_key) is False else []
    marks += ["busy host"] if row.get("noisy_host") else []
    return f" ({', '.join(marks)})" if marks else ""


def _precision_choice(report: dict[str, Any]) -> str | None:
    """The bundle's precision, and when a precision search chose it, which candidate won on
    which objective."""
    precision = report.get("precision")
    search = report.get("precision_search")
    if not search or not search.get("winner"):
        return precision
    n = len(search.get("candidates") or [])
    return f"{precision} (auto: {search['winner']} of {n}, {search['objective']})"


@dataclass(frozen=True)
class Column:
    """One column of the summary tables; `gap` names the row field whose reason replaces it."""

    key: str
    header: str
    gap: str
    show: Callable[[dict[str, Any]], str]
    better: str = ""  # "lower" | "higher" | "": for release diffs


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _sens(r: dict[str, Any]) -> str:
    ci = r["sensitivity_ci95"]
    text = _pct(r["sensitivity"])
    text = f"{text} ({_pct(ci[0])}–{_pct(ci[1])})" if ci else text
    # multi-label: the lowest finding's, so a limit it meets every finding meets
    return f"{text}, lowest finding: {r['finding']}" if r.get("finding") else text


def _spec(spec: float, ci: list[float] | None) -> str:
    return f"{_pct(spec)} ({_pct(ci[0])}–{_pct(ci[1])})" if ci else _pct(spec)


def _opt(key: str, show: Callable[[Any], str], none: str) -> Callable[[dict[str, Any]], str]:
    return lambda r: none if r[key] is None else show(r[key])


def _calibration(key: str) -> Callable[[dict[str, Any]], str]:
    """The target's score and its change against the reference (quantization can shift what
    the probabilities mean without flipping a decision)."""

    def show(r: dict[str, Any]) -> str:
        change = r[f"{key}_change"]
        return f"{r[key]:.4f}" + (f" ({change:+.4f} vs reference)" if change is not None else "")

    return show


COLUMNS = (
    Column("precision_choice", "precision", "", _opt("precision_choice", str, "n/a")),
    Column("sensitivity", "sensitivity (95% CI)", "clinical_gap", _sens, "higher"),
    Column(
        "specificity",
        "specificity (95% CI)",
        "clinical_gap",
        lambda r: (
            "n/a: no negatives"
            if r["specificity"] is None
            else _spec(r["specificity"], r.get("specificity_ci95"))
        ),
        "higher",
    ),
    Column("auc", "AUC", "clinical_gap", _opt("auc", "{:.4f}".format, "n/a: one class"), "higher"),
    Column(
        "flips",
        "flips vs reference",
        "clinical_gap",
        _opt("flips", str, "n/a: no reference"),
        "lower",
    ),
    Column("ece", "ECE (change vs reference)", "calibration_gap", _calibration("ece"), "lower"),
    Column(
        "brier", "Brier (change vs reference)", "calibration_gap", _calibration("brier"), "lower"
    ),
    Column(
        "latency_p50_ms",
        "batch-1 p50 ms",
        "latency_gap",
        lambda r: f"{r['latency_p50_ms']:.3f}{shaky(r, 'latency_stable')}",
        "lower",
    ),
    Column(
        "latency_p95_ms",
        "batch-1 p95 ms",
        "latency_gap",
        lambda r: f"{r['latency_p95_ms']:.3f}{shaky(r, 'latency_stable')}",
        "lower",
    ),
    Column(
        "throughput_sps",
        "best samples/s (batch)",
        "bench_gap",
        lambda r: (
            f"{r['throughput_sps']:,.0f} (batch {r['throughput_batch']})"
            + shaky(r, "throughput_stable")
        ),
        "higher",
    ),
    Column(
        "peak_memory_mb",
        "peak memory MB",
        "bench_gap",
        lambda r: f"{r['peak_memory_mb']:.1f}",
        "lower",
    ),
    Column(
        "serving_memory_mb",
        "serving memory MB",
        "bench_gap",
        _opt("serving_memory_mb", "{:.1f}".format, "n/a"),
        "lower",
    ),
    Column("size_mb", "model size MB", "", _opt("size_mb", "{:.2f}".format, "n/a"), "lower"),
    Column("load_time_ms", "load ms", "bench_gap", lambda r: f"{r['load_time_ms']:.1f}", "lower"),
    Column("gflops", "GFLOPs / sample", "", _opt("gflops", "{:.4g}".format, "n/a: dynamic shape")),
)


def cell(row: dict[str, Any], col: Column) -> tuple[str, str | None]:
    """(text, reason it is missing or None). A missing value reads as the short reason."""
    gap = row.get(col.gap) if col.gap else None
    if gap:
        return gap.split(":")[0], gap
    return col.show(row), None


def _runtime_json(bdir: Path) -> dict[str, Any]:
    try:
        return json.loads((bdir / "runtime.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def class_names(
    bdir: Path | None, finding: str | None = None
) -> tuple[str, str, list[str] | None, int | None]:
    """(positive name, name of the rest, all names, positive index) from the bundle's runtime.json;
    for a multi-label bundle, `finding` (the report's summary finding) against its absence."""
    rt = _runtime_json(bdir) if bdir else {}
    names, pos = rt.get("labels"), rt.get("positive")
    if finding is not None and names and finding in names:
        return finding, f"not {finding}", names, names.index(finding)
    if not names or pos not in names:
        return "positive", "negative", None, None
    rest = [n for n in names if n != pos]
    return pos, rest[0] if len(rest) == 1 else f"not {pos}", names, names.index(pos)


EFFECTS = ("new miss", "new false alarm", "miss fixed", "false alarm fixed")


def _effect(truth_pos: bool, target_pos: bool) -> str:
    if truth_pos:
        return "new miss" if not target_pos else "miss fixed"
    return "new false alarm" if target_pos else "false alarm fixed"


def bundle_context(bdir: Path, report: dict[str, Any], images: np.ndarray | None) -> dict[str, Any]:
    """Everything report.md / report.html need beyond report.json: the summary row, figures
    (inline SVG), flipped cases with both probabilities and thumbnails, and the reason for any
    figure that cannot be drawn."""
    from packager.reports import plots  # matplotlib is imported only when a report is drawn

    row = summarize(report)
    c = report.get("clinical")
    positive, negative, names, pos_idx = class_names(bdir, (c or {}).get("finding"))
    # Every key present (None when absent) so templates can test them under StrictUndefined.
    figures: dict[str, Any] = dict.fromkeys(
        (
            "confusion",
            "roc",
            "latency",
            "sweep",
            "reliability",
            "candidates",
            "roc-findings",
            "reliability-findings",
        )
    )
    gaps: dict[str, str | None] = dict.fromkeys(
        ("clinical", "roc", "flips", "thumbnails", "bench", "latency", "calibration")
    ) | {"roc-findings": None, "reliability-findings": None}
    flips: list[dict[str, Any]] = []
    near = None  # (labels == positive, p(positive)) for the self-test tolerance count
    per_finding = findings.rows(report)
    if row["clinical_gap"]:
        gaps["clinical"] = row["clinical_gap"]
    else:
        figures["confusion"] = plots.confusion_matrix(c["confusion"], positive, negative)
        cal = (c.get("evidence") or {}).get("calibration")
        if cal:
            figures["reliability"] = plots.reliability(cal["target"], cal["reference"], positive)
        else:
            gaps["calibration"] = row["calibration_gap"]
        arrays = _validation_arrays(bdir, c, pos_idx)
        if isinstance(arrays, str):
            gaps["roc"] = arrays
        else:
            labels, p, ref = arrays
            shown_names = names
            if labels.ndim == 2:  # multi-label: the summary finding, present or not
                labels, shown_names = labels[:, pos_idx], [negative, positive]
                y = labels == 1
            else:
                y = labels == pos_idx
            near = (y, p)
            fpr, tpr = roc_curve(y, p)
            ref_curve = roc_curve(y, ref) if ref is not None else None
            spec = c["specificity"] if c["specificity"] is not None else 1.0
            point = (1 - spec, c["sensitivity"])
            figures["roc"] = plots.roc(fpr, tpr, ref_curve, point, c["threshold"], c["auc"])
            if ref is not None:
                flips = _flipped(c, labels, y, p, ref, shown_names, images)
        if per_finding is not None and names:
            grids = {
                "roc-findings": findings.roc_grid(bdir, report, names),
                "reliability-findings": findings.reliability_grid(report, names),
            }
            for key, grid in grids.items():
                (figures if isinstance(grid, Markup) else gaps)[key] = grid  # Markup is a str too
    if c and c.get("flipped") and not flips and gaps["roc"]:
        gaps["flips"] = gaps["roc"]
    if images is None and flips:
        gaps["thumbnails"] = "the validation images were not at hand when this report was drawn"
    samples_row = next((r for r in row["batches"] if "latency_samples_ms" in r), None)
    if row["bench_gap"]:
        gaps["bench"] = row["bench_gap"]
    else:
        if samples_row is not None:
            figures["latency"] = plots.latency_distribution(
                samples_row["latency_samples_ms"],
                samples_row["latency_ms"],
                samples_row["batch_size"],
                samples_row.get("iterations", len(samples_row["latency_samples_ms"])),
            )
        else:
            gaps["latency"] = "no per-call latency samples in this report (older packager)"
        series = [("as shipped", row["batches"])] + [
            (v["label"], v["batches"]) for v in row["variants"] if v.get("batches")
        ]
        figures["sweep"] = plots.batch_sweep(series)
        if row["open_loop"] and any(p["p95_ms"] for p in row["open_loop"]["points"]):
            figures["open-loop"] = plots.open_loop(row["open_loop"])
    search = report.get("precision_search")
    if search and any(r.get("sensitivity") is not None for r in search["candidates"]):
        figures["candidates"] = plots.precision_candidates(
            search["candidates"],
            search.get("winner"),
            search["objective"],
            row["gate_min_sensitivity"],
        )
    return {
        "row": row,
        "signoff": signoff(report, row, near),
        "cells": [(col.header, *cell(row, col)) for col in COLUMNS],
        "figures": figures,
        "gaps": gaps,
        "flips": flips,
        "flips_more": max(0, (row["flips"] or 0) - len(flips)),
        "positive": positive,
        "negative": negative,
        "findings": per_finding,
        "latency_samples": _sample_stats(samples_row),
    }


def _validation_arrays(
    bdir: Path, c: dict[str, Any], pos_idx: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | str:
    """(labels, p(positive), reference p(positive)) from validation.npz, or why not.
    The arrays must reproduce report.json's confusion counts: a bundle re-validated elsewhere
    keeps the build's arrays, and a plot of those would contradict the tables."""
    path = bdir / "validation.npz"
    if pos_idx is None:
        return "runtime.json does not name the positive class"
    if not path.is_file():
        return "validation.npz is missing from the bundle"
    with np.load(path, allow_pickle=False) as z:
        labels, probs = z["labels"], z["probs"]
        reference = z["reference"] if "reference" in z.files else None
    y = labels[:, pos_idx] == 1 if labels.ndim == 2 else labels == pos_idx
    p = probs[:, pos_idx].astype(np.float64)
    pred = p >= c["threshold"]
    counts = {
        "tp": int((pred & y).sum()),
        "fn": int((~pred & y).sum()),
        "tn": int((~pred & ~y).sum()),
        "fp": int((pred & ~y).sum()),
    }
    if counts != c["confusion"]:
        return "validation.npz does not match this report (re-validated since the build)"
    ref = reference[:, pos_idx].astype(np.float64) if reference is not None else None
    return labels, p, ref


def _flipped(
    c: dict[str, Any],
    labels: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    ref: np.ndarray,
    names: list[str] | None,
    images: np.ndarray | None,
) -> list[dict[str, Any]]:
    """Flipped cases, new misses first, then new false alarms, then fixes: the order a safety
    officer reads them in."""
    from packager.reports.plots import thumbnail

    t = c["threshold"]
    idx = [int(i) for i in c.get("flipped") or []]
    idx.sort(key=lambda i: (EFFECTS.index(_effect(bool(y[i]), bool(p[i] >= t))), i))
    out = []
    for i in idx[:FLIPS_SHOWN]:
        out.append(
            {
                "index": i,
                "truth": names[labels[i]] if names else str(labels[i]),
                "p": float(p[i]),
                "p_ref": float(ref[i]),
                "effect": _effect(bool(y[i]), bool(p[i] >= t)),
                "thumb": thumbnail(images[i]) if images is not None and i < len(images) else None,
            }
        )
    return out


def _sample_stats(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    s = row["latency_samples_ms"]
    return {
        "batch": row["batch_size"],
        "n": row.get("iterations", len(s)),
        "min": s[0],
        "max": s[-1],
    }


def signoff(
    report: dict[str, Any],
    row: dict[str, Any],
    near: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The sign-off page: the evidence of report.json plus, in plain words, everything that was
    not validated and why (a check that did not run is listed here, never counted as passed)."""
    from packager.reports.evidence import tolerance_reach

    c = report.get("clinical") or {}
    v = report.get("validation") or {}
    ev = c.get("evidence")
    missing: list[str] = []
    if v.get("proxy"):
        missing.append(
            f"the target's own runtime: the numbers come from a proxy ({v['proxy']}) because "
            f"{v.get('not_validated') or 'its runtime is not available here'}"
        )
    if row["clinical_gap"]:
        missing.append(row["clinical_gap"])
    elif ev is None:
        missing.append(
            "paired test, subgroups, calibration and fragility: not in this report (written by "
            "an older packager, or re-validated by `packager validate`)"
        )
    reach = None
    if ev:
        if ev["paired"] is None:
            missing.append("paired comparison: no reference predictions for this data")
        else:
            missing += [
                f"{cl['gate']}: this set is too small to support the gate's claim (see the "
                "paired comparison); the gate decided on the point estimate"
                for cl in ev["paired"]["claims"]
                if cl["text"].startswith("too small")
            ]
        rows = ev["subgroups"]
        if ev.get("subgroups_not_run"):
            missing.append(f"subgroups and their gates: {ev['subgroups_not_run']}")
        elif not rows:
            missing.append(
                "subgroups: the validation data carries no group labels; set [data.groups] "
                "or [data] group_by"
            )
        elif all(r["verdict"] == "no subgroup gate" for r in rows):
            missing.append(
                "subgroup gates: none configured ([gates] min_subgroup_sensitivity, "
                "max_subgroup_sensitivity_drop); the subgroups are reported, not judged"
            )
        need = ev["subgroup_gates"]["min_subgroup_positives"]
        for r in rows:
            if r["verdict"] == "too small to judge":
                missing.append(
                    f"subgroup {r['group']}={r['value']}: {r['positives']} positives, fewer "
                    f"than {need}: too small to judge"
                )
            elif r["verdict"].startswith("not judged"):
                missing.append(f"subgroup {r['group']}={r['value']}: {r['verdict']}")
        st = report.get("selftest") or {}
        tolerance, within = st.get("tolerance"), None
        if near is not None and isinstance(tolerance, (int, float)):
            y, p = near
            close = np.abs(p - ev["fragility"]["threshold"]) <= tolerance
            within = (int((close & y).sum()), int((close & ~y).sum()))
        reach = tolerance_reach(ev["fragility"]["margins"], tolerance, within)
        if reach is None:
            why = (
                f"the self-test did not run ({st.get('reason') or 'no reason given'})"
                if st.get("status") == CheckStatus.not_run
                else "no self-test result in this report"
            )
            missing.append(
                f"numerics tolerance across hosts: {why}, so it is not known whether another "
                "host's numerics can reach the cases near the threshold"
            )
    if row["bench_gap"]:
        missing.append(row["bench_gap"])
    missing += v.get("limitations") or []
    return {
        "evidence": ev,
        "checks": verdicts((report.get("gates") or {}).get("checks") or []),
        "not_validated": missing,
        "reach": reach,
        "card": (report.get("model") or {}).get("card"),
        "built_at": report.get("built_at"),
        "threshold": f"{c['threshold']:.4g}" if c.get("threshold") is not None else None,
        "changes": change_summary(ev, report.get("target", "this target")),
        "findings": findings.verdict_matrix(report),
    }


def verdicts(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gate line with the verdict the page prints and what it decided on. A gate that
    passed on its point estimate while its own 95% interval does not clear the limit is "pass
    on the point estimate only", never a plain pass; every other verdict is report.json's
    (`fail`, `insufficient evidence`, `undefined`), or "not run"."""
    out = []
    for ch in checks:
        ci, basis = ch.get("ci95"), str(ch.get("decided_on", Basis.point))
        if ch.get("status") == CheckStatus.not_run:
            verdict = "not run"
        elif ch["passed"] and basis == Basis.point and ci and not _clears(ch, ci):
            verdict = "pass on the point estimate only"
        else:
            verdict = str(ch["verdict"])
        if basis == Basis.lower and ci:
            basis = f"{basis} {ci[0]:.4g}"
        elif basis == Basis.upper and ci:
            basis = f"{basis} {ci[1]:.4g}"
        elif basis == Basis.point and ci:
            basis = f"point (95% CI {ci[0]:.4g} to {ci[1]:.4g})"
        out.append({**ch, "verdict": verdict, "basis": basis})
    return out


def _clears(ch: dict[str, Any], ci: list[float]) -> bool:
    """Whether the gate would pass on its 95% bound too (packager.core.gates.decide)."""
    name = ch["name"]
    on_bound = decide(name, ch["value"], ch["limit"], side_of(name), interval(ci), True, "")
    return on_bound.passed


def change_summary(ev: dict[str, Any] | None, target: str) -> str | None:
    """One paragraph: the cases whose decision differs from the reference, in both classes."""
    pr = (ev or {}).get("paired")
    if not pr:
        return None
    parts = []
    for cls, t in (("positive", pr["positives"]), ("negative", pr["negatives"])):
        worse, better = t["reference_right_target_wrong"], t["reference_wrong_target_right"]
        parts.append(
            f"among {t['n']} {cls} cases, {worse} the reference got right are wrong on {target} "
            f"and {better} the reference got wrong are right (exact McNemar p = "
            f"{t['mcnemar_p']:.3g})"
        )
    if not any(
        t["reference_right_target_wrong"] + t["reference_wrong_target_right"]
        for t in (pr["positives"], pr["negatives"])
    ):
        return f"Against the reference: every decision of {target} equals the reference's."
    return "Against the reference: " + "; ".join(parts) + "."
