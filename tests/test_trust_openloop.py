"""The open-loop measurement's own logic (packager/runtime/openloop.py) against independent
computations: Poisson arrivals against scipy.stats, each rate's point against the queue written
out in tests/queueing.py with percentiles from the statistics module, and the max-rate search
against its ladder and bisection written out from its docstring. The search logic does not
depend on the runtime: it runs here on a virtual clock with a plain Python runner, in
milliseconds; tests/test_open_loop.py runs it on a real bundle's runtime."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from packager.runtime.openloop import (
    LADDER,
    WARM_CALLS,
    arrivals,
    best_batcher,
    meets,
    point,
    precise_sleep,
    saturation,
    search,
    warm,
)
from tests.queueing import VirtualClock, VirtualRunner, simulate

MS = 2.0**-10  # about a millisecond; binary fractions of it keep the virtual clock exact


def fast(b: int) -> float:
    return MS + MS / 8 * (b - 1)


def slow(b: int) -> float:
    return 8 * MS * b


def test_gaps_are_exponential_and_times_uniform() -> None:
    """A Poisson process at `rate`: exponential gaps of mean 1/rate; given their number, the
    arrival times are uniform on [0, seconds)."""
    t = arrivals(1000.0, 2.0, seed=3)
    assert np.all(np.diff(t) > 0) and t[0] >= 0 and t[-1] < 2.0
    assert stats.kstest(np.diff(t, prepend=0.0), "expon", args=(0, 1e-3)).pvalue > 1e-3
    assert stats.kstest(t / 2.0, "uniform").pvalue > 1e-3


@pytest.mark.parametrize(("rate", "seconds", "runs"), [(2.0, 0.5, 4000), (100.0, 20.0, 200)])
def test_counts_follow_the_poisson_law(rate: float, seconds: float, runs: int) -> None:
    """Counts over many seeds against the Poisson pmf (chi-square, the tail pooled): a mean of
    one arrival per run, and a long run (2,000 arrivals)."""
    mean = rate * seconds
    counts = np.array([len(arrivals(rate, seconds, seed)) for seed in range(runs)])
    lo, hi = (int(x) for x in stats.poisson.ppf([0.005, 0.995], mean))
    edges = [-0.5, *np.arange(lo, hi + 1) + 0.5, np.inf]
    seen = np.histogram(counts, bins=edges)[0]
    want = np.diff(stats.poisson.cdf(np.array(edges), mean)) * runs
    assert stats.chisquare(seen, want).pvalue > 1e-3


def test_a_seed_gives_one_schedule() -> None:
    a, b = arrivals(300.0, 1.0, seed=7), arrivals(300.0, 1.0, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, arrivals(300.0, 1.0, seed=8))


@pytest.mark.parametrize("seconds", [0.0, 1e-5, 1e-4, 3e-4, 2e-3])
def test_precise_sleep_never_wakes_early(seconds: float) -> None:
    start = time.perf_counter()
    precise_sleep(seconds)
    assert time.perf_counter() - start >= seconds


def pt(p95: float | None, dropped: int, requests: int) -> dict[str, Any]:
    return {"p95_ms": p95, "dropped": dropped, "requests": requests}


@pytest.mark.parametrize(
    ("p", "ok"),
    [
        (pt(10.0, 0, 100), True),  # p95 at the SLA
        (pt(10.000001, 0, 100), False),
        (pt(None, 0, 0), False),  # nothing served
        (pt(1.0, 2, 200), True),  # 1% dropped
        (pt(1.0, 3, 200), False),
        (pt(1.0, 0, 0), True),  # no request, none dropped
        (pt(1.0, 1, 0), False),
        (pt(1.0, 1, 50), False),  # under 1% of 50 is none
    ],
)
def test_a_rate_meets_the_sla_on_p95_and_at_most_one_percent_dropped(
    p: dict[str, Any], ok: bool
) -> None:
    assert meets(p, 10.0) is ok


def test_warm_calls_every_size_in_turn() -> None:
    vc = VirtualClock(fast)
    warm(vc.infer, [1, 2, 4], calls=2)
    warm(vc.infer, [3])
    assert vc.batches == [1, 1, 2, 2, 4, 4] + [3] * WARM_CALLS


@pytest.mark.parametrize(("seconds", "timed"), [(32 * MS, 32), (MS / 4, 5), (0.0, 5)])
def test_saturation_is_a_closed_loop_at_max_batch(seconds: float, timed: int) -> None:
    """Three untimed calls, then calls for `seconds` (five at least): max_batch per service."""
    vc = VirtualClock(lambda b: MS)
    assert saturation(vc.infer, 4, seconds, vc.clock) == 4 / MS
    assert vc.batches == [4] * (3 + timed)
    vc = VirtualClock(lambda b: MS * b / 2)
    assert saturation(vc.infer, 3, seconds, vc.clock) == 2 / MS


def expected_point(
    rate: float,
    seconds: float,
    seed: int,
    service: Callable[[int], float],
    max_batch: int,
    delay: float,
) -> dict[str, Any]:
    """The point from the queue, served until the documented cutoff (twice the duration plus
    a second), with percentiles of the served requests' latencies by linear interpolation."""
    schedule = list(arrivals(rate, seconds, seed))
    lat, _, dropped = simulate(schedule, service, max_batch, delay, cutoff=2 * seconds + 1.0)
    ms = [x * 1e3 for x in lat]
    if len(ms) > 1:
        cuts = statistics.quantiles(ms, n=100, method="inclusive")
        p50, p95, p99 = cuts[49], cuts[94], cuts[98]
    else:
        p50 = p95 = p99 = ms[0] if ms else None
    return {
        "rate": rate,
        "requests": len(schedule),
        "achieved_rate": len(lat) / seconds,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "dropped": dropped,
    }


