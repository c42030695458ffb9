"""The convert, validate and benchmark stages through the build cache (packager.builder.cache): a hit copies
the stored files into the bundle folder and says so in the report; a miss runs the stage and
stores its result. The keys (packager.builder.inputs) hold everything that decides the result, so a
hit is the same result byte for byte. A cache that cannot store an entry never fails a build."""

from __future__ import annotations

import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder import stages
from packager.builder.cache import Cache, CacheCorruptWarning, Entry
from packager.builder.inputs import benchmark_key, bundle_hashes, conversion_key, validation_key
from packager.builder.session import Session
from packager.builder.stages.validate import new_state
from packager.builder.state import BuildState
from packager.core.status import BenchStatus, StepStatus
from packager.core.target import BuildContext, BuildOutput, Target
from packager.runtime.profile import RAW


def _store(s: Session, cache: Cache, kind: str, key: str, src: Path, meta: dict) -> None:
    try:
        cache.put(kind, key, src, meta)
    except (OSError, TypeError, ValueError) as exc:  # e.g. a full disk, or a value JSON lacks
        s.progress.say(f"warning: the {kind} was not cached ({type(exc).__name__}: {exc})")


def _get(cache: Cache, kind: str, key: str, dest: Path) -> Entry | None:
    """cache.get, its corruption warning said as one progress line (then it is a miss)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheCorruptWarning)
        hit = cache.get(kind, key, dest)
    for w in caught:  # shown even with --quiet: the user should know the cache went bad
        print(f"warning: {w.message}", file=sys.stderr, flush=True)
    return hit


def convert(
    s: Session, t: Target, ctx: BuildContext, bdir: Path, cache: Cache | None
) -> tuple[BuildOutput, str]:
    """(the conversion, "" or how it was reused)."""
    if cache is None:
        return stages.convert(s, t, ctx, bdir), ""
    key = conversion_key(s, t, ctx.options)
    hit = _get(cache, "conversion", key, bdir)
    if hit is not None:
        s.progress.say(f"[{t.name}] conversion reused from cache {key[:16]} ({hit.created})")
        return BuildOutput.from_dict(hit.meta["output"]), f"reused from {key}, {hit.created}"
    built = stages.convert(s, t, ctx, bdir)
    _store(s, cache, "conversion", key, bdir, {"target": t.name, "output": built.to_dict()})
    return built, ""


def validate(
    s: Session,
    t: Target,
    ctx: BuildContext,
    bdir: Path,
    built: BuildOutput,
    reference: np.ndarray,
    cache: Cache | None,
    before: dict[str, str],
) -> BuildState:
    """`before`: the bundle folder's {name: sha256} as converted and installed."""
    if cache is None:
        return stages.validate(s, t, ctx, bdir, built, reference)
    key = validation_key(s, t, before)
    hit = _get(cache, "validation", key, bdir)
    if hit is not None:
        # Only what validation measured comes from the cache; everything that describes this
        # build (model card, names, date, the conversion's notes) is this build's own.
        cached = BuildState.load(hit.meta["state"])
        state = new_state(s, t, built, cached.validation)
        state.clinical, state.checks, state.steps = cached.clinical, cached.checks, cached.steps
        state.notes.append(f"Validation reused from cache {key}, {hit.created}.")
        s.progress.say(f"[{t.name}] validation reused from cache {key[:16]} ({hit.created})")
        return state
    state = stages.validate(s, t, ctx, bdir, built, reference)
    written = [n for n, sha in bundle_hashes(bdir).items() if before.get(n) != sha]
    with tempfile.TemporaryDirectory(prefix="packager-cache-") as tmp:
        for name in written:
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bdir / name, Path(tmp) / name)
        _store(s, cache, "validation", key, Path(tmp), {"target": t.name, "state": state.dump()})
    return state


def bench(
    s: Session,
    t: Target,
    bdir: Path,
    built: BuildOutput,
    state: BuildState,
    enabled: bool,
    cache: Cache | None,
    installed: dict[str, str],
) -> dict[str, Any]:
    """stages.bench, or the benchmark of the same files, settings and kind of host from the
    cache (marked `reused`, with when it was measured). `installed`: as for validate."""
    rule = s.cfg.bench.reuse
    if cache is None or rule == "never" or not enabled or not state.gates_passed:
        return stages.bench(s, t, bdir, built, state, enabled)
    key = benchmark_key(s, t, installed)
    hit = _get(cache, "benchmark", key, bdir)
    if hit is not None and (rule == "always" or settled(hit.meta["benchmark"])):
        reused = f"cache {key}, measured {hit.created}"
        state.step("benchmark", StepStatus.ok, f"reused from {reused}")
        state.notes.append(
            f"Benchmark reused from {reused} (same bundle files, [bench], images and host "
            'kind); --no-cache or [bench] reuse = "never" measures again.'
        )
        s.progress.say(f"[{t.name}] benchmark reused from cache {key[:16]} ({hit.created})")
        return hit.meta["benchmark"] | {"reused": reused}
    result = stages.bench(s, t, bdir, built, state, enabled)
    if rule == "always" or settled(result):
        with tempfile.TemporaryDirectory(prefix="packager-cache-") as tmp:
            if (bdir / RAW).is_file():
                shutil.copy2(bdir / RAW, Path(tmp) / RAW)
            _store(s, cache, "benchmark", key, Path(tmp), {"target": t.name, "benchmark": result})
    return result


def settled(benchmark: dict[str, Any]) -> bool:
    """Worth reusing: measured, on a quiet host, every window settled (main and variants)."""
    runs = [benchmark, *benchmark.get("variants", [])]
    return benchmark.get("status") == BenchStatus.ok and all(
        not (r.get("host_state") or {}).get("noisy", True)
        and all(row.get("stable", False) for row in r.get("batches", []))
        for r in runs
    )
