"""Open-loop load (packager/runtime/openloop.py): the serving loop on a virtual clock against an
independent queue simulation (Lindley's recursion, with the batcher's rule written out in plain
Python), Poisson arrivals against their known mean, and `packager bench --open-loop` on a real
bundle, whose max_rate is recounted from its own points."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.runtime.openloop import MAX_DROP_SHARE, WARM_CALLS, arrivals, search, serve
from tests.conftest import Result, bundle_dir
from tests.queueing import VirtualClock, simulate

MS = 2.0**-10  # about a millisecond; binary fractions of it keep the virtual clock exact


@pytest.mark.parametrize(
    ("gap", "max_batch", "delay"),
    [
        (MS, 1, 0.0),
        (MS / 2, 1, 0.0),
        (MS / 2, 4, 0.0),
        (MS * 5 / 16, 8, MS),
        (2 * MS, 1, 0.0),  # idle between requests
        (2 * MS, 4, 1.5 * MS),  # each batch waits max_delay for company that does not come
        (MS, 4, 8 * MS),  # each batch waits until it is full
        (MS, 1, MS),  # a batch of one is full at once: no waiting
    ],
)
def test_latency_runs_from_the_scheduled_arrival_through_the_queue(
    gap: float, max_batch: int, delay: float
) -> None:
    """Requests every `gap` s, 1 ms + 1/8 ms per extra sample of service: past capacity the
    queue grows and every request's latency includes its wait (no coordinated omission)."""
    schedule = np.arange(200) * gap

    def service(b: int) -> float:
        return MS + MS / 8 * (b - 1)

    vc = VirtualClock(service)
    lat, dropped = serve(vc.infer, schedule, max_batch, delay, 1e9, vc.clock, vc.sleep)
    want, batches, _ = simulate(list(schedule), service, max_batch, delay)
    assert dropped == 0 and vc.batches == batches
    np.testing.assert_allclose(lat, want, atol=1e-9)
    if max_batch == 1 and gap < MS:  # overloaded: the last request waited for all before it
        assert lat[-1] == pytest.approx(200 * MS - 199 * gap, abs=1e-9)


def test_requests_still_queued_at_the_cutoff_are_dropped() -> None:
    schedule = np.arange(100) * 1e-4  # 10,000/s against a 1 ms server

    vc = VirtualClock(lambda b: 1e-3)
    lat, dropped = serve(vc.infer, schedule, 1, 0.0, 0.02, vc.clock, vc.sleep)
    assert len(lat) + dropped == 100 and dropped > 0
    assert len(lat) == pytest.approx(21, abs=1)  # ~one per ms until 20 ms


def test_arrivals_are_poisson_at_the_rate() -> None:
    """Count in [0, T) ~ Poisson(rate T): mean and variance both rate T (2,000 runs)."""
    counts = np.array([len(arrivals(500.0, 0.2, seed)) for seed in range(2000)])
    assert counts.mean() == pytest.approx(100, rel=0.02)
    assert counts.var() == pytest.approx(100, rel=0.15)


@pytest.fixture(scope="module")
def bundle(reference_bundle: Path) -> Path:
    return reference_bundle