def same_points(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal, latencies to 10 ns (the virtual clock's sleeps end on a whole tick)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k, v in w.items():
            assert g[k] == (v if v is None else pytest.approx(v, rel=1e-12, abs=1e-5)), k


@pytest.mark.parametrize(
    ("case", "rate", "seconds", "service", "max_batch", "delay", "seed"),
    [
        ("light", 300.0, 0.25, fast, 4, 0.0, 0),
        ("batched", 900.0, 0.25, fast, 4, 2 * MS, 1),  # some batches wait max_delay
        ("overloaded", 2000.0, 0.25, slow, 1, 0.0, 2),  # the backlog past the cutoff is dropped
        ("one", 4.0, 0.25, fast, 1, 0.0, 0),
        ("none", 1e-6, 1.0, fast, 1, 0.0, 0),
    ],
)
def test_a_point_equals_the_queue_recounted(
    case: str,
    rate: float,
    seconds: float,
    service: Callable[[int], float],
    max_batch: int,
    delay: float,
    seed: int,
) -> None:
    vc = VirtualClock(service)
    got = point(vc.infer, rate, seconds, max_batch, delay, seed, vc.clock, vc.sleep)
    want = expected_point(rate, seconds, seed, service, max_batch, delay)
    assert {  # the case is what its name says
        "overloaded": want["dropped"] > 0,
        "one": want["requests"] == 1,
        "none": want["requests"] == 0,
    }.get(case, want["dropped"] == 0 and want["requests"] > 50)
    same_points([got], [want])


def passes(p: dict[str, Any], sla_ms: float) -> bool:
    """The SLA as the docstrings state it: p95 within it, at most 1% of requests dropped."""
    return (
        p["p95_ms"] is not None
        and p["p95_ms"] <= sla_ms
        and p["dropped"] * 100 <= max(1, p["requests"])
    )


SAMPLE = np.arange(6, dtype=np.float32).reshape(2, 3)


def expected_search(
    sat: float,
    service: Callable[[int], float],
    max_batch: int,
    delay: float,
    seconds: float,
    sla_ms: float,
    rates: list[float] | None,
) -> tuple[list[dict[str, Any]], list[bool]]:
    """The points in the order run, point k on seed k: the given rates; or every rung of the
    ladder (shares of saturation), then three bisections between the last rung that passed and
    the rung above it, if both exist. Returns the points and whether each rung passed."""
    run: list[dict[str, Any]] = []

    def ok(rate: float) -> bool:
        run.append(expected_point(rate, seconds, len(run), service, max_batch, delay))
        return passes(run[-1], sla_ms)

    if rates:
        for rate in rates:
            ok(rate)
        return run, []
    rungs = [ok(share * sat) for share in LADDER]
    last = max((i for i, passed in enumerate(rungs) if passed), default=None)
    if last is not None and last + 1 < len(LADDER):
        lo, hi = LADDER[last] * sat, LADDER[last + 1] * sat
        for _ in range(3):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return run, rungs


def check_search(
    service: Callable[[int], float],
    max_batch: int,
    delay_ms: float,
    sla_ms: float,
    seconds: float,
    rates: list[float] | None,
    fixed: int | None,
    rungs: list[bool],
) -> None:
    runner = VirtualRunner(service)
    vc = runner.vc
    got = search(
        runner, SAMPLE, sla_ms, max_batch, delay_ms, seconds, rates, fixed, vc.clock, vc.sleep
    )
    batch = fixed or max_batch

    def cost(b: int) -> float:  # a fixed-batch model gets its batch whatever the batcher formed
        return service(fixed or b)

    sat = got["saturation_sps"]
    assert sat == pytest.approx(batch / service(batch), rel=1e-12)
    run, passed = expected_search(sat, cost, batch, delay_ms / 1e3, seconds, sla_ms, rates)
    assert passed == rungs
    assert [p["rate"] for p in run][: len(rates or LADDER)] == (rates or [s * sat for s in LADDER])
    assert len(run) == len(rates or LADDER) + (3 if T in rungs and not rungs[-1] else 0)
    same_points(got["points"], sorted(run, key=lambda p: p["rate"]))

    best = None
    for p in run:  # the first of the passing points with the highest achieved rate
        if passes(p, sla_ms) and (best is None or p["achieved_rate"] > best["achieved_rate"]):
            best = p
    assert {k: v for k, v in got.items() if k != "points"} == {
        "sla_ms": sla_ms,
        "max_batch": batch,
        "max_delay_ms": delay_ms,
        "seconds_per_rate": seconds,
        "saturation_sps": sat,
        "max_rate": best and pytest.approx(best["achieved_rate"], rel=1e-12),
        "p95_ms_at_max_rate": best and pytest.approx(best["p95_ms"], abs=1e-5),
        "share_of_saturation": best and pytest.approx(best["achieved_rate"] / sat, rel=1e-12),
    }

    # What the runtime was asked: every batch size three times, then a closed loop at the
    # largest (three untimed calls, then at least five for up to a second), then the points.
    sizes = [fixed] if fixed else list(range(1, max_batch + 1))
    closed = max(5, math.ceil(min(seconds, 1.0) / service(batch)))
    served = []
    for k, p in enumerate(run):
        schedule = list(arrivals(p["rate"], seconds, k))
        served += simulate(schedule, cost, batch, delay_ms / 1e3, 2 * seconds + 1.0)[1]
    want = [b for b in sizes for _ in range(3)] + [batch] * (3 + closed)
    want += [fixed or b for b in served]
    assert [len(x) for x in runner.inputs] == want
    for x in runner.inputs:  # rows of the sample, tiled
        np.testing.assert_array_equal(x, SAMPLE[np.arange(len(x)) % len(SAMPLE)])


T, F = True, False


def glacial(b: int) -> float:
    return 0.5 * b  # a model at two samples per second: the ladder's rates go under 1/s


@pytest.mark.parametrize(
    ("service", "max_batch", "delay_ms", "sla_ms", "seconds", "rungs"),
    [
        (fast, 4, 0.0, 3.0, 0.25, [T, T, T, T, F, F]),
        (fast, 4, 4000 * MS, 4.0, 0.25, [F, F, F, T, T, F]),  # waiting for company: low fail
        (fast, 4, 4000 * MS, 4.5, 0.25, [F, F, T, T, T, F]),
        (fast, 4, 0.0, 1.0, 0.25, [F, F, F, F, F, F]),  # no bisection, no max_rate
        (fast, 4, 0.0, 1000.0, 0.25, [T, T, T, T, T, T]),  # nothing above the last rung passed
        (glacial, 1, 0.0, 1000.0, 20.0, [F, T, F, F, F, F]),  # bisects between 0.5/s and 1/s
        (glacial, 1, 0.0, 1500.0, 20.0, [T, T, F, F, T, F]),
    ],
)
def test_the_search_runs_the_whole_ladder_then_bisects_above_the_last_rung_passed(
    service: Callable[[int], float],
    max_batch: int,
    delay_ms: float,
    sla_ms: float,
    seconds: float,
    rungs: list[bool],
) -> None:
    check_search(service, max_batch, delay_ms, sla_ms, seconds, None, None, rungs)


def test_given_rates_are_run_as_they_are() -> None:
    """Saturation is measured for a second at most, however long each rate runs."""
    check_search(fast, 3, 0.0, 3.0, 1.25, [2000.0, 500.0], None, [])


def test_a_fixed_batch_model_always_gets_its_batch() -> None:
    check_search(slow, 8, 0.0, 60.0, 0.25, None, 3, [T, T, T, T, T, F])


def batchy(b: int) -> float:
    return 2 * MS + MS / 8 * (b - 1)  # a fixed cost per call: batching pays


def switchy(b: int) -> float:
    return MS * b + (3 * MS if b > 1 else 0.0)  # a batch costs more than its samples alone


def first_best(run: list[dict[str, Any]], sla_ms: float) -> dict[str, Any] | None:
    best = None
    for p in run:  # the first of the passing points with the highest achieved rate
        if passes(p, sla_ms) and (best is None or p["achieved_rate"] > best["achieved_rate"]):
            best = p
    return best


@pytest.mark.parametrize(("service", "winner"), [(batchy, 4), (switchy, 1)])
def test_the_batcher_setting_that_serves_more_is_shown_beside_the_other(
    service: Callable[[int], float], winner: int
) -> None:
    """best_batcher: the search at max_batch, then at 1, on one runner. Each setting's max_rate
    is the plain queue simulation's (expected_search), the higher one is shown with its own
    points and p95, and its share is of the closed loop at max_batch (the ceiling)."""
    runner = VirtualRunner(service)
    vc = runner.vc
    got = best_batcher(runner, SAMPLE, 6.0, 4, 0.0, 0.25, clock=vc.clock, sleep=vc.sleep)
    want: dict[int, tuple[dict[str, Any], float, list[dict[str, Any]]]] = {}
    for b in (4, 1):
        sat = b / service(b)
        run, _ = expected_search(sat, service, b, 0.0, 0.25, 6.0, None)
        best = first_best(run, 6.0)
        assert best is not None, "both settings meet the SLA at some rate here"
        want[b] = (best, sat, run)
    assert [x["max_batch"] for x in got["batchers"]] == [4, 1]
    for x in got["batchers"]:
        best, sat, _ = want[x["max_batch"]]
        assert x["saturation_sps"] == pytest.approx(sat, rel=1e-12)
        assert x["max_rate"] == pytest.approx(best["achieved_rate"], rel=1e-12)
        assert x["p95_ms_at_max_rate"] == pytest.approx(best["p95_ms"], abs=1e-5)
    assert max(want, key=lambda b: want[b][0]["achieved_rate"]) == winner
    best, _, run = want[winner]
    assert got["max_batch"] == winner and got["max_rate"] == pytest.approx(best["achieved_rate"])
    same_points(got["points"], sorted(run, key=lambda p: p["rate"]))
    ceiling = want[4][1]
    assert got["saturation_sps"] == pytest.approx(ceiling, rel=1e-12)
    assert got["share_of_saturation"] == pytest.approx(best["achieved_rate"] / ceiling, rel=1e-12)


@pytest.mark.parametrize(
    ("max_batch", "rates", "fixed"), [(1, None, None), (4, [300.0], None), (4, None, 2)]
)
def test_one_batcher_setting_when_there_is_nothing_to_choose(
    max_batch: int, rates: list[float] | None, fixed: int | None
) -> None:
    """A batcher of 1, given rates (run as asked) or a fixed-batch model: one search, as
    search() alone would run it."""
    runner = VirtualRunner(fast)
    vc = runner.vc
    args = (SAMPLE, 6.0, max_batch, 0.0, 0.25, rates, fixed)
    got = best_batcher(runner, *args, clock=vc.clock, sleep=vc.sleep)
    alone = VirtualRunner(fast)
    want = search(alone, *args, clock=alone.vc.clock, sleep=alone.vc.sleep)
    assert [x["max_batch"] for x in got["batchers"]] == [fixed or max_batch]
    assert {k: v for k, v in got.items() if k != "batchers"} == want
    assert [len(x) for x in runner.inputs] == [len(x) for x in alone.inputs]


def lonely(b: int) -> float:
    return 0.5 if b == 1 else 10.0  # batching is ruinous: a pair takes 20 single calls


@pytest.mark.parametrize(
    ("service", "sla_ms", "max_batch", "shown"),
    [
        # batches of 1 never meet 600 ms (a queue forms at every rung); batches up to 2 do at
        # their lowest rungs, under 1 request/s: a rate however low beats none
        (lonely, 600.0, 2, 2),
        (fast, 0.5, 4, 4),  # no setting meets 0.5 ms (each call takes ~1 ms): max_batch's shown
    ],
)
def test_a_setting_that_meets_the_sla_beats_one_that_never_does(
    service: Callable[[int], float], sla_ms: float, max_batch: int, shown: int
) -> None:
    """A setting with no max_rate loses to any rate; with none anywhere the result is
    max_batch's search, with no max_rate and no share of saturation."""
    runner = VirtualRunner(service)
    vc = runner.vc
    args = (SAMPLE, sla_ms, max_batch, 0.0, 20.0)
    got = best_batcher(runner, *args, clock=vc.clock, sleep=vc.sleep)
    rates = {x["max_batch"]: x["max_rate"] for x in got["batchers"]}
    assert got["max_batch"] == shown and rates[1] is None
    if rates[shown] is None:
        assert got["max_rate"] is None and got["share_of_saturation"] is None
    else:
        assert 0 < rates[shown] < 1 and got["max_rate"] == rates[shown]
        assert got["share_of_saturation"] == pytest.approx(rates[shown] / got["saturation_sps"])
