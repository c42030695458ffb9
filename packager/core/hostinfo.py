"""Facts about the host a benchmark ran on."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from packager.shipped.selftest import ISA_FLAGS, cpu_model_and_flags


@cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    return cpu_model_and_flags()


def host_facts() -> dict[str, Any]:
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in ISA_FLAGS if f in flags],
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def has_flag(flag: str) -> bool:
    return flag in _cpuinfo()[1]


# A benchmark is "noisy" when, during it, other processes used more than this share of the
# host's CPU capacity, or the hypervisor stole more than this share of it (documented in
# docs/benchmarking.md; a CPU hog beside a benchmark sets it, tests/test_bench_windows.py).
NOISY_OTHERS_PCT = 20.0
NOISY_STEAL_PCT = 5.0


@dataclass(frozen=True)
class CpuSample:
    wall: float
    jiffies: tuple[
        int, ...
    ]  # /proc/stat's first line: user nice system idle iowait irq softirq steal
    own_cpu_s: float  # this process, every thread
    load1: float | None


def cpu_sample() -> CpuSample:
    try:
        with open("/proc/stat") as f:
            jiffies = tuple(int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        jiffies = ()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        load1: float | None = os.getloadavg()[0]
    except OSError:
        load1 = None
    return CpuSample(time.perf_counter(), jiffies, usage.ru_utime + usage.ru_stime, load1)


def _governor() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


def host_state(before: CpuSample, after: CpuSample) -> dict[str, Any]:
    """What else the host was doing between two samples: load average, steal and iowait, the
    CPU share other processes took; `noisy` past the limits above. Numbers that cannot be read
    here (no /proc) are None and never make a run noisy."""
    cores = os.cpu_count() or 1
    steal = iowait = others = None
    if before.jiffies and after.jiffies:
        d = [b - a for a, b in zip(before.jiffies, after.jiffies, strict=True)]
        total = sum(d) or 1
        user, nice, system, _idle, io, irq, softirq, st = d
        steal, iowait = 100 * st / total, 100 * io / total
        hz = os.sysconf("SC_CLK_TCK")
        busy_s = (user + nice + system + irq + softirq) / hz
        capacity_s = max(after.wall - before.wall, 1e-9) * cores
        own = after.own_cpu_s - before.own_cpu_s
        others = max(0.0, 100 * (busy_s - own) / capacity_s)
    noisy = (others is not None and others > NOISY_OTHERS_PCT) or (
        steal is not None and steal > NOISY_STEAL_PCT
    )
    return {
        "loadavg_before": before.load1,
        "loadavg_after": after.load1,
        "steal_pct": steal,
        "iowait_pct": iowait,
        "others_cpu_pct": others,
        "governor": _governor(),
        "isa_flags": host_facts()["flags"],
        "noisy": noisy,
        "limits": {"others_cpu_pct": NOISY_OTHERS_PCT, "steal_pct": NOISY_STEAL_PCT},
    }
