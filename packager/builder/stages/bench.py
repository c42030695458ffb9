"""Stage 5: benchmark the bundle on its own runtime in the worker (stabilised windows, the
target's variants, the operator profile and, when configured, open-loop load)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder.session import Session
from packager.builder.state import BuildState
from packager.core.errors import PackagerError
from packager.core.hostinfo import host_facts
from packager.core.status import BenchStatus, StepStatus
from packager.core.target import BuildOutput, Target
from packager.runtime.bench import batch_of, best_throughput
from packager.runtime.profile import CALLS, RAW, top_operators
from packager.runtime.runner import run_worker


def bench(
    s: Session, t: Target, bdir: Path, built: BuildOutput, state: BuildState, enabled: bool
) -> dict[str, Any]:
    """state.benchmark: skipped with the reason (--no-bench, a failed gate, no runtime here),
    or every measurement."""
    avail = t.availability()
    reason = (
        "--no-bench given"
        if not enabled
        else "a gate failed"
        if state.checks and not state.gates_passed
        else ""
        if avail.bench.ok
        else avail.bench.reason
    )
    if reason:
        state.step("benchmark", StepStatus.skipped, reason)
        return {"status": BenchStatus.skipped, "reason": reason, "host": host_facts()}
    b = s.cfg.bench
    sizes = [s.info.fixed_batch] if s.info.fixed_batch else b.batch_sizes
    sample = s.x[: max(sizes)]
    spec = {
        "batch_sizes": sizes,
        "warmup": b.warmup,
        "seconds": b.seconds,
        "min_iterations": b.min_iterations,
        "stability": b.stability,
        "max_seconds": b.max_seconds,
    }
    config = built.runtime_config
    try:
        with s.progress.step(t.name, f"benchmarking batch sizes {sizes}"):
            main = bench_run(t, bdir, config, spec, sample, b.timeout_s)
            variants = []
            for label, override in t.bench_variants(config):
                r = bench_run(t, bdir, {**config, **override}, spec, sample, b.timeout_s)
                variants.append({"label": label, **r})
        with s.progress.step(t.name, "profiling operators at batch 1"):
            x = batch_of(sample, s.info.fixed_batch or 1)
            main["profile"] = profile_run(t, bdir, config, x, b.timeout_s)
        if b.open_loop.enabled:
            o = asdict(b.open_loop)
            what = f"open-loop load, p95 <= {o['sla_ms']} ms"
            with s.progress.step(t.name, what):
                main["open_loop"] = open_loop_run(
                    t, bdir, config, o, s.x, s.info.fixed_batch, b.timeout_s
                )
    except PackagerError as exc:
        state.step("benchmark", StepStatus.failed, str(exc))
        return {"status": BenchStatus.failed, "reason": str(exc), "host": host_facts()}
    state.step("benchmark", StepStatus.ok, "")
    best = best_throughput(main["batches"])
    return {
        "status": BenchStatus.ok,
        "reason": "",
        "host": {
            **host_facts(),
            "runtime_versions": {
                main["runtime"].get("runtime", "?"): main["runtime"].get("version")
            },
        },
        **main,
        "best": {"batch_size": best["batch_size"], "throughput_sps": best["throughput_sps"]}
        if best
        else None,
        "variants": variants,
    }


def bench_run(
    t: Target,
    bdir: Path,
    options: dict[str, Any],
    spec: dict[str, Any],
    sample: np.ndarray,
    timeout: float,
) -> dict[str, Any]:
    job = {"job": "bench", "target": t.name, "bundle": str(bdir), "options": options, "bench": spec}
    return run_worker(job, timeout, {"x": sample})


def bench_rounds(
    t: Target,
    entries: list[tuple[str, Path, dict[str, Any]]],
    spec: dict[str, Any],
    sample: np.ndarray,
    rounds: int,
    timeout: float,
) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """`bench_run` on each (label, bundle, options) in `rounds` interleaved rounds (every second
    round in reverse order), as (label, result, None) or (label, None, reason) in the order they
    ran; a bundle that fails is not run again and the others go on. All of it in one worker
    process (one interpreter and runtime import instead of one per bundle and round), a fresh
    runner from each bundle's own runtime.py every time; should that worker die as a whole (a
    crash in native code, or past `timeout` per run for all of them), the rounds run again with a
    worker per bundle and round, as they did before, so one bundle's crash fails only that one."""
    job = {
        "job": "bench_rounds",
        "target": t.name,
        "entries": [{"label": k, "bundle": str(b), "options": o} for k, b, o in entries],
        "rounds": rounds,
        "bench": spec,
    }
    try:
        out = run_worker(job, timeout * rounds * max(1, len(entries)), {"x": sample})
    except PackagerError:
        return _bench_rounds_apart(t, entries, spec, sample, rounds, timeout)
    return [(r["label"], r.get("result"), r.get("error")) for r in out["runs"]]


def _bench_rounds_apart(
    t: Target,
    entries: list[tuple[str, Path, dict[str, Any]]],
    spec: dict[str, Any],
    sample: np.ndarray,
    rounds: int,
    timeout: float,
) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    runs: list[tuple[str, dict[str, Any] | None, str | None]] = []
    failed: set[str] = set()
    for i in range(rounds):
        for label, bdir, options in entries if i % 2 == 0 else list(reversed(entries)):
            if label in failed:
                continue
            try:
                runs.append((label, bench_run(t, bdir, options, spec, sample, timeout), None))
            except PackagerError as exc:
                failed.add(label)
                runs.append((label, None, str(exc)))
    return runs


def profile_run(
    t: Target, bdir: Path, options: dict[str, Any], x: np.ndarray, timeout: float
) -> dict[str, Any]:
    """The runtime's own per-operator profile of `x` (packager.runtime.profile), its raw form
    written into the bundle as profile.json. A profiler that fails leaves the benchmark
    standing: the profile says it did not run, and why."""
    job = {"job": "profile", "target": t.name, "bundle": str(bdir), "options": options}
    job["calls"] = CALLS
    try:
        result = run_worker(job, timeout, {"x": x}, {RAW: bdir / RAW})
    except PackagerError as exc:
        return top_operators(None, f"the profiler failed: {exc}")
    return top_operators(result["profile"], batch=len(x))


def open_loop_run(
    t: Target,
    bdir: Path,
    options: dict[str, Any],
    spec: dict[str, Any],
    x: np.ndarray,
    fixed_batch: int | None,
    timeout: float,
) -> dict[str, Any]:
    """packager.runtime.openloop.search on the bundle's runtime, in the worker."""
    job = {
        "job": "openloop",
        "target": t.name,
        "bundle": str(bdir),
        "options": options,
        "open_loop": spec,
        "fixed_batch": fixed_batch,
    }
    return run_worker(job, timeout, {"x": x[: fixed_batch or spec["max_batch"]]})
