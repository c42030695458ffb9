"""Latency under open-loop load: requests arrive on a Poisson schedule whatever the server does,
and each one's latency runs from its SCHEDULED arrival to its completion, so a slow call delays
every request queued behind it (no coordinated omission: a closed loop, or a client that sends
late, would hide exactly that queueing).

The server is the shipped runtime behind a dynamic batcher with one model instance: when the
runtime is free it takes every request that has arrived (up to max_batch), waiting at most
max_delay after the oldest for more to come. The arrival schedule is precomputed and the loop
runs on one thread, so the load generator can never be slowed by the server it measures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from packager.runtime.bench import batch_of

LADDER = (0.1, 0.25, 0.5, 0.7, 0.85, 1.0)  # shares of closed-loop saturation tried first
BISECTIONS = 3
MAX_DROP_SHARE = 0.01  # a rate that leaves more than this unserved fails, whatever its p95
WARM_CALLS = 3  # per batch size, before anything is timed


def arrivals(rate: float, seconds: float, seed: int) -> np.ndarray:
    """Poisson arrival times in [0, seconds): exponential gaps at `rate` per second."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / rate, int(rate * seconds * 1.5) + 16)
    times = np.cumsum(gaps)
    return times[times < seconds]


def precise_sleep(seconds: float) -> None:
    """time.sleep, then a spin over the last 0.2 ms (sleep alone can wake a millisecond late)."""
    end = time.perf_counter() + seconds
    if seconds > 2e-4:
        time.sleep(seconds - 2e-4)
    while time.perf_counter() < end:
        pass


def _wait_until(
    t0: float, at: float, clock: Callable[[], float], sleep: Callable[[float], None]
) -> float:
    """Wait until `at` seconds after t0 (at once if that is past); returns the time then."""
    now = clock() - t0
    if now < at:
        sleep(at - now)
        now = clock() - t0
    return now


def serve(
    infer: Callable[[int], Any],
    schedule: np.ndarray,
    max_batch: int,
    max_delay: float,
    cutoff: float,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = precise_sleep,
) -> tuple[np.ndarray, int]:
    """Run the schedule against `infer(batch_size)`; returns each served request's latency (s)
    and how many were still unserved at `cutoff` seconds (dropped). `clock` and `sleep` are
    the real ones but for tests, which run the same loop on a virtual clock."""
    n = len(schedule)
    latency = np.full(n, np.nan)
    i = 0
    t0 = clock()
    while i < n:
        now = _wait_until(t0, schedule[i], clock, sleep)
        if now > cutoff:
            break
        # Wait for more requests up to max_delay after the oldest, unless the batch is full.
        full = min(i + max_batch, n)
        if schedule[full - 1] > now:
            at = min(schedule[i] + max_delay, schedule[full - 1])
            now = max(now, _wait_until(t0, at, clock, sleep))
        j = i + int(np.searchsorted(schedule[i:full], now, side="right"))
        infer(j - i)
        latency[i:j] = (clock() - t0) - schedule[i:j]
        i = j
    return latency[:i], n - i


def point(
    infer: Callable[[int], Any],
    rate: float,
    seconds: float,
    max_batch: int,
    max_delay: float,
    seed: int,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = precise_sleep,
) -> dict[str, Any]:
    """One offered rate: achieved rate, latency percentiles (ms) of served requests, drops.
    `clock` and `sleep` as in serve()."""
    schedule = arrivals(rate, seconds, seed)
    cutoff = 2 * seconds + 1.0  # an overloaded server's backlog is cut here and counted dropped
    lat, dropped = serve(infer, schedule, max_batch, max_delay, cutoff, clock, sleep)
    ms = lat * 1e3
    q = (lambda p: float(np.percentile(ms, p))) if len(ms) else (lambda p: None)
    return {
        "rate": rate,
        "requests": len(schedule),
        "achieved_rate": len(lat) / seconds,
        "p50_ms": q(50),
        "p95_ms": q(95),
        "p99_ms": q(99),
        "dropped": dropped,
    }


def meets(p: dict[str, Any], sla_ms: float) -> bool:
    return (
        p["p95_ms"] is not None
        and p["p95_ms"] <= sla_ms
        and p["dropped"] <= MAX_DROP_SHARE * max(1, p["requests"])
    )


def warm(infer: Callable[[int], Any], sizes: list[int], calls: int = WARM_CALLS) -> None:
    """Run every batch size the batcher can form before anything is timed. A runtime's first
    call at a new shape can allocate and re-plan: OpenVINO's took 3-4x its warm time on the
    ResNet-18 demo (8-18 ms at batch 2-4 in the open loop), and each landed in whichever point
    first formed that batch, as the lowest rate's p99 and much of its p95."""
    for b in sizes:
        for _ in range(calls):
            infer(b)


