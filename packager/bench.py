"""Benchmark one runner: load time, latency percentiles, throughput per batch size, memory.

Runs inside packager.worker (a fresh subprocess), so peak RSS and threads are the target's own.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import numpy as np

from packager.runner import Runner


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


def measure(
    runner: Runner,
    sample: np.ndarray,
    batch_sizes: list[int],
    warmup: int,
    seconds: float,
    min_iterations: int,
) -> dict[str, Any]:
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
        times: list[float] = []
        inner: list[float | None] = []
        t_start = time.perf_counter()
        while len(times) < min_iterations or time.perf_counter() - t_start < seconds:
            t0 = time.perf_counter()
            runner.infer(x)
            times.append(time.perf_counter() - t0)
            inner.append(runner.runtime_latency_s())
        row: dict[str, Any] = {
            "batch_size": bs,
            "iterations": len(times),
            "latency_ms": latency_stats(times),
            "throughput_sps": bs * len(times) / sum(times),
            "throughput_mode": "sync",
        }
        timed = [t for t in inner if t is not None]
        if len(timed) == len(times):  # the same calls on the runtime's own clock
            row["runtime_latency_ms"] = latency_stats(timed)
        if bs == min(batch_sizes):  # the latency distribution the reports plot
            row["latency_samples_ms"] = latency_samples(times)
        async_result = runner.throughput(x, seconds, min_iterations)
        if async_result is not None:
            samples, elapsed = async_result
            row["throughput_sps"] = samples / elapsed
            row["throughput_mode"] = "async"
            row["sync_throughput_sps"] = bs * len(times) / sum(times)
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
    }


def best_throughput(batches: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(batches, key=lambda b: b["throughput_sps"], default=None)
