"""Precision search: `precision = "auto"` (or the target's own option set to "auto") builds each
candidate precision the target offers, validates it on the target's runtime (every gate, the
bundle's self-test included), times it briefly, and publishes the candidate that passes every
gate and is best for the objective, through the one build path (packager.build._build_one),
reusing the winner's conversion and validation (the bundle's own self-test runs again on the
bundle). Losers never get the full benchmark.

What the candidates share: the session's cached reference predictions and preprocessed
validation images, one calibration set (loaded once), ONNX Runtime's calibration ranges (one
calibration per model, see ort_quant.shared_calibration) and whatever the target itself caches
(e.g. one conversion to its IR).

A target takes part by defining `search_option` (the option that "auto" replaces),
`search_candidates(options)` and optionally `search_diagnose(...)`, which explains a failed INT8
candidate layer by layer and may propose a mixed-precision follow-up candidate."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from packager import ort_quant
from packager.config import Config
from packager.errors import PackagerError, Unavailable, UserError
from packager.quiet import stdout_to_stderr
from packager.registry import get
from packager.session import Session
from packager.status import CheckStatus, ReportStatus, ResultStatus
from packager.target import BuildOutput, Target

OBJECTIVES = ("latency", "throughput", "size")
# The short benchmark every candidate gets: enough to rank, far less than [bench]. It runs in
# ROUNDS interleaved rounds over the candidates (medians), so a load change on a shared host
# during the search does not decide the ranking.
SHORT = {"warmup": 3, "seconds": 0.1, "min_iterations": 5}
ROUNDS = 3
DIAGNOSIS_IMAGES = 64  # at most this many flipped images go through the per-layer diagnosis


def supports(t: Target) -> bool:
    return getattr(t, "search_option", None) is not None


def wants(t: Target, opts: Any) -> bool:
    """Whether this target's options ask for a precision search."""
    return supports(t) and getattr(opts, t.search_option) == "auto"  # type: ignore[attr-defined]


def apply_flag(cfg: Config, names: list[str]) -> None:
    """`build --precision auto`: set each named target's precision option to "auto" (targets
    without a search keep their configured precision)."""
    for name in names:
        t = get(name)
        if supports(t):
            cfg.targets.setdefault(name, {})[t.search_option] = "auto"  # type: ignore[attr-defined]


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


@dataclasses.dataclass
class _Run:
    opts: Any
    built: BuildOutput
    folder: Path
    report: dict[str, Any]
    validate_steps: list[Any]  # build.Step of the validation, reused for the winner


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
        "throughput_sps": None,
        "throughput_batch": None,
        "size_mb": None,
        "bench": "not run",
    }


def _candidate(
    s: Session,
    t: Target,
    opts: Any,
    label: str,
    overrides: dict[str, Any],
    calibration: Any,
    reference: np.ndarray,
    work: Path,
) -> tuple[dict[str, Any], _Run | None]:
    from packager import build as B

    copts = dataclasses.replace(opts, **overrides)
    ctx = s.context(copts)
    ctx.calibration = calibration
    folder = work / label
    folder.mkdir()
    try:
        with (
            s.progress.step(t.name, f"candidate {label}: converting"),
            stdout_to_stderr(s.progress.enabled),
        ):
            built = t.build(ctx, folder)
    except Unavailable as exc:
        return _row(label, overrides, "not-a-candidate", str(exc)), None
    except UserError:
        raise
    except Exception as exc:  # one candidate failing to convert does not end the search
        return _row(label, overrides, "error", f"{type(exc).__name__}: {exc}"), None
    row = _row(label, overrides, "pending", "")
    row["precision"] = built.precision
    row["size_mb"] = B._artifact_mb(folder, built)
    B._write_runtime(s, t, folder, built)
    steps: list[B.Step] = []
    report = B._validate(s, t, ctx, folder, built, reference, steps)
    validate_steps = list(steps)
    B._selftest(s, t, folder, built, report, steps)
    B.finish_report(report, [])
    c = report.get("clinical") or {}
    checks = report["gates"]["checks"]
    row.update(
        status=report["status"],
        reason=report["reason"] if report["status"] != ReportStatus.passed else "",
        proxy=report["validation"].get("proxy"),
        gates=[{k: ch[k] for k in ("name", "value", "limit", "status", "reason")} for ch in checks],
        gates_ok=bool(checks)
        and all(ch["passed"] or ch["status"] == CheckStatus.not_run for ch in checks),
        sensitivity=c.get("sensitivity"),
        sensitivity_drop=c.get("sensitivity_drop"),
        flips=len(c["flipped"]) if c.get("flipped") is not None else None,
    )
    return row, _Run(copts, built, folder, report, validate_steps)


