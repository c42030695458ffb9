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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


def current_rss_mb() -> float:
    try:
        return _rss_mb()
    except OSError:  # no /proc (macOS)
        return peak_rss_mb()


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
    for bs in batch_sizes:
        x = batch_of(sample, bs)
        for _ in range(warmup):
            runner.infer(x)
        times: list[float] = []
        t_start = time.perf_counter()
        while len(times) < min_iterations or time.perf_counter() - t_start < seconds:
            t0 = time.perf_counter()
            runner.infer(x)
            times.append(time.perf_counter() - t0)
        row: dict[str, Any] = {
            "batch_size": bs,
            "iterations": len(times),
            "latency_ms": latency_stats(times),
            "throughput_sps": bs * len(times) / sum(times),
            "throughput_mode": "sync",
        }
        async_result = runner.throughput(x, seconds, min_iterations)
        if async_result is not None:
            samples, elapsed = async_result
            row["throughput_sps"] = samples / elapsed
            row["throughput_mode"] = "async"
            row["sync_throughput_sps"] = bs * len(times) / sum(times)
        batches.append(row)
    info = runner.info()
    runner.close()
    return {
        "load_time_ms": load_ms,
        "peak_rss_mb": peak_rss_mb(),
        "model_rss_mb": max(0.0, rss_loaded - rss_before),
        "runtime": info,
        "batches": batches,
    }


def best_throughput(batches: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(batches, key=lambda b: b["throughput_sps"], default=None)
