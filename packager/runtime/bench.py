"""Benchmark one runner: load time, latency percentiles, throughput per batch size, memory.

Runs inside packager.runtime.worker (a fresh subprocess), so peak RSS and threads are the target's own.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from packager.core.hostinfo import cpu_sample, host_state
from packager.runtime.runner import Runner


def _status_mb(key: str) -> float | None:
    """A field of /proc/self/status in MB (Linux); None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss would also count the parent's memory at
    # fork time, since Linux keeps it across fork and exec.
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


def current_rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return peak_rss_mb() if rss is None else rss


def batch_of(sample: np.ndarray, batch: int) -> np.ndarray:
    """`batch` inputs cut from real preprocessed images, tiled when there are fewer."""
    reps = -(-batch // len(sample))
    return np.ascontiguousarray(np.concatenate([sample] * reps)[:batch])


def latency_stats(seconds_list: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds_list) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


SAMPLES_CAP = 1000


def latency_samples(seconds_list: list[float], cap: int = SAMPLES_CAP) -> list[float]:
    """The sorted per-iteration latencies in ms, evenly thinned to at most `cap` values (their
    quantiles survive), rounded to 0.1 us: enough to plot the distribution."""
    ms = np.sort(np.asarray(seconds_list)) * 1e3
    if len(ms) > cap:
        ms = ms[np.linspace(0, len(ms) - 1, cap).round().astype(int)]
    return [round(float(v), 4) for v in ms]


STABLE_WINDOWS = 3  # perf_analyzer's rule: this many consecutive windows that agree
BOOTSTRAP = 400  # resamples of the windows behind each interval (seeded: reports reproduce)


@dataclass
class Window:
    """One measurement window: samples done in `elapsed` seconds, and each call's latency
    (synchronous windows; an async window has only its totals)."""

    samples: int
    elapsed: float
    times: list[float] = field(default_factory=list)
    inner: list[float | None] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.samples / self.elapsed

    @property
    def p50(self) -> float | None:
        return float(np.percentile(self.times, 50)) if self.times else None


def _agree(ws: list[Window], stability: float) -> bool:
    """Throughput and median latency of every window within ±stability of their mean."""
    for values in ([w.throughput for w in ws], [w.p50 for w in ws if w.p50 is not None]):
        if values:
            mean = sum(values) / len(values)
            if max(abs(v - mean) for v in values) > stability * mean:
                return False
    return True


def repeat_windows(
    window: Callable[[], Window], stability: float, max_seconds: float
) -> tuple[list[Window], bool]:
    """Windows until the last STABLE_WINDOWS agree (stable) or `max_seconds` is spent."""
    out: list[Window] = []
    start = time.perf_counter()
    while True:
        out.append(window())
        if len(out) >= STABLE_WINDOWS and _agree(out[-STABLE_WINDOWS:], stability):
            return out, True
        if time.perf_counter() - start >= max_seconds:
            return out, False


def pooled_throughput(ws: list[Window]) -> float:
    return sum(w.samples for w in ws) / sum(w.elapsed for w in ws)


def ci95(ws: list[Window], stat: Callable[[list[Window]], float]) -> list[float]:
    """Percentile bootstrap over windows: the spread a rerun on this host would show."""
    rng = np.random.default_rng(0)
    k = len(ws)
    values = [stat([ws[i] for i in rng.integers(0, k, k)]) for _ in range(BOOTSTRAP)]
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def _latency_q(q: float) -> Callable[[list[Window]], float]:
    return lambda ws: float(np.percentile(np.concatenate([w.times for w in ws]), q) * 1e3)


def measure(
    runner: Runner,
    sample: np.ndarray,
    batch_sizes: list[int],
    warmup: int,
    seconds: float,
    min_iterations: int,
    stability: float = 0.10,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Per batch size: synchronous windows of seconds/STABLE_WINDOWS, repeated until stable
    (or max_seconds, default 4 x seconds, per batch size and mode), then the same for the
    runtime's async path where it has one. Intervals are bootstrapped over the windows."""
    window_s = seconds / STABLE_WINDOWS
    per_window = max(1, -(-min_iterations // STABLE_WINDOWS))
    limit = 4 * seconds if max_seconds is None else max_seconds
    before = cpu_sample()
    rss_before = current_rss_mb()
    start = time.perf_counter()
    runner.load()
    load_ms = (time.perf_counter() - start) * 1e3
    rss_loaded = current_rss_mb()
    batches = []
    for bs in sorted(batch_sizes):  # ascending, so each row's peak RSS belongs to its batch size
        x = batch_of(sample, bs)
        for _ in range(warmup):
            runner.infer(x)

        def sync_window(x: np.ndarray = x, bs: int = bs) -> Window:
            w = Window(0, 0.0)
            t_start = time.perf_counter()
            while len(w.times) < per_window or time.perf_counter() - t_start < window_s:
                t0 = time.perf_counter()
                runner.infer(x)
                w.times.append(time.perf_counter() - t0)
                w.inner.append(runner.runtime_latency_s())
            w.samples, w.elapsed = bs * len(w.times), sum(w.times)
            return w

        ws, stable = repeat_windows(sync_window, stability, limit)
        times = [t for w in ws for t in w.times]
        inner = [t for w in ws for t in w.inner]
        latency = latency_stats(times)
        latency["p50_ci95"], latency["p95_ci95"] = (
            ci95(ws, _latency_q(50)),
            ci95(ws, _latency_q(95)),
        )
        row: dict[str, Any] = {
            "batch_size": bs,
            "iterations": len(times),
            "windows": len(ws),
            "stable": stable,
            "latency_ms": latency,
            "throughput_sps": pooled_throughput(ws),
            "throughput_ci95": ci95(ws, pooled_throughput),
            "throughput_mode": "sync",
        }
        timed = [t for t in inner if t is not None]
        if len(timed) == len(times):  # the same calls on the runtime's own clock
            row["runtime_latency_ms"] = latency_stats(timed)
        if bs == min(batch_sizes):  # the latency distribution the reports plot
            row["latency_samples_ms"] = latency_samples(times)
        # The async path, windowed; its first window (None: no async path) is its warm-up.
        if runner.throughput(x, window_s, per_window) is not None:

            def async_window(x: np.ndarray = x) -> Window:
                samples, elapsed = runner.throughput(x, window_s, per_window)  # type: ignore[misc]
                return Window(samples, elapsed)

            aws, async_stable = repeat_windows(async_window, stability, limit)
            row["sync_throughput_sps"] = row["throughput_sps"]
            row["throughput_sps"] = pooled_throughput(aws)
            row["throughput_ci95"] = ci95(aws, pooled_throughput)
            row["throughput_mode"] = "async"
            row["stable"] = stable and async_stable
        row["peak_rss_mb"] = peak_rss_mb()
        batches.append(row)
    info = runner.info()
    runner.close()
    return {
        "load_time_ms": load_ms,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": rss_before,  # the interpreter with numpy, before the runtime loads
        "model_rss_mb": max(0.0, rss_loaded - rss_before),
        # Serving single images: runtime + model + activations at the smallest batch, without
        # the Python interpreter (what an SLA's memory line is about).
        "serving_memory_mb": max(0.0, batches[0]["peak_rss_mb"] - rss_before),
        "runtime": info,
        "batches": batches,
        "host_state": host_state(before, cpu_sample()),
    }


def best_throughput(batches: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(batches, key=lambda b: b["throughput_sps"], default=None)
