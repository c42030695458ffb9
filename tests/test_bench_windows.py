"""Stabilised benchmarks (packager/runtime/bench.py): windows repeated until three agree, intervals
bootstrapped over them, and the host's state recorded, with `noisy` set when a CPU hog runs
beside the benchmark. No speed is asserted: only what the numbers must be consistent with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packager.core.hostinfo import NOISY_OTHERS_PCT
from packager.runtime.bench import STABLE_WINDOWS, Window, ci95, pooled_throughput, repeat_windows
from tests.conftest import Result


def windows_of(rates: list[float]) -> Callable[[], Window]:
    """A window source giving these throughputs in turn (one sample per 1/rate seconds)."""
    it: Iterator[float] = iter(rates)
    return lambda: Window(1, 1 / next(it))


def test_three_windows_within_the_stability_stop_the_run() -> None:
    ws, stable = repeat_windows(windows_of([50, 100, 104, 96, 500]), 0.05, 60)
    assert stable and [w.throughput for w in ws] == [50, 100, 104, 96]


def test_windows_just_outside_the_stability_never_stop_it() -> None:
    """Mean 100: 111 is 11% off, past a 10% stability; 110 is exactly at it."""
    ws, stable = repeat_windows(windows_of([89, 100, 111, 90, 100, 110, 0]), 0.10, 60)
    assert stable and len(ws) == 6
    with pytest.raises(StopIteration):  # never agreed: ran out of windows, not out of time
        repeat_windows(windows_of([89, 100, 111, 89, 100, 111]), 0.10, 60)


def test_an_unstable_run_stops_at_max_seconds_and_says_so() -> None:
    rates = iter([100, 200] * 1000)

    def window() -> Window:
        time.sleep(0.01)
        return Window(1, 1 / next(rates))

    ws, stable = repeat_windows(window, 0.10, 0.05)
    assert not stable and 1 <= len(ws) < 100


def test_interval_brackets_the_pooled_throughput_and_collapses_when_windows_agree() -> None:
    same = [Window(10, 0.1) for _ in range(5)]
    assert ci95(same, pooled_throughput) == [pytest.approx(100), pytest.approx(100)]
    mixed = [Window(10, t) for t in (0.08, 0.1, 0.12, 0.1, 0.09)]
    lo, hi = ci95(mixed, pooled_throughput)
    rates = [w.throughput for w in mixed]
    assert min(rates) <= lo < pooled_throughput(mixed) < hi <= max(rates)


@pytest.fixture(scope="module")
def bundle(reference_bundle: Path) -> Path:
    return reference_bundle


def bench(cli: Callable[..., Result], bundle: Path) -> dict:
    r = cli("bench", bundle, "--batch-sizes", "1,8", "--seconds", "0.6", "--json", cwd=bundle)
    assert r.code == 0, r.stderr
    return r.json


def test_bench_reports_windows_intervals_and_host_state(
    bundle: Path, cli: Callable[..., Result]
) -> None:
    result = bench(cli, bundle)
    for row in result["batches"]:
        assert row["windows"] >= STABLE_WINDOWS or not row["stable"]
        lat = row["latency_ms"]
        assert lat["p50_ci95"][0] <= lat["p50"] <= lat["p50_ci95"][1]
        assert lat["p95_ci95"][0] <= lat["p95"] <= lat["p95_ci95"][1]
        lo, hi = row["throughput_ci95"]
        assert lo <= row["throughput_sps"] <= hi
        if row["throughput_mode"] == "sync":  # recount: batch / mean latency of the same calls
            want = row["batch_size"] / (lat["mean"] / 1e3)
            assert row["throughput_sps"] == pytest.approx(want, rel=1e-9)
    state = result["host_state"]
    flags = Path("/proc/cpuinfo").read_text().split()
    assert set(state["isa_flags"]) <= set(flags)
    assert 0 <= state["others_cpu_pct"] <= 100 * (os.cpu_count() or 1)
    assert state["noisy"] == (
        state["others_cpu_pct"] > NOISY_OTHERS_PCT or state["steal_pct"] > 5.0
    )


HOG = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def test_a_cpu_hog_beside_the_benchmark_makes_it_noisy(
    bundle: Path, cli: Callable[..., Result]
) -> None:
    """One busy loop per core, for a bounded time, while `packager bench` runs: other
    processes then take far more than the noisy limit of the CPU, and the text says so."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", HOG.format(s=60)])
        for _ in range(os.cpu_count() or 1)
    ]
    try:  # short runs at batch 1: how busy the host is does not depend on their length
        short = ("bench", bundle, "--batch-sizes", "1", "--seconds", "0.3")
        r = cli(*short, "--json", cwd=bundle)
        text = cli(*short, cwd=bundle)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert r.code == 0, r.stderr
    state = r.json["host_state"]
    assert state["noisy"] is True, state
    assert state["others_cpu_pct"] > NOISY_OTHERS_PCT
    assert "measured on a busy host" in text.stdout


def test_compare_says_a_noisy_benchmark_was_measured_on_a_busy_host(
    bundle: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """The report's own host_state drives the compare caveat (a copy with noisy set)."""
    report = json.loads((bundle / "report.json").read_text())
    if report["benchmark"]["status"] != "ok":
        result = bench(cli, bundle)
        report["benchmark"] = {
            **result,
            "status": "ok",
            "reason": "",
            "host": {**result["host"], "runtime_versions": None},
            "best": None,
            "variants": [],
            "model_size_mb": 1.0,
        }
        report["benchmark"].pop("input", None)
    report["benchmark"]["host_state"]["noisy"] = True
    report["benchmark"]["host_state"]["others_cpu_pct"] = 87.0
    (tmp_path / "report.json").write_text(json.dumps(report))
    r = cli("compare", tmp_path / "report.json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    caveat = next(ln for ln in r.stdout.splitlines() if "measured on a busy host" in ln)
    assert "cpu-onnxruntime" in caveat and "87% of the CPU" in caveat
