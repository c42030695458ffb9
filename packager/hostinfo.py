"""Facts about the host a benchmark ran on."""

from __future__ import annotations

import os
import platform
from functools import cache
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
