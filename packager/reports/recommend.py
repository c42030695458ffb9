"""Recommendations of `packager compare`: per deployment scenario, the best target that passed
every clinical gate on its own runtime, and why; where an SLA is given, targets meeting it first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from packager.core.metrics import overlap
from packager.core.status import ReportStatus
from packager.reports.report import shaky
from packager.reports.sla import Sla, sla_line


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    criterion: str
    decides: str  # the measure that decides, as the page names it
    needs: str  # the summary field that must be measured, and the one that decides
    interval: str | None  # its 95% interval: overlapping intervals are a tie (within noise)
    rank: Callable[[dict[str, Any]], tuple[float, ...]]
    cpu_only: bool


SCENARIOS = (
    Scenario(
        "real-time",
        "Real-time single image on a CPU workstation",
        # p95, not p50: a reader waits on the slow calls too, and a bimodal target can have the
        # best median and twice the others' p95.
        "lowest batch-1 p95 latency",
        "batch-1 p95 latency",
        "latency_p95_ms",
        "latency_p95_ci95",
        lambda r: (r["latency_p95_ms"], r["latency_p50_ms"]),
        True,
    ),
    Scenario(
        "bulk",
        "Bulk screening (a backlog of studies)",
        "highest throughput at any batch size",
        "throughput",
        "throughput_sps",
        "throughput_ci95",
        lambda r: (-r["throughput_sps"],),
        False,
    ),
    Scenario(
        "edge",
        "Edge device (little memory)",
        "smallest serving memory, then smallest model",
        "serving memory",
        "serving_memory_mb",
        None,
        lambda r: (r["serving_memory_mb"], r["size_mb"] or 0.0),
        False,
    ),
)

# Two targets tied on speed (within noise) are told apart by what they cost to deploy.
TIE_BREAK = "smaller serving memory, then smaller model"


def _tie_key(r: dict[str, Any]) -> tuple[float, float]:
    inf = float("inf")
    mem, size = r["serving_memory_mb"], r["size_mb"]
    return (inf if mem is None else mem, inf if size is None else size)


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


def _ci(ci: list[float] | None, fmt: str, unit: str) -> str:
    return f" (95% CI {fmt.format(ci[0])}–{fmt.format(ci[1])}{unit})" if ci else ""


def _measure(sc: Scenario, r: dict[str, Any]) -> str:
    if sc.key == "real-time":
        return (
            f"p95 {r['latency_p95_ms']:.3f} ms{_ci(r['latency_p95_ci95'], '{:.3f}', ' ms')}"
            f"{shaky(r, 'latency_stable')}, p50 {r['latency_p50_ms']:.3f} ms"
        )
    if sc.key == "bulk":
        return (
            f"{r['throughput_sps']:,.0f} samples/s{_ci(r['throughput_ci95'], '{:,.0f}', '')} "
            f"at batch {r['throughput_batch']}{shaky(r, 'throughput_stable')}"
        )
    return _memory(r)


def _memory(r: dict[str, Any]) -> str:
    mem = r["serving_memory_mb"]
    size = f", model {r['size_mb']:.2f} MB" if r["size_mb"] is not None else ""
    return f"{'n/a' if mem is None else f'{mem:.1f} MB'} serving memory{size}"


def _sla_misses(r: dict[str, Any], sla: Sla | None) -> list[str]:
    if sla is None:
        return []
    lines = [sla_line(r, m, limit) for m, limit in sla.limits(r["target"]).items()]
    return [
        f"{ln['metric']} {ln['text']} (needs {ln['limit_text']})" for ln in lines if not ln["met"]
    ]


def _eligible(sc: Scenario, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(targets that may be recommended for this scenario, best first; why the others may not)."""
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
    return sorted(ranked, key=sc.rank), excluded


def _within_noise(
    sc: Scenario, by_sla: list[dict[str, Any]], misses: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The leader and the targets after it, in rank order and on the same side of the SLA,
    whose 95% interval overlaps the leader's: none of them is measurably faster."""
    lead, group = by_sla[0], by_sla[:1]
    for r in by_sla[1:] if sc.interval else []:
        same_side = bool(misses[r["label"]]) == bool(misses[lead["label"]])
        if not same_side or not overlap(lead[sc.interval], r[sc.interval]):
            break
        group.append(r)
    return group


def recommend(rows: list[dict[str, Any]], sla: Sla | None) -> list[dict[str, Any]]:
    """Per scenario, the best target that passed every clinical gate on its own runtime; where
    an SLA is given, targets meeting all of its lines come first. Targets whose benchmark
    intervals overlap the leader's are tied on speed and decided by TIE_BREAK."""
    out = []
    for sc in SCENARIOS:
        ranked, excluded = _eligible(sc, rows)
        misses = {r["label"]: _sla_misses(r, sla) for r in ranked}
        by_sla = sorted(ranked, key=lambda r: bool(misses[r["label"]]))  # stable within groups
        rec: dict[str, Any] = {
            "scenario": sc.key,
            "title": sc.title,
            "criterion": sc.criterion,
            "decided_on": None,
            "within_noise": [],
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
        tied = _within_noise(sc, by_sla, misses)
        best = min(tied, key=_tie_key)  # the leader when there is no tie
        rec["target"], rec["sla_missed"] = best["label"], misses[best["label"]]
        rec["bundle"] = best.get("bundle")
        among = " among those meeting the SLA" if sla is not None and not rec["sla_missed"] else ""
        why = [_clinical_why(best)]
        if len(tied) > 1:
            names = [r["label"] for r in tied]
            rec["within_noise"] = names
            rec["decided_on"] = (
                f"{TIE_BREAK}: {' and '.join(names)} are within noise on {sc.decides}"
            )
            why.append(
                f"within noise on {sc.decides}{among}: "
                + "; ".join(f"{r['label']} {_measure(sc, r)}" for r in tied)
                + ". Their 95% intervals overlap, so none is measurably faster"
            )
            why.append(
                f"tied on speed, decided on the next criterion, {TIE_BREAK}: "
                + " vs ".join(f"{r['label']} {_memory(r)}" for r in sorted(tied, key=_tie_key))
            )
        else:
            rec["decided_on"] = sc.decides
            why.append(f"{sc.criterion}{among}: {_measure(sc, best)}")
        above = [r for r in ranked[: ranked.index(best)] if r not in tied]
        for r in above:  # faster, but on the wrong side of the SLA
            why.append(
                f"{r['label']} ranks higher ({_measure(sc, r)}) but misses the SLA: "
                + "; ".join(misses[r["label"]])
            )
        nxt = next((r for r in by_sla if r not in tied and r not in above), None)
        if nxt is not None:
            why.append(f"next: {nxt['label']}, {_measure(sc, nxt)}")
            if sc.interval and len(tied) == 1 and None in (best[sc.interval], nxt[sc.interval]):
                why.append(
                    f"ranked on point estimates: no 95% interval on {sc.decides} for "
                    + " and ".join(r["label"] for r in (best, nxt) if r[sc.interval] is None)
                    + " (a report from an older packager)"
                )
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