def saturation(
    infer: Callable[[int], Any],
    max_batch: int,
    seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Closed-loop samples/s at max_batch: the ceiling any open-loop rate can reach."""
    for _ in range(3):
        infer(max_batch)
    calls, t0 = 0, clock()
    while clock() - t0 < seconds or calls < 5:
        infer(max_batch)
        calls += 1
    return max_batch * calls / (clock() - t0)


def search(
    runner: Any,
    sample: np.ndarray,
    sla_ms: float,
    max_batch: int,
    max_delay_ms: float,
    seconds: float,
    rates: list[float] | None = None,
    fixed_batch: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = precise_sleep,
) -> dict[str, Any]:
    """The highest offered rate whose p95 latency meets the SLA (max_rate), found on a ladder
    of shares of closed-loop saturation and refined by bisection; or the given `rates`.
    `clock` and `sleep` as in serve()."""
    if fixed_batch:
        max_batch = fixed_batch
    inputs = {b: batch_of(sample, fixed_batch or b) for b in range(1, max_batch + 1)}

    def infer(b: int) -> Any:
        return runner.infer(inputs[b])

    # A fixed-batch model sees one input shape whatever the batcher forms.
    warm(infer, [max_batch] if fixed_batch else list(range(1, max_batch + 1)))
    sat = saturation(infer, max_batch, min(seconds, 1.0), clock)
    delay = max_delay_ms / 1e3
    points: list[dict[str, Any]] = []

    def run(rate: float) -> bool:
        points.append(point(infer, rate, seconds, max_batch, delay, len(points), clock, sleep))
        return meets(points[-1], sla_ms)

    if rates:
        for r in rates:
            run(r)
    else:
        # The whole ladder: at low rates p95 does not rise with the rate (after an idle gap a
        # runtime's first call is slower), so one failing rung does not end the search.
        ok = {share: run(share * sat) for share in LADDER}
        passed = [s for s in LADDER if ok[s]]
        above = [s for s in LADDER if passed and s > passed[-1]]
        lo, hi = (passed[-1] * sat if passed else 0.0), (above[0] * sat if above else None)
        if hi is not None and lo > 0:
            for _ in range(BISECTIONS):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if run(mid) else (lo, mid)
    passing = [p for p in points if meets(p, sla_ms)]
    best = max(passing, key=lambda p: p["achieved_rate"], default=None)
    return {
        "sla_ms": sla_ms,
        "max_batch": max_batch,
        "max_delay_ms": max_delay_ms,
        "seconds_per_rate": seconds,
        "saturation_sps": sat,
        "max_rate": best["achieved_rate"] if best else None,
        "p95_ms_at_max_rate": best["p95_ms"] if best else None,
        "share_of_saturation": best["achieved_rate"] / sat if best else None,
        "points": sorted(points, key=lambda p: p["rate"]),
    }


def best_batcher(
    runner: Any,
    sample: np.ndarray,
    sla_ms: float,
    max_batch: int,
    max_delay_ms: float,
    seconds: float,
    rates: list[float] | None = None,
    fixed_batch: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = precise_sleep,
) -> dict[str, Any]:
    """search() with the batcher at max_batch and, where it could form several sizes, at 1 too:
    a runtime can lose more to changing batch sizes than batching gains (OpenVINO on the demo's
    2-core host: a call after one of another size costs ~0.5 ms more, docs/benchmarking.md).
    The setting with the higher max_rate is the result (a tie keeps max_batch); `batchers` lists
    both, and the saturation it is a share of stays the closed loop at max_batch, the ceiling.
    Given rates, or a fixed-batch model, run as asked, at max_batch only."""
    sizes = [max_batch] if rates or fixed_batch or max_batch == 1 else [max_batch, 1]
    found = [
        search(runner, sample, sla_ms, b, max_delay_ms, seconds, rates, fixed_batch, clock, sleep)
        for b in sizes
    ]
    rated = [r for r in found if r["max_rate"] is not None]
    best = max(rated, key=lambda r: r["max_rate"], default=found[0])
    ceiling = found[0]["saturation_sps"]
    keys = ("max_batch", "max_rate", "p95_ms_at_max_rate", "saturation_sps")
    return best | {
        "saturation_sps": ceiling,
        "share_of_saturation": best["max_rate"] / ceiling if best["max_rate"] else None,
        "batchers": [{k: r[k] for k in keys} for r in found],
    }