class Recording:
    """The bundle's real runtime, noting the batch size of every call in order."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.sizes: list[int] = []

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        return self.runner.infer(x)


@pytest.mark.parametrize("fixed_batch", [None, 3])
def test_every_batch_size_is_warmed_before_anything_is_timed(
    bundle: Path, fixed_batch: int | None
) -> None:
    """A runtime's first call at a new shape can be several times slower; search() must make
    them all before the saturation run and the timed points, which form batches of any size."""
    import json

    from packager.runtime.runner import ModuleRunner

    spec = json.loads((bundle / "runtime.json").read_text())
    sample = np.zeros((2, *spec["input"]["shape"][1:]), np.float32)
    with ModuleRunner(bundle, bundle, spec["runner_options"]) as runner:
        rec = Recording(runner)
        search(rec, sample, 50.0, 5, 1.0, 0.2, rates=[200.0], fixed_batch=fixed_batch)
    sizes = [3] if fixed_batch else [1, 2, 3, 4, 5]
    first = rec.sizes[: WARM_CALLS * len(sizes)]
    assert Counter(first) == {b: WARM_CALLS for b in sizes}
    assert set(rec.sizes) <= set(sizes)  # nothing timed ran a shape the warm-up skipped


def test_bench_open_loop_on_a_real_bundle(bundle: Path, cli: Callable[..., Result]) -> None:
    r = cli(
        "bench",
        bundle,
        "--batch-sizes",
        "1",
        "--seconds",
        "0.3",
        "--open-loop",
        "--rates",
        "50,200",
        "--sla-ms",
        "50",
        "--json",
        cwd=bundle,
    )
    assert r.code == 0, r.stderr
    ol = r.json["open_loop"]
    assert [p["rate"] for p in ol["points"]] == [50.0, 200.0]
    for p in ol["points"]:
        assert p["requests"] > 0 and p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
    passing = [
        p
        for p in ol["points"]
        if p["p95_ms"] <= ol["sla_ms"] and p["dropped"] <= MAX_DROP_SHARE * p["requests"]
    ]
    best = max((p["achieved_rate"] for p in passing), default=None)
    assert ol["max_rate"] == best
    if best is not None:
        assert ol["share_of_saturation"] == pytest.approx(best / ol["saturation_sps"])


def test_bad_rates_are_one_line(bundle: Path, cli: Callable[..., Result]) -> None:
    r = cli("bench", bundle, "--open-loop", "--rates", "fast", cwd=bundle)
    assert r.code == 2 and "--rates" in r.stderr and "Traceback" not in r.stderr


def test_a_build_with_open_loop_reports_it_and_the_sla_scores_it(
    project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path
) -> None:
    """[bench.open_loop] in a real build: report.json carries the search, report.md says it,
    and `compare --sla` scores the open-loop line from the report's own max_rate."""
    root = project("[bench.open_loop]\nenabled = true\nsla_ms = 50\nseconds = 0.3\nmax_batch = 4\n")
    r = cli("build", "-t", "cpu-onnxruntime", "-q", cwd=root)
    assert r.code == 0, r.stderr
    bundle = bundle_dir(root, "cpu-onnxruntime")
    import json

    ol = json.loads((bundle / "report.json").read_text())["benchmark"]["open_loop"]
    assert ol["sla_ms"] == 50 and ol["points"]
    # Both batcher settings are listed ([bench.open_loop] max_batch first); the one that served
    # the higher rate is shown (a tie keeps max_batch), its share of the closed loop at 4.
    assert [b["max_batch"] for b in ol["batchers"]] == [4, 1]
    rates = [-1.0 if b["max_rate"] is None else b["max_rate"] for b in ol["batchers"]]
    shown = ol["batchers"][rates.index(max(rates))]
    assert (ol["max_batch"], ol["max_rate"]) == (shown["max_batch"], shown["max_rate"])
    assert ol["saturation_sps"] == ol["batchers"][0]["saturation_sps"]
    md = (bundle / "report.md").read_text()
    assert "Open loop (Poisson arrivals" in md and "Tried with the batcher up to 4: " in md
    limit = 1.0 if ol["max_rate"] is None else ol["max_rate"] / 2
    (tmp_path / "sla.toml").write_text(f"[sla]\nopen_loop_sps = {limit}\n")
    c = cli("compare", bundle, "--sla", tmp_path / "sla.toml", "--format", "json", cwd=root)
    assert c.code == 0, c.stderr
    line = c.json["sla"]["rows"][0]["lines"]["open_loop_sps"]
    assert line["value"] == ol["max_rate"] and line["met"] is (ol["max_rate"] is not None)


def test_a_failing_low_rung_does_not_end_the_ladder(bundle: Path) -> None:
    """At low rates p95 need not rise with the rate (a runtime's first call after an idle gap is
    slower), so search() runs every rung of the ladder even when the lowest misses the SLA: an
    SLA no call can meet (1 microsecond) leaves every rung run and no bisection."""
    import json

    from packager.runtime.openloop import LADDER
    from packager.runtime.runner import ModuleRunner

    spec = json.loads((bundle / "runtime.json").read_text())
    sample = np.zeros((2, *spec["input"]["shape"][1:]), np.float32)
    with ModuleRunner(bundle, bundle, spec["runner_options"]) as runner:
        result = search(runner, sample, 0.001, 4, 0.0, 0.1)
    assert len(result["points"]) == len(LADDER)
    assert result["max_rate"] is None
