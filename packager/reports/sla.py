"""The SLA file of `packager compare --sla`, a pydantic model: [sla] limits for every target,
[sla.<target>] overrides, [regression] tolerances; and the scorecard of rows against it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import tomllib
from pydantic import BaseModel, ValidationError

from packager.core.errors import UserError
from packager.core.schema import STRICT, NonNegative, first_error, hint, shown
from packager.reports.report import shaky


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
    # Latency at throughput: the highest Poisson rate whose p95 met [bench.open_loop] sla_ms.
    "open_loop_sps": SlaMetric(
        "open_loop_sps", "min", "open-loop max rate at the p95 SLA", "{:,.0f}/s".format
    ),
}
Metric = Literal[
    "latency_ms", "throughput_sps", "memory_mb", "sensitivity", "gflops", "open_loop_sps"
]
assert get_args(Metric) == tuple(SLA_METRICS)


class Tolerances(BaseModel):
    """Release-to-release: how much worse NEW may be than OLD before it is flagged."""

    model_config = STRICT
    sensitivity_drop: NonNegative = 0.005  # absolute, 0.005 = half a percentage point
    latency_increase: NonNegative = 0.10  # relative, of batch-1 p50: 0.10 = 10% slower


class Sla(BaseModel):
    model_config = STRICT
    # [sla] mixes limits with [sla.<target>] tables: load_sla splits them into base / per_target.
    base: dict[Metric, NonNegative] = {}
    per_target: dict[str, dict[Metric, NonNegative]] = {}
    tolerances: Tolerances = Tolerances()  # the [regression] table
    source: Path = Path()

    def limits(self, target: str) -> dict[str, float]:
        return {**self.base, **self.per_target.get(target, {})}  # type: ignore[dict-item]


def _problem(exc: ValidationError, path: Path) -> UserError:
    """pydantic's first error as the SLA file's one-line message."""
    err = first_error(exc)
    field, *rest = err["loc"]
    if field == "tolerances":
        if not rest:
            return UserError(f"{path}: regression must be a table ([regression])")
        key, where = shown(str(rest[0])), f"{path} [regression]"
        if err["type"] == "extra_forbidden":
            return UserError(f"unknown key '{key}' in {where}{hint(key, Tolerances.model_fields)}")
    else:
        table = "sla" if field == "base" else f"sla.{rest.pop(0)}"
        key, where = shown(str(rest[0])), f"{path} [{table}]"
        if rest[1:] == ["[key]"]:  # pydantic's loc for a dict key
            return UserError(
                f"unknown SLA metric '{key}' in {where}{hint(key, SLA_METRICS)}; "
                f"use {', '.join(SLA_METRICS)}"
            )
    return UserError(f"{where}.{key} = {err['input']!r} must be a non-negative number")


def load_sla(path: Path) -> Sla:
    """Read and check an SLA file (see docs/reports.md)."""
    from packager.core.registry import names

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"SLA file {path} does not exist; check --sla") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}); see docs/reports.md") from None
    for key in data:
        if key not in ("sla", "regression"):
            raise UserError(f"unknown table [{key}] in {path}{hint(key, ['sla', 'regression'])}")
    table = data.get("sla", {})
    if not isinstance(table, dict):
        raise UserError(f"{path}: sla must be a table ([sla])")
    known = names()
    for target, value in table.items():
        if isinstance(value, dict) and target not in known:
            raise UserError(
                f"{path}: [sla.{target}] names no known target{hint(target, known)}; "
                "see `packager targets`"
            )
    try:
        sla = Sla.model_validate(
            {
                "base": {k: v for k, v in table.items() if not isinstance(v, dict)},
                "per_target": {k: v for k, v in table.items() if isinstance(v, dict)},
                "tolerances": data.get("regression", {}),
                "source": path,
            }
        )
    except ValidationError as exc:
        raise _problem(exc, path) from None
    for where, limits in [("sla", sla.base), *((f"sla.{t}", v) for t, v in sla.per_target.items())]:
        if limits.get("sensitivity", 0.0) > 1:
            raise UserError(
                f"{path} [{where}].sensitivity is a fraction between 0 and 1 (0.98, not 98)"
            )
    if not sla.base and not sla.per_target and not data.get("regression"):
        raise UserError(f"{path} sets no threshold; add an [sla] table, e.g. latency_ms = 3")
    return sla


# Where the reason for a missing value lives in a summary row (None: no reason field).
SLA_GAPS = {
    "latency_ms": "latency_gap",
    "throughput_sps": "bench_gap",
    "memory_mb": "bench_gap",
    "sensitivity": "clinical_gap",
    "gflops": None,
    "open_loop_sps": "open_loop_gap",
}


# Timings, marked when unstable or measured on a busy host: the row's stability flag for each.
SLA_TIMED = {
    "latency_ms": "latency_stable",
    "throughput_sps": "throughput_stable",
    "open_loop_sps": None,
}


def sla_line(row: dict[str, Any], metric: str, limit: float) -> dict[str, Any]:
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
        "text": m.show(value) + (shaky(row, SLA_TIMED[metric]) if metric in SLA_TIMED else "")
        if value is not None
        else why.split(":")[0],
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
        lines = {m: sla_line(r, m, limits[m]) for m in metrics if m in limits}
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
