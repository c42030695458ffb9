"""Precision search: `precision = "auto"` (or the target's own option set to "auto") builds each
candidate precision the target offers, validates it on the target's runtime (every gate, the
bundle's self-test included), times it briefly, and publishes the candidate that passes every
gate and is best for the objective. It runs the build's own stages (packager.builder.stages) for
each candidate, and hands the winner back to the one build path (packager.builder.pipeline), which
reuses the winner's conversion and validation (the bundle's own self-test runs again on the
bundle). Losers never get the full benchmark.

What the candidates share: the session's cached reference predictions and preprocessed
validation images, one calibration set (loaded once), ONNX Runtime's calibration ranges (one
calibration per model, see ort_quant.shared_calibration) and whatever the target itself caches
(e.g. one conversion to its IR).

A target takes part by declaring `search_option` (the Options field that "auto" replaces) and
`search_space(options)` (Candidate records), and optionally `search_diagnose(...)`, which
explains a failed INT8 candidate layer by layer and may propose a mixed-precision follow-up
Candidate."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder import stages
from packager.builder.bundle import new_stage
from packager.builder.session import Session
from packager.builder.stages.convert import Converter
from packager.builder.state import BuildState, TargetResult
from packager.convert import ort_quant
from packager.core.errors import Unavailable, UserError
from packager.core.metrics import overlap
from packager.core.quiet import stdout_to_stderr
from packager.core.status import CheckStatus, ReportStatus, ResultStatus
from packager.core.target import BuildContext, BuildOutput, Candidate, Target

OBJECTIVES = ("latency", "throughput", "size")
# The short benchmark every candidate gets: enough to rank, far less than [bench]. It runs in
# ROUNDS interleaved rounds over the candidates (medians), so a load change on a shared host
# during the search does not decide the ranking.
SHORT = {"warmup": 3, "seconds": 0.1, "min_iterations": 5}
ROUNDS = 3
DIAGNOSIS_IMAGES = 64  # at most this many flipped images go through the per-layer diagnosis


def wants(t: Target, opts: Any) -> bool:
    """Whether this target's options ask for a precision search."""
    return t.search_option is not None and getattr(opts, t.search_option) == "auto"


def auto(t: Target, opts: Any) -> Any:
    """`build --precision auto`: the target's Options with its search option set to "auto"
    (a target without a search keeps its configured precision)."""
    return (
        opts if t.search_option is None else dataclasses.replace(opts, **{t.search_option: "auto"})
    )


def objective_key(objective: str) -> Any:
    """Sort key, best first; an unmeasured value sorts last."""
    inf = float("inf")

    def key(r: dict[str, Any]) -> tuple[float, float]:
        lat = r.get("latency_p50_ms")
        thr = r.get("throughput_sps")
        size = r.get("size_mb")
        lat_v = lat if lat is not None else inf
        thr_v = -thr if thr is not None else inf
        if objective == "throughput":
            return (thr_v, lat_v)
        if objective == "size":
            return (size if size is not None else inf, lat_v)
        return (lat_v, thr_v)

    return key


