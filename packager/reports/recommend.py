"""Recommendations of `packager compare`: per deployment scenario, the best target that passed
every clinical gate on its own runtime, and why; where an SLA is given, targets meeting it first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packager.core.status import ReportStatus
from packager.reports.sla import Sla, sla_line


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
    lines = [sla_line(r, m, limit) for m, limit in sla.limits(r["target"]).items()]
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
            if r["status"] != ReportStatus.passed:
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