def _short_bench(s: Session, t: Target, timed: list[tuple[dict[str, Any], _Run]]) -> None:
    """Batch 1 (or the fixed batch) and the largest configured batch, SHORT seconds each, in
    ROUNDS interleaved rounds over every validated candidate; each row gets the medians."""
    from packager import build as B

    b = s.cfg.bench
    fixed = s.info.fixed_batch
    sizes = [fixed] if fixed else sorted({min(b.batch_sizes), max(b.batch_sizes)})
    spec = {"batch_sizes": sizes, **SHORT}
    p50: dict[str, list[float]] = {row["label"]: [] for row, _ in timed}
    sps: dict[str, dict[int, list[float]]] = {row["label"]: {} for row, _ in timed}
    failed: dict[str, str] = {}
    with s.progress.step(t.name, f"short benchmarks, batch sizes {sizes}, {ROUNDS} rounds"):
        for i in range(ROUNDS):
            for row, r in timed if i % 2 == 0 else list(reversed(timed)):
                if row["label"] in failed:
                    continue
                try:
                    out = B.bench_run(
                        t, r.folder, r.built.runner_options, spec, s.x[: max(sizes)], b.timeout_s
                    )
                except PackagerError as exc:
                    failed[row["label"]] = str(exc)
                    continue
                for x in out["batches"]:
                    sps[row["label"]].setdefault(x["batch_size"], []).append(x["throughput_sps"])
                    if x["batch_size"] == 1:
                        p50[row["label"]].append(x["latency_ms"]["p50"])
    for row, _ in timed:
        label = row["label"]
        if label in failed:
            row["bench"] = f"failed: {failed[label]}"
            continue
        medians = {bs: float(np.median(v)) for bs, v in sps[label].items()}
        best = max(medians, key=lambda bs: medians[bs])
        row.update(
            bench=f"short: batch sizes {sizes}, {ROUNDS} interleaved rounds of "
            f"{SHORT['seconds']} s (medians)",
            latency_p50_ms=float(np.median(p50[label])) if p50[label] else None,
            throughput_sps=medians[best],
            throughput_batch=best,
        )


def _diagnosis_images(s: Session, report: dict[str, Any], calibration: Any) -> np.ndarray:
    """The validation images whose decision flipped against the reference; without flips (a
    gate failed otherwise), calibration images."""
    flipped = (report.get("clinical") or {}).get("flipped") or []
    if flipped:
        return s.x[np.asarray(flipped[:DIAGNOSIS_IMAGES], dtype=int)]
    return calibration()[:DIAGNOSIS_IMAGES]


def run(s: Session, t: Target, opts: Any, reference: np.ndarray, bench: bool, int8: bool) -> Any:
    """Search, then publish the winner through build._build_one (a TargetResult); with no
    candidate passing, a failed result naming every candidate's reason and nothing published."""
    from packager import build as B
    from packager.bundle import new_stage

    objective = opts.objective
    out = Path(s.cfg.output.dir)
    work = new_stage(out, f"search-{t.name}")
    calibration = functools.cache(s.calibration)  # loaded and preprocessed once
    rows: list[dict[str, Any]] = []
    runs: dict[str, _Run] = {}
    diagnoses: list[dict[str, Any]] = []
    try:
        queue = list(t.search_candidates(opts))  # type: ignore[attr-defined]
        with ort_quant.shared_calibration(work):
            i = 0
            while i < len(queue):
                label, overrides, skip = queue[i]
                i += 1
                if skip:
                    rows.append(_row(label, overrides, "not-a-candidate", skip))
                    continue
                row, r = _candidate(s, t, opts, label, overrides, calibration, reference, work)
                rows.append(row)
                if r is not None:
                    runs[label] = r
                if r is None or row["status"] != ReportStatus.failed or r.built.precision != "int8":
                    continue
                diagnose = getattr(t, "search_diagnose", None)
                if diagnose is None:
                    continue
                others = {k: v.built.details for k, v in runs.items()}
                x = _diagnosis_images(s, r.report, calibration)
                dctx = s.context(r.opts)
                dctx.calibration = calibration
                try:
                    found = diagnose(dctx, label, r.built.details, others, x)
                except UserError:
                    raise
                except Exception as exc:  # a diagnosis that breaks must not end the search
                    diagnoses.append(
                        {
                            "candidate": label,
                            "method": "per-layer diagnosis",
                            "layers": [],
                            "reason": f"the diagnosis failed: {type(exc).__name__}: {exc}",
                        }
                    )
                    continue
                if found is None:
                    continue
                diagnosis, follow = found
                diagnoses.append({"candidate": label, **diagnosis})
                if follow is not None and all(q[0] != follow[0] for q in queue):
                    queue.append((follow[0], follow[1], ""))
        timed = [(row, runs[row["label"]]) for row in rows if row["sensitivity"] is not None]
        if timed and t.availability().bench.ok:
            _short_bench(s, t, timed)
        winner = select(rows, objective)
        table = {
            "objective": objective,
            "winner": winner["label"] if winner else None,
            "candidates": rows,
            "diagnosis": diagnoses,
            "short_bench": {**SHORT, "rounds": ROUNDS},
            "ranked_by": ranked_by(rows, objective),
            "selection": (
                f"every candidate passing every gate, ranked by {ranked_by(rows, objective)}"
                + (
                    f" ({objective} cannot be measured on this host)"
                    if ranked_by(rows, objective) != objective
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
            from packager.build import TargetResult

            return TargetResult(
                t.name, ResultStatus.failed, reason, None, {"precision_search": table}
            )
        win = runs[winner["label"]]
        s.progress.say(f"[{t.name}] precision search: {winner['label']} wins on {objective}")

        def reuse(ctx: Any, bdir: Path) -> BuildOutput:
            # the winner's whole folder: its conversion, and what its validation wrote
            # (validation.npz, the self-test golden set), so neither is redone
            shutil.copytree(win.folder, bdir, dirs_exist_ok=True)
            win.built.notes.append(
                f"Precision search ({objective}): {winner['label']} chosen among "
                f"{len(rows)} candidates; see precision_search in report.json."
            )
            return win.built

        # its validation is reused as measured (the bundle's files are byte-identical); the
        # bundle's own predict.py --self-test runs again, on the bundle itself
        drop = ("status", "reason", "steps")  # set again when the bundle's report is finished
        validated = {k: v for k, v in win.report.items() if k not in drop}
        return B._build_one(
            s,
            t,
            win.opts,
            reference,
            bench,
            int8,
            convert=reuse,
            extra={"precision_search": table},
            validated=(validated, win.validate_steps),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