def eligible(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates that may ship: every gate passed on the target's runtime; where the runtime
    cannot run here, every gate that ran passed on its labelled proxy (and the row says so)."""
    passed = [r for r in rows if r["status"] == ReportStatus.passed]
    if passed:
        return passed
    return [
        r
        for r in rows
        if r["status"] == ReportStatus.not_validated and r.get("proxy") and r["gates_ok"]
    ]


METRIC = {"latency": "latency_p50_ms", "throughput": "throughput_sps", "size": "size_mb"}


def ranked_by(rows: list[dict[str, Any]], objective: str) -> str:
    """The objective the ranking can use: where no eligible candidate could be timed here (its
    runtime does not run on this host), size, which is always known."""
    if any(r.get(METRIC[objective]) is not None for r in eligible(rows)):
        return objective
    return "size"


def select(rows: list[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    ok = eligible(rows)
    return min(ok, key=objective_key(ranked_by(rows, objective))) if ok else None


INTERVAL = {"latency": "latency_p50_ms_range", "throughput": "throughput_sps_range"}
TIE_RULE = "the smaller, then the more sensitive"


def decide(rows: list[dict[str, Any]], objective: str) -> tuple[dict[str, Any] | None, Any]:
    """The winner and, when the speed ranking is inside the noise, the tie: every eligible
    candidate whose round-to-round range overlaps the fastest one's. A tie goes to the smaller,
    then the more sensitive candidate, never to a difference the measurements cannot show."""
    best = select(rows, objective)
    by = ranked_by(rows, objective)
    if best is None or by not in INTERVAL:
        return best, None
    tied = [r for r in eligible(rows) if overlap(r.get(INTERVAL[by]), best.get(INTERVAL[by]))]
    if len(tied) < 2:
        return best, None
    inf = float("inf")

    def rule(r: dict[str, Any]) -> tuple[float, float]:
        size, sens = r.get("size_mb"), r.get("sensitivity")
        return (size if size is not None else inf, -(sens if sens is not None else -inf))

    winner = min(tied, key=rule)
    tie = {
        "candidates": [r["label"] for r in tied],
        "rule": TIE_RULE,
        "fastest": best["label"],
        "why": f"their {by} ranges over the interleaved rounds overlap",
    }
    return winner, tie


@dataclasses.dataclass
class Run:
    """One validated candidate: its Options, conversion, folder and build state."""

    opts: Any
    built: BuildOutput
    folder: Path
    state: BuildState


@dataclasses.dataclass
class Winner:
    """What the pipeline publishes for a search: the winner's Options, a converter that copies
    its folder (conversion, validation.npz, golden set), and its validated state with the
    candidates table."""

    opts: Any
    converter: Converter
    state: BuildState
    work: Path  # the search's folder: removed once the winner is published

    def done(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _row(label: str, overrides: dict[str, Any], status: str, reason: str) -> dict[str, Any]:
    return {
        "label": label,
        "options": {k: v for k, v in overrides.items()},
        "precision": None,
        "status": status,
        "reason": reason,
        "proxy": None,
        "gates": [],
        "gates_ok": False,
        "sensitivity": None,
        "sensitivity_drop": None,
        "flips": None,
        "latency_p50_ms": None,
        "latency_p50_ms_range": None,  # min and max over the interleaved rounds
        "throughput_sps": None,
        "throughput_sps_range": None,
        "throughput_batch": None,
        "size_mb": None,
        "bench": "not run",
    }


def _candidate(
    s: Session,
    t: Target,
    opts: Any,
    c: Candidate,
    calibration: Callable[[], np.ndarray],
    reference: np.ndarray,
    work: Path,
) -> tuple[dict[str, Any], Run | None]:
    copts = dataclasses.replace(opts, **c.overrides)
    ctx = s.context(copts, calibration)
    folder = work / c.label
    folder.mkdir()
    try:
        with (
            s.progress.step(t.name, f"candidate {c.label}: converting"),
            stdout_to_stderr(s.progress.enabled),
        ):
            built = t.build(ctx, folder)
    except Unavailable as exc:
        return _row(c.label, c.overrides, "not-a-candidate", str(exc)), None
    except UserError:
        raise
    except Exception as exc:  # one candidate failing to convert does not end the search
        return _row(c.label, c.overrides, "error", f"{type(exc).__name__}: {exc}"), None
    row = _row(c.label, c.overrides, "pending", "")
    row["precision"] = built.precision
    row["size_mb"] = stages.artifact_mb(folder, built)
    stages.install_runtime(s, t, folder, built)
    state = stages.validate(s, t, ctx, folder, built, reference)
    stages.selftest(s, t, folder, built, state)
    state.finish()
    c_ = state.clinical or {}
    row.update(
        status=state.status,
        reason=state.reason if state.status != ReportStatus.passed else "",
        proxy=state.validation.proxy,
        gates=[
            {
                "name": ch.name,
                "value": ch.value,
                "limit": ch.limit,
                "status": ch.status,
                "reason": ch.reason,
            }
            for ch in state.checks
        ],
        gates_ok=bool(state.checks)
        and all(ch.passed or ch.status == CheckStatus.not_run for ch in state.checks),
        sensitivity=c_.get("sensitivity"),  # multi-label: the lowest finding's
        sensitivity_drop=worst_drop(c_),
        flips=len(c_["flipped"]) if c_.get("flipped") is not None else None,
    )
    return row, Run(copts, built, folder, state)


def worst_drop(clinical: dict[str, Any]) -> float | None:
    """The sensitivity drop a candidate row shows: a multi-label model's largest over its
    findings (not the summary finding's, which has the lowest sensitivity, not the largest drop)."""
    per = clinical.get("findings")
    if not per:
        return clinical.get("sensitivity_drop")
    drops = [f["sensitivity_drop"] for f in per.values() if f.get("sensitivity_drop") is not None]
    return max(drops, default=None)


def _short_bench(s: Session, t: Target, timed: list[tuple[dict[str, Any], Run]]) -> None:
    """Batch 1 (or the fixed batch) and the largest configured batch, SHORT seconds each, in
    ROUNDS interleaved rounds over every validated candidate; each row gets the medians."""
    b = s.cfg.bench
    fixed = s.info.fixed_batch
    sizes = [fixed] if fixed else sorted({min(b.batch_sizes), max(b.batch_sizes)})
    spec = {"batch_sizes": sizes, **SHORT}
    p50: dict[str, list[float]] = {row["label"]: [] for row, _ in timed}
    sps: dict[str, dict[int, list[float]]] = {row["label"]: {} for row, _ in timed}
    failed: dict[str, str] = {}
    with s.progress.step(t.name, f"short benchmarks, batch sizes {sizes}, {ROUNDS} rounds"):
        entries = [(row["label"], r.folder, r.built.runtime_config) for row, r in timed]
        runs = stages.bench_rounds(t, entries, spec, s.x[: max(sizes)], ROUNDS, b.timeout_s)
        for label, out, error in runs:
            if out is None:
                failed[label] = error or "no result"
                continue
            for x in out["batches"]:
                sps[label].setdefault(x["batch_size"], []).append(x["throughput_sps"])
                if x["batch_size"] == 1:
                    p50[label].append(x["latency_ms"]["p50"])
    for row, _ in timed:
        label = row["label"]
        if label in failed:
            row["bench"] = f"failed: {failed[label]}"
            continue
        medians = {bs: float(np.median(v)) for bs, v in sps[label].items()}
        best = max(medians, key=lambda bs: medians[bs])
        lat = p50[label]
        row.update(
            latency_p50_ms_range=[float(min(lat)), float(max(lat))] if lat else None,
            throughput_sps_range=[float(min(sps[label][best])), float(max(sps[label][best]))],
        )
        row.update(
            bench=f"short: batch sizes {sizes}, {ROUNDS} interleaved rounds of "
            f"{SHORT['seconds']} s (medians)",
            latency_p50_ms=float(np.median(p50[label])) if p50[label] else None,
            throughput_sps=medians[best],
            throughput_batch=best,
        )


def _diagnosis_images(
    s: Session, state: BuildState, calibration: Callable[[], np.ndarray]
) -> np.ndarray:
    """The validation images whose decision flipped against the reference; without flips (a
    gate failed otherwise), calibration images."""
    flipped = (state.clinical or {}).get("flipped") or []
    if flipped:
        return s.x[np.asarray(flipped[:DIAGNOSIS_IMAGES], dtype=int)]
    return calibration()[:DIAGNOSIS_IMAGES]


def run(s: Session, t: Target, opts: Any, reference: np.ndarray) -> TargetResult | Winner:
    """Search. The winner goes back to the pipeline to be published; with no candidate passing,
    a failed result naming every candidate's reason, and nothing published."""
    objective = opts.objective
    work = new_stage(Path(s.cfg.output.dir), f"search-{t.name}")
    calibration = functools.cache(s.calibration)  # loaded and preprocessed once
    rows: list[dict[str, Any]] = []
    runs: dict[str, Run] = {}
    diagnoses: list[dict[str, Any]] = []
    try:
        queue = list(t.search_space(opts))
        with ort_quant.shared_calibration(work):
            i = 0
            while i < len(queue):
                c = queue[i]
                i += 1
                if c.unavailable:
                    rows.append(_row(c.label, c.overrides, "not-a-candidate", c.unavailable))
                    continue
                row, r = _candidate(s, t, opts, c, calibration, reference, work)
                rows.append(row)
                if r is not None:
                    runs[c.label] = r
                if r is None or row["status"] != ReportStatus.failed or r.built.precision != "int8":
                    continue
                others = {k: v.built.details for k, v in runs.items()}
                x = _diagnosis_images(s, r.state, calibration)
                try:
                    found = t.search_diagnose(
                        s.context(r.opts, calibration), c.label, r.built.details, others, x
                    )
                except UserError:
                    raise
                except Exception as exc:  # a diagnosis that breaks must not end the search
                    diagnoses.append(
                        {
                            "candidate": c.label,
                            "method": "per-layer diagnosis",
                            "layers": [],
                            "reason": f"the diagnosis failed: {type(exc).__name__}: {exc}",
                        }
                    )
                    continue
                if found is None:
                    continue
                diagnoses.append({"candidate": c.label, **found.found})
                follow = found.follow_up
                if follow is not None and all(q.label != follow.label for q in queue):
                    queue.append(follow)
        timed = [(row, runs[row["label"]]) for row in rows if row["sensitivity"] is not None]
        if timed and t.availability().bench.ok:
            _short_bench(s, t, timed)
        winner, tie = decide(rows, objective)
        by = ranked_by(rows, objective)
        table = {
            "objective": objective,
            "winner": winner["label"] if winner else None,
            "tie": tie,
            "candidates": rows,
            "diagnosis": diagnoses,
            "short_bench": {**SHORT, "rounds": ROUNDS},
            "ranked_by": by,
            "selection": (
                f"every candidate passing every gate, ranked by {by}"
                + (f" ({objective} cannot be measured on this host)" if by != objective else "")
                + (
                    f"; a tie between {', '.join(tie['candidates'])} ({tie['why']}), "
                    f"decided for {TIE_RULE}"
                    if tie
                    else ""
                )
                + "; the winner's own conversion and validation were reused, its bundle "
                "self-tested again and fully benchmarked"
            ),
        }
        if winner is None:
            reason = "precision search: no candidate passed every gate — " + "; ".join(
                f"{r['label']}: {r['status']} ({r['reason'] or 'no reason'})" for r in rows
            )
            s.progress.say(f"[{t.name}] {reason}")
            shutil.rmtree(work, ignore_errors=True)
            return TargetResult(
                t.name, ResultStatus.failed, reason, None, {"precision_search": table}
            )
        win = runs[winner["label"]]
        s.progress.say(f"[{t.name}] precision search: {winner['label']} wins on {objective}")
        # the winner's whole folder: its conversion, and what its validation wrote
        # (validation.npz, the self-test golden set), so neither is redone
        win.built.notes.append(
            f"Precision search ({objective}): {winner['label']} chosen among "
            f"{len(rows)} candidates; see precision_search in report.json."
        )

        def reuse(ctx: BuildContext, bdir: Path) -> BuildOutput:
            shutil.copytree(win.folder, bdir, dirs_exist_ok=True)
            return win.built

        # Its validation is reused as measured (the bundle's files are byte-identical); the
        # bundle's own predict.py --self-test runs again, on the bundle itself.
        state = dataclasses.replace(
            win.state,
            steps=[st for st in win.state.steps if st.name == "validate"],
            status=None,
            reason="",
            precision_search=table,
        )
        return Winner(win.opts, reuse, state, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
